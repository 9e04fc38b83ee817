"""The wide-area relay: delay, pipelining, pacing, half-close, back-pressure, errors.

Timing tests run on trio's autojump MockClock over in-memory streams, so the
expected times are exact; the TCP tests use small real delays and generous
upper bounds.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import memory_stream_one_way_pair

from bench.relay import (
    Address,
    Link,
    LinkSchedule,
    RelaySet,
    RelaySpec,
    parse_address,
    pipe,
    serve_relay,
)
from gitproto.protocol import CHUNK

MiB = 2**20
REPO_ROOT = Path(__file__).resolve().parents[2]


async def receive_until_eof(stream: trio.abc.ReceiveStream) -> list[tuple[float, bytes]]:
    """Every receive as (clock time, bytes), until EOF."""
    arrivals = []
    while data := await stream.receive_some():
        arrivals.append((trio.current_time(), bytes(data)))
    return arrivals


def joined(arrivals: list[tuple[float, bytes]]) -> bytes:
    return b"".join(data for _, data in arrivals)


# --- timing, on the mock clock ---------------------------------------------


async def test_each_chunk_arrives_exactly_one_delay_after_it_was_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, relay_in = memory_stream_one_way_pair()
    relay_out, server = memory_stream_one_way_pair()
    plan = [(0.0, b"a"), (0.03, b"bb"), (0.05, b"ccc"), (0.5, b"dddd")]
    sent_at: list[float] = []

    async def send_plan() -> None:
        for gap, data in plan:
            await trio.sleep(gap)
            sent_at.append(trio.current_time())
            await client.send_all(data)
        await client.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, relay_in, relay_out, Link(delay=0.1))
        nursery.start_soon(send_plan)
        arrivals = await receive_until_eof(server)

    assert [data for _, data in arrivals] == [data for _, data in plan]
    assert [at for at, _ in arrivals] == pytest.approx([t + 0.1 for t in sent_at], abs=1e-9)


async def test_back_to_back_chunks_all_arrive_one_delay_later_not_n_delays(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, relay_in = memory_stream_one_way_pair()
    relay_out, server = memory_stream_one_way_pair()
    chunks = [bytes([i]) * 64 * 1024 for i in range(64)]  # 4 MiB, distinct bytes

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, relay_in, relay_out, Link(delay=0.1))
        t0 = trio.current_time()
        for chunk in chunks:
            await client.send_all(chunk)
        await client.aclose()
        arrivals = await receive_until_eof(server)

    assert joined(arrivals) == b"".join(chunks)  # nothing lost, order kept
    assert arrivals[0][0] == pytest.approx(t0 + 0.1, abs=1e-9)
    assert arrivals[-1][0] == pytest.approx(t0 + 0.1, abs=1e-9)


async def test_bandwidth_cap_adds_serialisation_time_and_paces_the_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, relay_in = memory_stream_one_way_pair()
    relay_out, server = memory_stream_one_way_pair()
    payload = bytes(range(256)) * 3907  # ~1 MB
    rate = len(payload) / 1.0  # the whole payload takes one second to serialise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, relay_in, relay_out, Link(delay=0.05, bandwidth=rate))
        t0 = trio.current_time()
        await client.send_all(payload)
        await client.aclose()
        arrivals = await receive_until_eof(server)

    assert joined(arrivals) == payload
    assert arrivals[-1][0] == pytest.approx(t0 + 0.05 + 1.0, abs=1e-6)
    # Paced, not one lump at the end: the first bytes come right after the delay.
    assert arrivals[0][0] < t0 + 0.05 + 0.1
    assert len(arrivals) > 10


def test_link_schedule_queues_behind_a_busy_link_and_restarts_when_idle() -> None:
    schedule = LinkSchedule(Link(delay=0.1, bandwidth=1000.0))
    assert schedule.deliver_at(0.0, 500) == pytest.approx(0.6)
    assert schedule.deliver_at(0.0, 500) == pytest.approx(1.1)  # waited for the first
    assert schedule.deliver_at(5.0, 100) == pytest.approx(5.2)  # link idle again


def test_link_rejects_impossible_parameters() -> None:
    with pytest.raises(ValueError):
        Link(delay=-0.1)
    with pytest.raises(ValueError):
        Link(delay=0.1, bandwidth=0)
    with pytest.raises(ValueError):
        Link(delay=0.1, queue_limit=0)


# --- back-pressure and errors, with hand-made streams ----------------------


class EndlessSource(trio.abc.ReceiveStream):
    """Hands out zeros as fast as asked, up to `total`, counting what it gave."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.pulled = 0
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        size = min(max_bytes or CHUNK, self.total - self.pulled)
        self.pulled += size
        return bytes(size)

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


class GatedSink(trio.abc.SendStream):
    """A receiver that accepts nothing until `gate` is set."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.received = 0
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.gate.wait()
        self.received += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.gate.wait()

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def test_stalled_receiver_stops_the_relay_reading_at_the_queue_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limit = 1 * MiB
    source = EndlessSource(total=32 * limit)
    sink = GatedSink()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pipe, source, sink, Link(delay=0.01, queue_limit=limit))
        await trio.sleep(10)
        pulled_while_stalled = source.pulled
        sink.gate.set()

    assert limit - CHUNK <= pulled_while_stalled <= limit + CHUNK
    # Once the receiver drains, reading resumes and everything gets through.
    assert sink.received == source.total
    assert sink.closed


class BreakingSource(trio.abc.ReceiveStream):
    """Gives one chunk, then fails like a reset connection."""

    def __init__(self) -> None:
        self.calls = 0
        self.closed = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if self.calls == 1:
            return b"request"
        raise trio.BrokenResourceError("connection reset")

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


class RecordingSink(trio.abc.HalfCloseableStream):
    """Records what was sent and whether it saw send_eof or a full close."""

    def __init__(self, *, broken: bool = False) -> None:
        self.broken = broken
        self.received = b""
        self.eof = False
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self.closed:
            raise trio.ClosedResourceError
        if self.broken:
            raise trio.BrokenResourceError("peer went away")
        self.received += bytes(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.eof = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self.closed = True
        await trio.lowlevel.checkpoint()


async def test_eof_is_passed_on_as_half_close_after_the_queue_drains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = EndlessSource(total=3 * CHUNK + 5)
    sink = RecordingSink()
    await pipe(source, sink, Link(delay=0.2))
    assert len(sink.received) == source.total
    assert sink.eof
    assert not sink.closed  # the other direction may still be talking


async def test_broken_source_closes_both_sides(autojump_clock: trio.testing.MockClock) -> None:
    source = BreakingSource()
    sink = RecordingSink()
    with trio.fail_after(5):
        await pipe(source, sink, Link(delay=0.1))
    assert sink.closed
    assert not sink.eof
    assert source.closed


async def test_broken_destination_closes_both_sides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = EndlessSource(total=10 * MiB)
    sink = RecordingSink(broken=True)
    with trio.fail_after(5):
        await pipe(source, sink, Link(delay=0.1))
    assert source.closed
    assert sink.closed
    assert source.pulled < source.total


# --- real loopback TCP -----------------------------------------------------


async def read_to_eof(stream: trio.abc.ReceiveStream) -> bytes:
    return joined(await receive_until_eof(stream))


async def start_server(
    nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[object]]
) -> Address:
    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    host, port = listeners[0].socket.getsockname()[:2]
    return host, port


async def test_client_half_close_still_gets_the_whole_answer_through_the_relay() -> None:
    async def answer_after_eof(stream: trio.SocketStream) -> None:
        request = await read_to_eof(stream)
        await stream.send_all(b"got %d bytes" % len(request))
        await stream.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            target = await start_server(nursery, answer_after_eof)
            wan = Link(delay=0.02)
            relay = await nursery.start(serve_relay, ("127.0.0.1", 0), target, wan, wan)
            t0 = trio.current_time()
            client = await trio.open_tcp_stream(*relay)
            await client.send_all(b"x" * 300_000)
            await client.send_eof()
            reply = await read_to_eof(client)
            elapsed = trio.current_time() - t0
            await client.aclose()
            nursery.cancel_scope.cancel()

    assert reply == b"got 300000 bytes"
    # A fresh connection: the TCP handshake's round trip, then one delay each way.
    assert 0.08 <= elapsed < 2.0


async def test_a_new_connection_pays_a_round_trip_before_its_first_byte() -> None:
    async def echo_once(stream: trio.SocketStream) -> None:
        await stream.send_all(await stream.receive_some(100))
        await stream.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            target = await start_server(nursery, echo_once)
            wan = Link(delay=0.05)
            relay = await nursery.start(serve_relay, ("127.0.0.1", 0), target, wan, wan)
            client = await trio.open_tcp_stream(*relay)
            t0 = trio.current_time()
            await client.send_all(b"ping")
            assert await client.receive_some(100) == b"ping"
            elapsed = trio.current_time() - t0
            await client.aclose()
            nursery.cancel_scope.cancel()

    # Handshake RTT (0.1) + request (0.05) + answer (0.05); far less than 2 RTTs more.
    assert 0.2 <= elapsed < 0.35


async def test_server_half_close_still_lets_the_client_send() -> None:
    server_got = trio.Event()
    received: list[bytes] = []

    async def greet_then_listen(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hello")
        await stream.send_eof()
        received.append(await read_to_eof(stream))
        server_got.set()
        await stream.aclose()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            target = await start_server(nursery, greet_then_listen)
            wan = Link(delay=0.02)
            relay = await nursery.start(serve_relay, ("127.0.0.1", 0), target, wan, wan)
            client = await trio.open_tcp_stream(*relay)
            assert await read_to_eof(client) == b"hello"
            await client.send_all(b"still here")
            await client.send_eof()
            await server_got.wait()
            await client.aclose()
            nursery.cancel_scope.cancel()

    assert received == [b"still here"]


def closed_port() -> Address:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        host, port = sock.getsockname()
    return host, port


async def test_unreachable_target_closes_the_client_and_keeps_accepting() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            wan = Link(delay=0.01)
            relay = await nursery.start(serve_relay, ("127.0.0.1", 0), closed_port(), wan, wan)
            for _ in range(2):  # the second proves the accept loop survived
                client = await trio.open_tcp_stream(*relay)
                try:
                    data = await client.receive_some()
                except trio.BrokenResourceError:  # a reset is as good as a FIN here
                    data = b""
                assert data == b""
                await client.aclose()
            nursery.cancel_scope.cancel()


async def echo(stream: trio.SocketStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)
    await stream.aclose()


async def round_trip(address: Address, message: bytes) -> tuple[bytes, float]:
    t0 = trio.current_time()
    client = await trio.open_tcp_stream(*address)
    await client.send_all(message)
    await client.send_eof()
    reply = await read_to_eof(client)
    await client.aclose()
    return reply, trio.current_time() - t0


async def test_relay_set_starts_named_relays_each_with_its_own_delay() -> None:
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            target = await start_server(nursery, echo)
            relays = RelaySet()
            addresses = await relays.start(
                nursery,
                [
                    RelaySpec("near", target, Link(0.005), Link(0.005)),
                    RelaySpec("far", target, Link(0.03), Link(0.04)),
                ],
            )
            with pytest.raises(ValueError, match="duplicate"):
                await relays.start(nursery, [RelaySpec("near", target, Link(0), Link(0))])
            near = await round_trip(relays["near"], b"ping")
            far = await round_trip(relays["far"], b"pong")
            nursery.cancel_scope.cancel()

    assert addresses == relays.addresses
    assert len({port for _, port in addresses.values()}) == 2
    assert near[0] == b"ping"
    assert far[0] == b"pong"
    assert 0.01 <= near[1] < 2.0
    assert 0.07 <= far[1] < 2.0


async def test_command_line_prints_the_bound_address_and_relays() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            target = await start_server(nursery, echo)
            process = await trio.lowlevel.open_process(
                [
                    sys.executable, "-m", "bench.relay",
                    "--listen", "127.0.0.1:0",
                    "--target", f"{target[0]}:{target[1]}",
                    "--delay-ms", "10",
                ],
                cwd=REPO_ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                assert process.stdout is not None
                first_line = b""
                while not first_line.endswith(b"\n"):
                    data = await process.stdout.receive_some()
                    assert data, "relay exited before printing its address"
                    first_line += data
                reply, elapsed = await round_trip(parse_address(first_line.decode().strip()), b"hi")
            finally:
                process.kill()
                with trio.move_on_after(5, shield=True):
                    await process.wait()
            nursery.cancel_scope.cancel()

    assert reply == b"hi"
    assert elapsed >= 0.02


@pytest.mark.parametrize(
    ("text", "address"),
    [("127.0.0.1:0", ("127.0.0.1", 0)), ("[::1]:9000", ("::1", 9000)), ("fra:22", ("fra", 22))],
)
def test_parse_address(text: str, address: Address) -> None:
    assert parse_address(text) == address


@pytest.mark.parametrize("text", ["127.0.0.1", ":80", "host:", "host:http", "host:70000"])
def test_parse_address_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)
