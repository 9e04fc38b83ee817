"""Async etcd v3 client over etcd's JSON gateway (httpx, runs natively under trio).

The wire format lives in `routing.etcd_codec`; this module only moves bytes,
chooses endpoints and enforces deadlines. `routing.mirror` keeps a cache fed by a
watch through `range` and `open_watch` (list once, then watch; resume after a
broken stream, relist after compaction).
"""

from __future__ import annotations

import logging
import socket
import ssl
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
from routing.etcd_security import EtcdAccessDenied, EtcdSecurity, tls_refusal
from routing.etcd_watch import (
    MAX_RESPONSE_BYTES,
    EtcdOutcomeUnknown,
    EtcdUnavailable,
    TokenRejected,
    Watch,
    describe,
    is_unavailable,
    read_capped,
    read_watch,
    tls_failure,
    watch_refusal,
)

__all__ = [
    "EtcdAccessDenied",
    "EtcdClient",
    "EtcdError",
    "EtcdOutcomeUnknown",
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

# Prefix ranges are read in pages at one pinned revision: one huge range stalls
# etcd for every other client (etcd's docs advise paginating), and pages bound memory.
RANGE_PAGE_SIZE = 1000

_RANGE = "/v3/kv/range"


class _NotSent(Exception):
    """The request never left (no connection): safe to send it to another endpoint."""


class _MaybeSent(Exception):
    """The request failed after it may have reached etcd: replay only if idempotent."""


class _TlsRefused(_NotSent):
    """The TLS handshake failed (an untrusted member, or our certificate refused):
    nothing was sent, and no retry on this endpoint will do better."""


# Forwarded by the gateway as gRPC metadata: a member with no leader refuses the
# request at once ("no leader", Unavailable) instead of holding it until etcd's own
# request timeout, so the client moves on to a member in the quorum.
_REQUIRE_LEADER = {"Grpc-Metadata-Hasleader": "true"}


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

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        timeout: float = 5.0,
        write_timeout: float | None = None,
        security: EtcdSecurity | None = None,
    ) -> None:
        if isinstance(endpoints, str):
            endpoints = endpoints.split(",")
        self._endpoints = [e.strip().rstrip("/") for e in endpoints if e.strip()]
        if not self._endpoints:
            raise ValueError("no etcd endpoint given")
        self._timeout = timeout
        # A write (put, delete, txn) not acknowledged within this, over all endpoints
        # tried, is reported unavailable with an unknown outcome.
        self._write_timeout = write_timeout
        security = security or EtcdSecurity()
        self._user = security.username
        self._password = security.read_password() if security.password_file else None
        self._token: str | None = None  # None: not authenticated yet; "": auth is off
        self._token_lock = trio.Lock()
        context = security.ssl_context()
        verify: ssl.SSLContext | bool = context or True
        self._ssl = context or ssl.create_default_context()  # for tls_refusal
        self._preferred = 0
        # HTTP requests attempted (watch opens and failed connects included): the edge
        # reports it to show that its hot path does not touch etcd.
        self.requests_made = 0
        self.request_errors = 0
        """Requests (per endpoint tried) that failed or that etcd refused: /metrics."""
        self._http = httpx.AsyncClient(
            # Connect gets half the budget so that a dead endpoint shows up as a
            # ConnectTimeout (known unsent, safe to fail over) before the attempt's deadline.
            timeout=httpx.Timeout(timeout, connect=timeout / 2),
            transport=httpx.AsyncHTTPTransport(verify=verify, socket_options=_keepalive_options()),
            trust_env=False,  # etcd is internal: never route it through an env proxy
            headers=_REQUIRE_LEADER,
        )

    def __repr__(self) -> str:  # never the password or the token
        return f"EtcdClient({self._endpoints!r}, user={self._user!r})"

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
        body = await self._write("/v3/kv/put", codec.put_request(key, value, lease=lease))
        return codec.header_revision(body)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        body = codec.delete_request(key, prefix=prefix)
        return codec.decode_deleted(await self._write("/v3/kv/deleterange", body))

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
        return codec.decode_txn(await self._write("/v3/kv/txn", body))

    async def _write(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A call that is never replayed, within `write_timeout` over all endpoints."""
        if self._write_timeout is None:
            return await self._call(path, body, False)
        try:
            with trio.fail_after(self._write_timeout):
                return await self._call(path, body, False)
        except trio.TooSlowError:
            raise EtcdOutcomeUnknown(
                f"etcd {path}: no answer within {self._write_timeout}s;"
                " it may or may not have been applied"
            ) from None

    # --- auth -------------------------------------------------------------------

    async def check_access(self, key: str) -> None:
        """At start: authenticate (with a user) and read `key`, raising EtcdAccessDenied
        if etcd or its TLS refuses this client. An etcd that cannot be reached, or
        does not answer within `timeout` in all, is only logged: the caller's own
        retries cover it, and a start is not held up by a hung member."""
        failure: EtcdError | None = None
        with trio.move_on_after(self._timeout):
            try:
                await self._call(_RANGE, codec.range_request(key, count_only=True))
                return
            except EtcdUnavailable as exc:
                failure = exc
            refusals = [
                await tls_refusal(endpoint, self._ssl, self._timeout / len(self._endpoints))
                for endpoint in self._endpoints
            ]
            if all(refusals):
                raise EtcdAccessDenied(
                    "TLS with etcd failed: " + "; ".join(map(str, refusals))
                ) from None
        reason = failure or f"no answer within {self._timeout}s"
        log.warning("etcd not reachable at start (%s); retrying in the background", reason)

    async def _renew_token(self, stale: str | None) -> None:
        """Authenticate again, unless another task already replaced `stale`."""
        if self._user is None or self._password is None:
            raise EtcdAccessDenied("etcd requires a user: set [etcd] username and password_file")
        async with self._token_lock:
            if self._token != stale:
                return
            request = codec.authenticate_request(self._user, self._password)
            try:
                answer = await self._call("/v3/auth/authenticate", request, authenticate=False)
            except EtcdError as exc:
                if codec.is_auth_not_enabled(exc):
                    log.warning("etcd has auth disabled; [etcd] username %r unused", self._user)
                    self._token = ""
                    return
                if isinstance(exc, EtcdUnavailable):
                    raise
                raise EtcdAccessDenied(f"etcd refused user {self._user!r}: {exc}") from None
            self._token = codec.decode_authenticate(answer)
            log.info("etcd: authenticated as %r", self._user)

    async def _auth_headers(self, authenticate: bool) -> dict[str, str]:
        if not authenticate or self._user is None:
            return {}
        if self._token is None:
            await self._renew_token(None)
        return {"authorization": self._token} if self._token else {}

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
        rotation = self._rotation()
        renewed = tls_failed = False
        while rotation:
            index, endpoint = rotation.pop(0)
            headers = await self._auth_headers(True)
            request = self._http.build_request(
                "POST",
                endpoint + "/v3/watch",
                json=body,
                # A watch may be idle for hours: no read timeout. Hangs are caught by
                # the first-message deadline below and by Watch.check_member.
                timeout=httpx.Timeout(self._timeout, connect=self._timeout / 2, read=None),
                # _REQUIRE_LEADER (a client default) makes etcd refuse the watch on a
                # member with no leader, where it would be confirmed and then stay
                # silent; etcd also cancels it once its member has lost the leader
                # for a few election timeouts. The health check covers the rest.
                headers=headers,
            )
            self.requests_made += 1
            try:
                with trio.fail_after(self._timeout):
                    response = await self._http.send(request, stream=True)
            except (httpx.TransportError, trio.TooSlowError) as exc:
                if tls_failure(exc):
                    tls_failed = True
                failures.append(f"{endpoint}: {describe(exc)}")
                self.request_errors += 1
                continue
            try:
                if response.status_code != 200:
                    refusal = await watch_refusal(response, self._timeout)
                    if not is_unavailable(refusal):
                        raise refusal
                    failures.append(f"{endpoint}: {refusal}")  # e.g. no leader
                    continue
                self._preferred = index
                log.debug("etcd watch on %s from %d via %s", prefix, start_revision, endpoint)
                async with aclosing(read_watch(endpoint, response, self._timeout)) as messages:
                    async for message in messages:
                        yield endpoint, message
            except TokenRejected as exc:
                if renewed:  # a fresh token refused too: not a matter of expiry
                    raise EtcdAccessDenied(f"etcd refused the watch on {endpoint}: {exc}") from None
                renewed = True
                await self._renew_token(headers.get("authorization"))
                rotation.insert(0, (index, endpoint))
            finally:
                with trio.move_on_after(5, shield=True):
                    await response.aclose()
        if tls_failed and len(failures) == len(self._endpoints):
            raise EtcdAccessDenied("TLS with etcd failed: " + "; ".join(failures))
        raise EtcdUnavailable("could not open an etcd watch: " + "; ".join(failures))

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
        self,
        path: str,
        body: dict[str, Any],
        idempotent: bool = True,
        *,
        only: str | None = None,
        authenticate: bool = True,
    ) -> dict[str, Any]:
        failures: list[str] = []
        tls_failures = 0
        for index, endpoint in self._rotation(only):
            try:
                status, data = await self._send(endpoint + path, body, authenticate)
            except _NotSent as exc:
                tls_failures += isinstance(exc, _TlsRefused)
                failures.append(f"{endpoint}: {exc}")
                self.request_errors += 1
                continue
            except _MaybeSent as exc:
                self.request_errors += 1
                if idempotent:
                    failures.append(f"{endpoint}: {exc}")
                    continue
                raise EtcdOutcomeUnknown(
                    f"etcd {path} on {endpoint} failed after sending ({exc});"
                    " it may or may not have been applied"
                ) from exc
            try:
                answer = codec.decode_response(status, data)
            except EtcdError as exc:
                self.request_errors += 1
                if codec.is_permission_denied(exc):
                    raise EtcdAccessDenied(f"etcd {path} on {endpoint}: {exc}") from None
                if codec.is_token_rejected(exc) and self._user is None:
                    raise EtcdAccessDenied(
                        f"etcd {path} on {endpoint}: {exc} (set [etcd] username and password_file)"
                    ) from None
                if not is_unavailable(exc):
                    raise
                # "no leader" is a refusal before any proposal (a member cut off
                # from the quorum): a write too may go to the next member. "request
                # timed out" or "leader changed" come after it, which may still commit.
                if idempotent or codec.ERR_NO_LEADER in str(exc):
                    failures.append(f"{endpoint}: {exc}")
                    continue
                raise EtcdOutcomeUnknown(f"etcd {path} on {endpoint}: {exc}") from exc
            self._preferred = index
            return answer
        text = f"no etcd endpoint answered {path}: " + "; ".join(failures)
        if tls_failures and tls_failures == len(failures):
            raise EtcdAccessDenied(f"TLS with etcd failed: {text}")
        raise EtcdUnavailable(text)

    async def _send(self, url: str, body: dict[str, Any], authenticate: bool) -> tuple[int, bytes]:
        """One POST with our token; a token etcd no longer knows is renewed once.

        A refused token means etcd did not apply the request: resending is safe."""
        headers = await self._auth_headers(authenticate)
        status, data = await self._post(url, body, headers)
        if status == 200 or not authenticate or self._user is None:
            return status, data
        try:
            codec.decode_response(status, data)
        except EtcdError as exc:
            if not codec.is_token_rejected(exc):
                return status, data
        await self._renew_token(headers.get("authorization"))
        return await self._post(url, body, await self._auth_headers(authenticate))

    async def _post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> tuple[int, bytes]:
        self.requests_made += 1
        try:
            with trio.fail_after(self._timeout):
                async with self._http.stream("POST", url, json=body, headers=headers) as response:
                    data = await read_capped(response.aiter_bytes(), MAX_RESPONSE_BYTES)
                    return response.status_code, data
        except httpx.TransportError as exc:
            if tls_failure(exc):
                raise _TlsRefused(describe(exc)) from exc
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
                raise _NotSent(describe(exc)) from exc
            raise _MaybeSent(describe(exc)) from exc
        except trio.TooSlowError as exc:
            raise _MaybeSent(f"no answer within {self._timeout}s") from exc
