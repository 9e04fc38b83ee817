"""BufferedStream and the body pumps (relay, collect, drain) over trio memory streams.

Timeouts run on trio's autojump MockClock, so a stall costs no wall time and no
test waits on a sleep.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

import pytest
import trio
import trio.testing

from edge.http.stream import (
    WRITE_PIECE,
    BodyTimeout,
    BufferedStream,
    HeadTimeout,
    WriteTimeout,
    collect_body,
    drain_body,
)
from edge.http.stream import relay_body as relay
from edge.proto.body import BodyError, BodyFramer
from edge.proto.http_head import HeadError
from edge.proto.pace import BodyRate
from gitproto.protocol import CHUNK

HEAD = b"POST /a/b.git/git-upload-pack HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n\r\n"
NEXT = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"


class Sink:
    """A relay destination that keeps what it gets."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.calls = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.calls += 1
        self.data += data


def pair() -> tuple[trio.abc.Stream, BufferedStream]:
    """A peer's end, and our buffered end, of one in-memory stream."""
    ours, theirs = trio.testing.memory_stream_pair()
    return theirs, BufferedStream(ours)


# -- read_head ---------------------------------------------------------------------


async def test_read_head_returns_the_head_and_keeps_what_follows() -> None:
    peer, stream = pair()
    await peer.send_all(HEAD + b"hello" + NEXT)
    assert await stream.read_head(5) == HEAD
    assert stream.pending == b"hello" + NEXT
    assert stream.take(5) == b"hello"
    assert await stream.read_head(5) == NEXT
    assert stream.pending == b""


async def test_read_head_byte_by_byte() -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()
    stream = BufferedStream(ours)

    async def send() -> None:
        for i in range(len(HEAD)):
            await theirs.send_all(HEAD[i : i + 1])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        assert await stream.read_head(5) == HEAD
    assert stream.bytes_in == len(HEAD)


async def test_read_head_is_none_at_eof_before_a_head() -> None:
    peer, stream = pair()
    await peer.aclose()
    assert await stream.read_head(5) is None


async def test_read_head_is_none_at_eof_inside_a_head() -> None:
    peer, stream = pair()
    await peer.send_all(HEAD[:10])
    await peer.aclose()
    assert await stream.read_head(5) is None


async def test_idle_keep_alive_connection_ends_quietly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    _peer, stream = pair()
    started = trio.current_time()
    assert await stream.read_head(5, idle_timeout=60) is None
    assert trio.current_time() - started == pytest.approx(60)


async def test_head_that_stalls_is_a_head_timeout(autojump_clock: trio.testing.MockClock) -> None:
    peer, stream = pair()
    await peer.send_all(HEAD[:10])
    with pytest.raises(HeadTimeout):
        await stream.read_head(5, idle_timeout=60)


async def test_head_with_a_bare_lf_is_refused_at_once() -> None:
    peer, stream = pair()
    await peer.send_all(b"GET / HTTP/1.1\nHost: x\n")
    with pytest.raises(HeadError) as info:
        await stream.read_head(5)
    assert info.value.http_status == 400


async def test_unread_puts_bytes_back_in_front() -> None:
    peer, stream = pair()
    await peer.send_all(b"world")
    stream.unread(b"hello ")
    assert await stream.receive() == b"hello "
    assert await stream.receive() == b"world"


# -- relay_body --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "body"),
    [
        (lambda: BodyFramer.length(5), b"hello"),
        (BodyFramer.chunked, b"5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
    ],
    ids=["length", "chunked"],
)
async def test_relay_copies_the_body_verbatim_and_leaves_the_next_message(
    make: Callable[[], BodyFramer], body: bytes
) -> None:
    for split in (len(body), 1, 3):
        peer, stream = pair()
        for i in range(0, len(body), split):
            await peer.send_all(body[i : i + split])
        await peer.send_all(NEXT)
        sink = Sink()
        framer = make()
        while not framer.done:
            await relay(stream, sink, framer, 5)
        assert bytes(sink.data) == body
        assert await stream.read_head(5) == NEXT


async def test_relay_of_a_body_cut_short_is_a_body_error() -> None:
    peer, stream = pair()
    await peer.send_all(b"hel")
    await peer.aclose()
    sink = Sink()
    with pytest.raises(BodyError):
        await relay(stream, sink, BodyFramer.length(5), 5)
    assert sink.data == b"hel"  # what arrived was passed on


async def test_relay_of_a_close_delimited_body_ends_at_eof() -> None:
    peer, stream = pair()
    await peer.send_all(b"all of it")
    await peer.aclose()
    sink = Sink()
    framer = BodyFramer.until_close()
    await relay(stream, sink, framer, 5)
    assert (bytes(sink.data), framer.done) == (b"all of it", True)


async def test_relay_stall_is_too_slow(autojump_clock: trio.testing.MockClock) -> None:
    peer, stream = pair()
    await peer.send_all(b"he")
    with pytest.raises(trio.TooSlowError):
        await relay(stream, Sink(), BodyFramer.length(5), 30)


async def test_relay_reads_nothing_more_while_the_destination_is_busy() -> None:
    # Back-pressure: one chunk in flight, however much the source has ready.
    peer, stream = pair()
    await peer.send_all(b"x" * (CHUNK * 4))
    release = trio.Event()

    class SlowSink(Sink):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            await release.wait()
            await super().send_all(data)

    sink = SlowSink()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay, stream, sink, BodyFramer.length(CHUNK * 4), 5)
        await trio.testing.wait_all_tasks_blocked()
        assert stream.bytes_in == CHUNK
        release.set()
    assert len(sink.data) == CHUNK * 4


# -- collect_body ------------------------------------------------------------------


async def test_collect_body_keeps_a_small_body() -> None:
    peer, stream = pair()
    await peer.send_all(b"hello" + NEXT)
    assert await collect_body(stream, BodyFramer.length(5), 100, 5) == b"hello"
    assert stream.pending == NEXT


async def test_collect_body_over_the_limit_is_413() -> None:
    peer, stream = pair()
    await peer.send_all(b"x" * 200)
    with pytest.raises(BodyError) as info:
        await collect_body(stream, BodyFramer.length(200), 100, 5)
    assert (info.value.http_status, info.value.public_message) == (413, "request body too large")


async def test_collect_body_stall_is_408(autojump_clock: trio.testing.MockClock) -> None:
    peer, stream = pair()
    await peer.send_all(b"x")
    with pytest.raises(BodyTimeout) as info:
        await collect_body(stream, BodyFramer.length(5), 100, 5)
    assert info.value.http_status == 408


# -- drain_body --------------------------------------------------------------------


async def test_drain_reads_a_small_body_to_its_end_and_no_further() -> None:
    peer, stream = pair()
    await peer.send_all(b"x" * 158 + NEXT)
    framer = BodyFramer.length(158)
    await drain_body(stream, framer, 158, 5)
    assert framer.done
    assert stream.pending == NEXT


async def test_drain_of_a_chunked_body_in_pieces() -> None:
    peer, stream = pair()
    framer = BodyFramer.chunked()
    body = b"5\r\nhello\r\n0\r\n\r\n"

    async def send() -> None:
        for i in range(len(body)):
            await peer.send_all(body[i : i + 1])
        await peer.send_all(NEXT)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await drain_body(stream, framer, 1000, 5)
    assert framer.done
    assert await stream.read_head(5) == NEXT


async def test_drain_stops_at_its_budget() -> None:
    peer, stream = pair()
    await peer.send_all(b"5\r\nhello\r\n" * 100)
    framer = BodyFramer.chunked()
    await drain_body(stream, framer, 25, 5)
    assert framer.consumed == 25
    assert not framer.done


async def test_drain_stops_at_its_deadline(autojump_clock: trio.testing.MockClock) -> None:
    peer, stream = pair()
    await peer.send_all(b"x" * 10)
    framer = BodyFramer.length(100)
    started = trio.current_time()
    await drain_body(stream, framer, 100, 2)
    assert trio.current_time() - started == pytest.approx(2)
    assert framer.consumed == 10
    assert not framer.done


async def test_drain_of_a_malformed_body_stops_quietly() -> None:
    peer, stream = pair()
    await peer.send_all(b"5\nhello\r\n0\r\n\r\n")
    framer = BodyFramer.chunked()
    await drain_body(stream, framer, 1000, 5)
    assert framer.broken


async def test_drain_stops_when_the_client_closes() -> None:
    peer, stream = pair()
    await peer.send_all(b"abc")
    await peer.aclose()
    framer = BodyFramer.length(10)
    await drain_body(stream, framer, 10, 5)
    assert framer.broken


# -- the client fronts' limits: per-write timeout, body rate floor -----------------


async def test_a_peer_that_stops_reading_fails_the_write_after_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A write may take write_timeout per 64 KiB it carries, and at least write_timeout.
    for size, waited in ((100, 30), (WRITE_PIECE, 30), (CHUNK, 30 * CHUNK / WRITE_PIECE)):
        ours, _theirs = trio.testing.lockstep_stream_pair()  # takes nothing until read
        stream = BufferedStream(ours, write_timeout=30)
        started = trio.current_time()
        with pytest.raises(WriteTimeout):
            await stream.send_all(b"x" * size)
        assert trio.current_time() - started == pytest.approx(waited)
        assert stream.bytes_out == 0


async def test_a_peer_that_reads_slowly_but_steadily_is_not_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()
    stream = BufferedStream(ours, write_timeout=30)

    async def read_slowly() -> None:
        for _ in range(20):
            await trio.sleep(20)  # each read within the write timeout
            await theirs.receive_some(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_slowly)
        for _ in range(20):
            await stream.send_all(b"x")
    assert stream.bytes_out == 20


async def test_body_that_trickles_is_cut_by_the_rate_floor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.memory_stream_pair()
    stream = BufferedStream(ours, body_rate=BodyRate(1024, 30))

    async def trickle() -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while True:
                await theirs.send_all(b"x")
                await trio.sleep(20)  # under the 300 s idle timeout every time

    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        with pytest.raises(trio.TooSlowError):
            await relay(stream, Sink(), BodyFramer.length(100_000_000), 300)
        nursery.cancel_scope.cancel()
    # 30 s of grace, plus 1/1024 s for each byte that did arrive.
    assert trio.current_time() - started == pytest.approx(30, abs=0.01)


async def test_a_slow_sink_does_not_count_against_the_senders_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    peer, stream = pair()
    stream.body_rate = BodyRate(1024, 5)

    class SlowSink(Sink):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            await trio.sleep(60)  # a node busy with the last chunk
            await super().send_all(data)

    async def send() -> None:
        for _ in range(3):
            await peer.send_all(b"x" * 10)
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await relay(stream, SlowSink(), BodyFramer.length(30), 300)


async def test_a_slow_link_that_takes_64_kib_per_write_timeout_is_not_cut(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ours, theirs = trio.testing.lockstep_stream_pair()
    stream = BufferedStream(ours, write_timeout=30)
    data = b"x" * (4 * WRITE_PIECE)  # one call, 80 s to go out: more than 30, but steady

    async def read_a_piece_every_20s() -> None:
        for _ in range(4):
            await trio.sleep(20)  # within the write timeout, each time
            got = 0
            while got < WRITE_PIECE:
                got += len(await theirs.receive_some(WRITE_PIECE - got))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_a_piece_every_20s)
        await stream.send_all(data)
    assert stream.bytes_out == len(data)
