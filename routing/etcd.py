"""Async etcd v3 client over etcd's JSON gateway (httpx, runs natively under trio).

The wire format lives in `routing.etcd_codec`; this module only moves bytes,
chooses endpoints and enforces deadlines. `routing.mirror` keeps a cache fed by a
watch through `range` and `open_watch` (list once, then watch; resume after a
broken stream, relist after compaction).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import Any

import httpx
import trio

from routing import etcd_codec as codec
from routing.etcd_codec import (
    EtcdError,
    KeyValue,
    RangeResult,
    TxnResult,
    WatchBatch,
    WatchCompacted,
    WatchCreated,
    WatchEvent,
)

__all__ = [
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "KeyValue",
    "RangeResult",
    "TxnResult",
    "Watch",
    "WatchBatch",
    "WatchCompacted",
    "WatchEvent",
]

log = logging.getLogger(__name__)

# The gateway writes one JSON message per line; 16 MiB is far beyond any batch of
# gitedge records and still a bounded buffer if a peer misbehaves.
MAX_WATCH_LINE = 16 * 1024 * 1024
# A unary answer bigger than this is not one gitedge asked for (ranges are paged).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# Prefix ranges are read in pages at one pinned revision: one huge range stalls
# etcd for every other client (etcd's docs advise paginating), and pages bound memory.
RANGE_PAGE_SIZE = 1000

_RANGE = "/v3/kv/range"


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time, or a watch stream ended or broke."""


class _NotSent(Exception):
    """The request never left (no connection): safe to send it to another endpoint."""


class _MaybeSent(Exception):
    """The request failed after it may have reached etcd: replay only if idempotent."""


def _keepalive_options() -> list[tuple[int, int, int]]:
    """TCP keepalive so a watch connection to a vanished host dies in ~30 s, not hours.

    The health check (`Watch.check_member`) probes etcd over a pooled connection;
    keepalive covers the watch's own connection being silently dropped.
    """
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 15), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


class EtcdClient:
    """One pooled httpx client over one or more etcd endpoints.

    Each attempt on an endpoint gets `timeout` seconds. A request that could not
    connect moves on to the next endpoint; one that failed after it may have been
    applied is replayed only when replaying is harmless (reads, leases, compaction),
    so a create never reports "exists" because its own first attempt landed.
    """

    def __init__(self, endpoints: str | Sequence[str], *, timeout: float = 5.0) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self._endpoints = [e.strip().rstrip("/") for e in endpoints if e.strip()]
        if not self._endpoints:
            raise ValueError("no etcd endpoint given")
        self._timeout = timeout
        self._preferred = 0
        # HTTP requests attempted (watch opens and failed connects included): the edge
        # reports it to show that its hot path does not touch etcd.
        self.requests_made = 0
        self._http = httpx.AsyncClient(
            # Connect gets half the budget so that a dead endpoint shows up as a
            # ConnectTimeout (known unsent, safe to fail over) before the attempt's deadline.
            timeout=httpx.Timeout(timeout, connect=timeout / 2),
            transport=httpx.AsyncHTTPTransport(socket_options=_keepalive_options()),
            trust_env=False,  # etcd is internal: never route it through an env proxy
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.move_on_after(5, shield=True):
            await self.aclose()

    # --- keys -------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        page = codec.decode_range(await self._call(_RANGE, codec.range_request(key)))
        return page.kvs[0] if page.kvs else None

    async def range(self, key: str, *, prefix: bool = False) -> RangeResult:
        if not prefix:
            page = codec.decode_range(await self._call(_RANGE, codec.range_request(key)))
            return RangeResult(page.kvs, page.revision)
        kvs: list[KeyValue] = []
        revision = 0  # pinned by the first page so all pages show one snapshot
        start_key: str | None = None
        while True:
            body = codec.range_request(
                key, prefix=True, limit=RANGE_PAGE_SIZE, revision=revision, start_key=start_key
            )
            page = codec.decode_range(await self._call(_RANGE, body))
            revision = revision or page.revision
            kvs.extend(page.kvs)
            if not page.more or not page.kvs:
                return RangeResult(kvs, revision)
            start_key = page.kvs[-1].key + "\0"  # the smallest key after the last one

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        body = await self._call("/v3/kv/put", codec.put_request(key, value, lease=lease), False)
        return codec.header_revision(body)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        body = codec.delete_request(key, prefix=prefix)
        return codec.decode_deleted(await self._call("/v3/kv/deleterange", body, False))

    async def create(self, key: str, value: bytes, *, lease: int = 0) -> TxnResult:
        return await self._txn(codec.create_txn(key, value, lease=lease))

    async def put_if_unchanged(
        self, key: str, value: bytes, mod_revision: int, *, lease: int = 0
    ) -> TxnResult:
        return await self._txn(codec.put_if_unchanged_txn(key, value, mod_revision, lease=lease))

    async def delete_if_unchanged(self, key: str, mod_revision: int) -> TxnResult:
        return await self._txn(codec.delete_if_unchanged_txn(key, mod_revision))

    async def txn(self, compares: list[dict[str, Any]], success: list[dict[str, Any]]) -> TxnResult:
        """A general txn built with etcd_codec's `compare_*` and `*_op` helpers.

        Never replayed: a timeout raises EtcdUnavailable with an unknown outcome,
        which the caller resolves by reading back what it wrote.
        """
        return await self._txn(codec.txn_request(compares, success))

    async def _txn(self, body: dict[str, Any]) -> TxnResult:
        return codec.decode_txn(await self._call("/v3/kv/txn", body, False))

    async def compact(self, revision: int) -> None:
        try:
            await self._call("/v3/kv/compaction", codec.compaction_request(revision))
        except EtcdError as exc:
            # Compacting at or below the current compaction is already done.
            if not codec.is_compacted(exc):
                raise

    # --- leases -----------------------------------------------------------------
    # All replayable: a duplicate grant leaves a spare lease that simply expires.

    async def lease_grant(self, ttl: int) -> int:
        body = await self._call("/v3/lease/grant", codec.lease_grant_request(ttl))
        return codec.decode_lease_grant(body)

    async def lease_keepalive(self, lease_id: int) -> int:
        # A streaming endpoint on the gateway: one request line, one answer line, then EOF.
        body = await self._call("/v3/lease/keepalive", codec.lease_id_request(lease_id))
        return codec.decode_lease_keepalive(body)

    async def lease_revoke(self, lease_id: int) -> None:
        try:
            await self._call("/v3/lease/revoke", codec.lease_id_request(lease_id))
        except EtcdError as exc:
            if not codec.is_lease_not_found(exc):
                raise

    # --- watch ------------------------------------------------------------------

    @asynccontextmanager
    async def open_watch(self, prefix: str, start_revision: int) -> AsyncIterator[Watch]:
        """A watch of every key under `prefix` from `start_revision` on, once etcd confirmed it.

        Entering waits (at most `timeout`) for etcd's confirmation, trying each
        endpoint in turn; it raises EtcdUnavailable if none confirms. Iterating the
        watch raises WatchCompacted if `start_revision` is compacted and
        EtcdUnavailable when the stream ends or breaks: resume with a new watch
        from the revision after the last event applied. Leaving frees the connection.
        """
        async with aclosing(self._watch_messages(prefix, start_revision)) as messages:
            try:
                endpoint, first = await anext(messages)
            except StopAsyncIteration:  # _watch_messages raises rather than ends; be sure
                raise EtcdUnavailable("etcd watch stream ended before it began") from None
            if not isinstance(first, WatchCreated):
                raise EtcdError(f"etcd sent watch events before confirming the watch ({endpoint})")
            yield Watch(self, prefix, endpoint, first.revision, messages)

    async def _watch_messages(
        self, prefix: str, start_revision: int
    ) -> AsyncGenerator[tuple[str, codec.WatchMessage], None]:
        """Every message of one watch stream, with the endpoint that serves it."""
        body = codec.watch_create_request(prefix, start_revision)
        failures: list[str] = []
        for index, endpoint in self._rotation():
            request = self._http.build_request(
                "POST",
                endpoint + "/v3/watch",
                json=body,
                # A watch may be idle for hours: no read timeout. Hangs are caught by
                # the first-message deadline below and by Watch.check_member.
                timeout=httpx.Timeout(self._timeout, connect=self._timeout / 2, read=None),
                # Forwarded as gRPC metadata: etcd refuses the watch on a member with
                # no leader, where it would be confirmed and then stay silent. (A watch
                # opened before the leader went is not cancelled: the health check is.)
                headers={"Grpc-Metadata-Hasleader": "true"},
            )
            self.requests_made += 1
            try:
                with trio.fail_after(self._timeout):
                    response = await self._http.send(request, stream=True)
            except (httpx.TransportError, trio.TooSlowError) as exc:
                failures.append(f"{endpoint}: {_describe(exc)}")
                continue
            try:
                if response.status_code != 200:
                    refusal = await self._watch_refusal(response)
                    if not _is_unavailable(refusal):
                        raise refusal
                    failures.append(f"{endpoint}: {refusal}")  # e.g. no leader
                    continue
                self._preferred = index
                log.debug("etcd watch on %s from %d via %s", prefix, start_revision, endpoint)
                async with aclosing(self._read_watch(endpoint, response)) as messages:
                    async for message in messages:
                        yield endpoint, message
            finally:
                with trio.move_on_after(5, shield=True):
                    await response.aclose()
        raise EtcdUnavailable("could not open an etcd watch: " + "; ".join(failures))

    async def _watch_refusal(self, response: httpx.Response) -> EtcdError:
        try:
            with trio.fail_after(self._timeout):
                data = await _read_capped(response.aiter_bytes(), MAX_RESPONSE_BYTES)
            codec.decode_response(response.status_code, data)
        except EtcdError as exc:
            if exc.grpc_code is None and response.status_code in (502, 503, 504):
                # Not etcd's own answer (no gRPC code): a member starting or stopping.
                return EtcdUnavailable(str(exc))
            return exc
        except (httpx.TransportError, trio.TooSlowError) as exc:
            return EtcdUnavailable(f"etcd refused the watch: {_describe(exc)}")
        return EtcdError(f"etcd answered the watch with HTTP {response.status_code}")

    async def _read_watch(
        self, endpoint: str, response: httpx.Response
    ) -> AsyncGenerator[codec.WatchMessage, None]:
        splitter = codec.LineSplitter(MAX_WATCH_LINE)
        chunks = response.aiter_bytes()
        # etcd confirms a watch at once; until it has, a silent server is a hang.
        deadline = trio.current_time() + self._timeout
        while True:
            try:
                with trio.move_on_at(deadline) as waiting:
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                raise EtcdUnavailable(f"etcd watch stream from {endpoint} ended") from None
            except httpx.TransportError as exc:
                raise EtcdUnavailable(
                    f"etcd watch stream from {endpoint} broke: {_describe(exc)}"
                ) from exc
            if waiting.cancelled_caught:
                raise EtcdUnavailable(f"{endpoint} did not confirm the watch in {self._timeout}s")
            for line in splitter.feed(chunk):
                try:
                    message = codec.decode_watch_line(line)
                except codec.EtcdStreamError as exc:
                    # etcd ended this watch (no leader, say); resuming it is the cure.
                    raise EtcdUnavailable(f"etcd watch on {endpoint}: {exc}") from exc
                if isinstance(message, WatchCreated):
                    deadline = math.inf
                yield message

    # --- plumbing ---------------------------------------------------------------

    async def _probe(self, endpoint: str, key: str) -> None:
        """A cheap linearizable read on `endpoint` only: one key, count only.

        Linearizable, so a member cut off from its quorum fails it; one key, because
        in etcd 3.4 a limit does not stop a prefix range from walking every key.
        """
        await self._call(_RANGE, codec.range_request(key, count_only=True), only=endpoint)

    def _demote(self, endpoint: str) -> None:
        """Prefer another endpoint after this one failed a health check."""
        if self._endpoints[self._preferred] == endpoint:
            self._preferred = (self._preferred + 1) % len(self._endpoints)

    def _rotation(self, only: str | None = None) -> list[tuple[int, str]]:
        """Endpoints to try, starting with the last one that worked."""
        count = len(self._endpoints)
        indexes = [(self._preferred + step) % count for step in range(count)]
        return [(i, self._endpoints[i]) for i in indexes if only in (None, self._endpoints[i])]

    async def _call(
        self, path: str, body: dict[str, Any], idempotent: bool = True, *, only: str | None = None
    ) -> dict[str, Any]:
        failures: list[str] = []
        for index, endpoint in self._rotation(only):
            try:
                status, data = await self._post(endpoint + path, body)
            except _NotSent as exc:
                failures.append(f"{endpoint}: {exc}")
                continue
            except _MaybeSent as exc:
                if idempotent:
                    failures.append(f"{endpoint}: {exc}")
                    continue
                raise EtcdUnavailable(
                    f"etcd {path} on {endpoint} failed after sending ({exc});"
                    " it may or may not have been applied"
                ) from exc
            try:
                answer = codec.decode_response(status, data)
            except EtcdError as exc:
                if not _is_unavailable(exc):
                    raise
                if idempotent:
                    failures.append(f"{endpoint}: {exc}")
                    continue
                raise EtcdUnavailable(f"etcd {path} on {endpoint}: {exc}") from exc
            self._preferred = index
            return answer
        raise EtcdUnavailable(f"no etcd endpoint answered {path}: " + "; ".join(failures))

    async def _post(self, url: str, body: dict[str, Any]) -> tuple[int, bytes]:
        self.requests_made += 1
        try:
            with trio.fail_after(self._timeout):
                async with self._http.stream("POST", url, json=body) as response:
                    data = await _read_capped(response.aiter_bytes(), MAX_RESPONSE_BYTES)
                    return response.status_code, data
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise _NotSent(_describe(exc)) from exc
        except trio.TooSlowError as exc:
            raise _MaybeSent(f"no answer within {self._timeout}s") from exc
        except httpx.TransportError as exc:
            raise _MaybeSent(_describe(exc)) from exc


class Watch:
    """One confirmed watch stream, served by one etcd member (`endpoint`).

    Iterate it for the batches that carry events (progress notifications are
    dropped). A watch on a member that lost its quorum, or on a TCP connection a
    hung host never closes, can stay silent forever: `check_member` is the probe
    for that, to be called by whoever owns the watch, as often as it can afford.
    """

    def __init__(
        self,
        client: EtcdClient,
        prefix: str,
        endpoint: str,
        created_revision: int,
        messages: AsyncGenerator[tuple[str, codec.WatchMessage], None],
    ) -> None:
        self._client = client
        self._prefix = prefix
        self.endpoint = endpoint
        self.created_revision = created_revision  # the store's revision when it was registered
        self._messages = messages

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchBatch:
        while True:
            _endpoint, message = await anext(self._messages)
            if isinstance(message, WatchBatch) and message.events:
                return message

    async def check_member(self) -> None:
        """Raise EtcdUnavailable unless the member serving this watch answers a
        linearizable read in time; the client then prefers another member."""
        try:
            await self._client._probe(self.endpoint, self._prefix)
        except EtcdError as exc:
            self._client._demote(self.endpoint)
            raise EtcdUnavailable(f"etcd health check of {self.endpoint} failed: {exc}") from exc


async def _read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise EtcdError(f"etcd answer larger than {limit} bytes")
    return bytes(data)


def _is_unavailable(error: EtcdError) -> bool:
    """This member cannot serve now (no leader, say), but another one may."""
    return isinstance(error, EtcdUnavailable) or error.grpc_code == codec.GRPC_UNAVAILABLE


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
