"""A byte stream with read-ahead, and the body pumps built on it.

`relay_body` copies a body verbatim; `collect_body` keeps a small one (the
API's JSON); `drain_body` reads and drops the rest of one nobody wanted. All
three are driven by the exchange's framer, so whatever reads a body, the
exchange knows how much of it has been read.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

from edge.errors import EdgeError
from edge.proto.body import BodyError, BodyFramer
from edge.proto.http_head import HeadReader
from edge.proto.pace import BodyRate
from gitproto.protocol import CHUNK


class HeadTimeout(Exception):
    """A head started arriving but did not complete in time (answer 408)."""


class BodyTimeout(EdgeError):
    """The client stalled in the middle of its request body."""

    http_status = 408
    public_message = "request body timed out"


WRITE_PIECE = 64 * 1024
"""A write may take `write_timeout` per WRITE_PIECE it carries (at least one):
the client must take 64 KiB per 30 s (~2 KiB/s) by default, far below any
working link; one that stopped reading is cut within 30 s to 2 minutes,
depending on the size of the write it stopped in (at most a CHUNK)."""


class WriteTimeout(trio.TooSlowError):
    """A write took longer than `write_timeout` per WRITE_PIECE: the peer stopped
    reading, or nearly (Gitea's PER_WRITE_TIMEOUT). The connection is given up."""


class BufferedStream:
    """A connection with read-ahead.

    `write_timeout` bounds each `send_all` (per WRITE_PIECE): a client that stops
    reading must not hold the node's git behind it. A
    `body_rate` puts a floor under the rate at which bodies read from this
    stream by `relay_body` arrive (edge/proto/pace.py). The client fronts set
    both; a node connection has neither (its own timeouts are the pool's).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        write_timeout: float = math.inf,
        body_rate: BodyRate | None = None,
    ) -> None:
        self.stream = stream
        self.write_timeout = write_timeout
        self.body_rate = body_rate
        self._pending = b""
        self.bytes_in = 0
        self.bytes_out = 0

    async def receive(self) -> bytes:
        """Read-ahead bytes first, else up to CHUNK bytes; b"" at EOF."""
        if self._pending:
            pending, self._pending = self._pending, b""
            return pending
        data = await self.stream.receive_some(CHUNK)
        self.bytes_in += len(data)
        # Both trio's sockets and SSLStream return bytes; the ABC also allows bytearray.
        return data if isinstance(data, bytes) else bytes(data)

    def unread(self, data: bytes) -> None:
        self._pending = data + self._pending

    @property
    def pending(self) -> bytes:
        return self._pending

    def take(self, n: int) -> bytes:
        """Remove and return the first n read-ahead bytes."""
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.write_timeout == math.inf:
            await self.stream.send_all(data)
        else:
            # Scaled by size, as Gitea's per-write deadline is (PER_WRITE_PER_KB_TIMEOUT):
            # a 256 KiB chunk to a client on a slow but working link is progress.
            # One send_all per chunk: cutting it into timed pieces cost the sender
            # 2-3x the CPU per byte (measured over TCP loopback).
            timeout = self.write_timeout * max(1.0, len(data) / WRITE_PIECE)
            with trio.move_on_after(timeout) as scope:
                await self.stream.send_all(data)
            if scope.cancelled_caught:
                # Part of it may be sent: the stream is unusable, its owner closes it.
                raise WriteTimeout(f"peer took {len(data)} bytes no faster than in {timeout}s")
        self.bytes_out += len(data)

    async def read_head(self, timeout: float, idle_timeout: float | None = None) -> bytes | None:
        """The next message head, or None on EOF or idle timeout before a whole head.

        `idle_timeout` bounds the wait for the first byte (keep-alive idle);
        `timeout` bounds the whole head once it has started (slowloris): then
        HeadTimeout, so the caller can answer 408.
        """
        reader = HeadReader()
        started = bool(self._pending)
        deadline = trio.current_time() + (
            timeout if started or idle_timeout is None else idle_timeout
        )
        while True:
            with trio.move_on_at(deadline) as scope:
                data = await self.receive()
            if scope.cancelled_caught:
                if started:
                    raise HeadTimeout()
                return None
            if not data:
                return None
            if not started:
                started = True
                deadline = trio.current_time() + timeout
            done = reader.feed(data)
            if done is not None:
                head, rest = done
                if rest:
                    self.unread(rest)
                return head

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)


class ByteSink(Protocol):
    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...


async def relay_body(
    src: BufferedStream, dst: ByteSink, framer: BodyFramer, idle_timeout: float
) -> None:
    """Copy one body from src to dst, framing bytes included, until it ends.

    Back-pressure is the loop itself: nothing is read from src until dst has
    taken the previous chunk. Raises trio.TooSlowError when src stalls (for
    `idle_timeout`, or behind its `body_rate`) and BodyError when it ends early.
    The time dst takes to accept a chunk does not count against src's rate: a
    client is held to what it sends, not to how fast the node reads.
    """
    pace = src.body_rate.start(trio.current_time()) if src.body_rate else None
    while not framer.done:
        deadline = trio.current_time() + idle_timeout
        if pace is not None:
            deadline = min(deadline, pace.deadline)
        with trio.fail_at(deadline):
            data = await src.receive()
        if not data:
            framer.eof()
            return
        if pace is not None:
            pace.received(len(data), trio.current_time())
        used = framer.feed(data)
        if used < len(data):
            src.unread(data[used:])
            data = data[:used]
        if data:
            sent_from = trio.current_time()
            await dst.send_all(data)
            if pace is not None:
                pace.paused(trio.current_time() - sent_from)


class _Collector:
    """A sink for relay_body that keeps the bytes, up to a limit."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self._limit = limit

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data
        if len(self.data) > self._limit:
            raise BodyError(f"request body over {self._limit} bytes", 413, "request body too large")


async def collect_body(
    src: BufferedStream, framer: BodyFramer, limit: int, idle_timeout: float
) -> bytes:
    """A whole small body, framing included: BodyError (413) past `limit`, BodyTimeout."""
    sink = _Collector(limit)
    try:
        await relay_body(src, sink, framer, idle_timeout)
    except trio.TooSlowError:
        raise BodyTimeout(f"no request body byte for {idle_timeout}s") from None
    return bytes(sink.data)


async def drain_body(src: BufferedStream, framer: BodyFramer, budget: int, timeout: float) -> None:
    """Read and drop up to `budget` bytes of a body, for at most `timeout` seconds.

    Stops early, quietly, if the body is malformed or the client closes: the
    framer then says the body was not read, and the connection is not reused.
    """
    with trio.move_on_after(timeout):
        while budget > 0 and not framer.done:
            data = await src.receive()
            try:
                if not data:
                    framer.eof()
                    return
                used = framer.feed(data[:budget])
            except BodyError:
                return
            if used < len(data):
                src.unread(data[used:])
            budget -= used
