"""The watch side of the etcd client, and what its request side shares with it.

`EtcdClient.open_watch` (routing/etcd.py) opens the stream; this module reads it
(`read_watch`), explains a refusal (`watch_refusal`), and holds the confirmed
`Watch`. The errors and small helpers here are shared by both halves.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING

import httpx
import trio

from routing import etcd_codec as codec
from routing.etcd_codec import EtcdError, WatchBatch, WatchCreated
from routing.etcd_security import EtcdAccessDenied

if TYPE_CHECKING:
    from routing.etcd import EtcdClient

# The gateway writes one JSON message per line; 16 MiB is far beyond any batch of
# gitedge records and still a bounded buffer if a peer misbehaves.
MAX_WATCH_LINE = 16 * 1024 * 1024
# A unary answer bigger than this is not one gitedge asked for (ranges are paged).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024


class EtcdUnavailable(EtcdError):
    """No endpoint answered in time, or a watch stream ended or broke."""


class EtcdOutcomeUnknown(EtcdUnavailable):
    """A write was sent but not acknowledged: etcd may still apply it (a leader
    cut off from its quorum holds it in its log, and may commit it once the
    quorum is back). The writer settles it later (routing/unsettled.py)."""


class TokenRejected(Exception):
    """etcd canceled a watch at once because of our token: renew it, then retry."""


async def watch_refusal(response: httpx.Response, timeout: float) -> EtcdError:
    """The error a watch request answered with something other than 200 stands for."""
    try:
        with trio.fail_after(timeout):
            data = await read_capped(response.aiter_bytes(), MAX_RESPONSE_BYTES)
        codec.decode_response(response.status_code, data)
    except EtcdError as exc:
        if exc.grpc_code is None and response.status_code in (502, 503, 504):
            # Not etcd's own answer (no gRPC code): a member starting or stopping.
            return EtcdUnavailable(str(exc))
        return exc
    except (httpx.TransportError, trio.TooSlowError) as exc:
        return EtcdUnavailable(f"etcd refused the watch: {describe(exc)}")
    return EtcdError(f"etcd answered the watch with HTTP {response.status_code}")


async def read_watch(
    endpoint: str, response: httpx.Response, timeout: float
) -> AsyncGenerator[codec.WatchMessage, None]:
    """The messages of one watch stream; raises EtcdUnavailable when it ends or breaks."""
    splitter = codec.LineSplitter(MAX_WATCH_LINE)
    chunks = response.aiter_bytes()
    # etcd confirms a watch at once; until it has, a silent server is a hang.
    deadline = trio.current_time() + timeout
    while True:
        try:
            with trio.move_on_at(deadline) as waiting:
                chunk = await anext(chunks)
        except StopAsyncIteration:
            raise EtcdUnavailable(f"etcd watch stream from {endpoint} ended") from None
        except httpx.TransportError as exc:
            raise EtcdUnavailable(
                f"etcd watch stream from {endpoint} broke: {describe(exc)}"
            ) from exc
        if waiting.cancelled_caught:
            raise EtcdUnavailable(f"{endpoint} did not confirm the watch in {timeout}s")
        for line in splitter.feed(chunk):
            try:
                message = codec.decode_watch_line(line)
            except codec.EtcdStreamError as exc:
                if codec.is_token_rejected(exc):
                    raise TokenRejected(str(exc)) from None
                if codec.is_permission_denied(exc):
                    raise EtcdAccessDenied(f"etcd watch on {endpoint}: {exc}") from None
                # etcd ended this watch (no leader, say); resuming it is the cure.
                raise EtcdUnavailable(f"etcd watch on {endpoint}: {exc}") from exc
            if isinstance(message, WatchCreated):
                deadline = math.inf
            yield message


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


async def read_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise EtcdError(f"etcd answer larger than {limit} bytes")
    return bytes(data)


def is_unavailable(error: EtcdError) -> bool:
    """This member cannot serve now (no leader, say), but another one may."""
    return isinstance(error, EtcdUnavailable) or error.grpc_code == codec.GRPC_UNAVAILABLE


def tls_failure(exc: BaseException) -> bool:
    """A TLS handshake refused by either side (a bad certificate, an alert), as
    opposed to a connection that merely ended (EOF) while a member stopped."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLError) and not isinstance(
            seen, ssl.SSLEOFError | ssl.SSLZeroReturnError
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
