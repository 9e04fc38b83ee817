"""A userspace wide-area link emulator: a TCP relay that delays every byte.

    python -m bench.relay --listen 127.0.0.1:0 --target 127.0.0.1:9000 --delay-ms 70

`tc netem` is not available in this kernel (DESIGN.md, "Known pitfalls"), so
the regions benchmark puts one of these relays on every wide-area hop. Each
direction is a pipeline, not stop-and-wait: a reader stamps each chunk with
its arrival time and queues it, a writer hands it on at `arrival + delay`.
Every byte is therefore late by exactly the one-way delay whatever the
chunking, order is kept, and throughput is not divided by the delay.

The queue is bounded in bytes (`Link.queue_limit`). When it is full the
reader stops reading, the kernel's receive buffer fills and TCP flow control
slows the sender, as a real path does. The bound is also the relay's
bandwidth-delay product: one direction carries at most about
`queue_limit / delay` bytes per second (8 MiB over 130 ms ≈ 64 MB/s).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import trio

from gitproto.protocol import CHUNK

log = logging.getLogger(__name__)

Address = tuple[str, int]

# One read's worth. Large enough that a 100 MB clone costs a few hundred
# reads per direction rather than tens of thousands.
# With a bandwidth cap, a read is handed on in slices of this size, each at
# the moment its last byte would have left the wire, so a 256 KiB read at
# 8 Mbit/s arrives as a stream and not as one lump a quarter second late.
PACING_SLICE = 16 * 1024
# The writer joins chunks that are already due into one send, up to this.
COALESCE_LIMIT = 1024 * 1024


@dataclass(frozen=True)
class Link:
    """One direction of an emulated path."""

    delay: float
    """One-way propagation delay, seconds."""
    bandwidth: float | None = None
    """Serialisation rate cap, bytes per second; None for no cap."""
    queue_limit: int = 8 * 2**20
    """Most bytes held inside the relay for this direction."""

    def __post_init__(self) -> None:
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0, got {self.delay}")
        if self.bandwidth is not None and self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")
        if self.queue_limit <= 0:
            raise ValueError(f"queue_limit must be > 0, got {self.queue_limit}")


class LinkSchedule:
    """When each chunk leaves the far end of a link (no I/O, no clock).

    A chunk that arrives at `arrival` starts serialising once the link is
    free, takes `size / bandwidth` to serialise, and then propagates for
    `delay`. Without a bandwidth cap this is just `arrival + delay`.
    """

    def __init__(self, link: Link) -> None:
        self._link = link
        self._link_free_at = float("-inf")

    def deliver_at(self, arrival: float, size: int) -> float:
        if self._link.bandwidth is None:
            return arrival + self._link.delay
        start = max(arrival, self._link_free_at)
        self._link_free_at = start + size / self._link.bandwidth
        return self._link_free_at + self._link.delay


class _DelayLine:
    """A FIFO of (due time, bytes) bounded by the bytes it holds.

    Bytes count against the limit from the moment they are read until the
    writer's send of them returns, so a stalled receiver holds the reader
    back too.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: deque[tuple[float, bytes]] = deque()
        self._held = 0
        self._ended = False
        self._space = trio.lowlevel.ParkingLot()
        self._data = trio.lowlevel.ParkingLot()

    async def wait_for_space(self) -> int:
        """Wait until some bytes may be added; return how many."""
        while self._held >= self._limit:
            await self._space.park()
        return self._limit - self._held

    def put(self, due: float, data: bytes) -> None:
        self._chunks.append((due, data))
        self._held += len(data)
        self._data.unpark_all()

    def end(self) -> None:
        """No more chunks will be put (the source reached EOF)."""
        self._ended = True
        self._data.unpark_all()

    async def next_due(self) -> float | None:
        """Due time of the oldest chunk, waiting for one; None once drained."""
        while not self._chunks:
            if self._ended:
                return None
            await self._data.park()
        return self._chunks[0][0]

    def take_due(self, now: float) -> bytes:
        """Remove the oldest chunk and any others due by `now`, joined."""
        parts = [self._chunks.popleft()[1]]
        size = len(parts[0])
        while self._chunks and self._chunks[0][0] <= now:
            if size + len(self._chunks[0][1]) > COALESCE_LIMIT:
                break
            parts.append(self._chunks.popleft()[1])
            size += len(parts[-1])
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def release(self, size: int) -> None:
        self._held -= size
        self._space.unpark_all()


async def _read_into(src: trio.abc.ReceiveStream, line: _DelayLine, link: Link) -> None:
    schedule = LinkSchedule(link)
    slice_size = CHUNK if link.bandwidth is None else PACING_SLICE
    while True:
        room = await line.wait_for_space()
        data = await src.receive_some(min(CHUNK, room))
        if not data:
            line.end()
            return
        arrival = trio.current_time()
        chunk = bytes(data)
        if len(chunk) <= slice_size:
            line.put(schedule.deliver_at(arrival, len(chunk)), chunk)
            continue
        for start in range(0, len(chunk), slice_size):
            piece = chunk[start : start + slice_size]
            line.put(schedule.deliver_at(arrival, len(piece)), piece)


async def _write_from(line: _DelayLine, dst: trio.abc.SendStream) -> None:
    while (due := await line.next_due()) is not None:
        await trio.sleep_until(due)
        data = line.take_due(trio.current_time())
        await dst.send_all(data)
        line.release(len(data))
    if isinstance(dst, trio.abc.HalfCloseableStream):
        await dst.send_eof()
    else:
        await dst.aclose()


async def pipe(src: trio.abc.ReceiveStream, dst: trio.abc.SendStream, link: Link) -> None:
    """Copy src to dst through `link` until src's EOF has been passed on.

    EOF is passed on after the queue drains, with `send_eof()` where dst can
    half-close, so the other direction keeps flowing; otherwise dst is
    closed. A broken or closed stream on either side ends the pipe quietly
    (a reset is how wide-area connections end too) after closing both sides.
    """
    line = _DelayLine(link.queue_limit)
    broken: trio.BrokenResourceError | trio.ClosedResourceError | None = None

    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            nonlocal broken
            try:
                await _read_into(src, line, link)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                broken = exc
                nursery.cancel_scope.cancel()

        nursery.start_soon(reader)
        try:
            await _write_from(line, dst)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            broken = exc
            nursery.cancel_scope.cancel()

    if broken is not None:
        log.debug("relay pipe ended by %r", broken)
        await trio.aclose_forcefully(src)
        await trio.aclose_forcefully(dst)


async def relay_connection(
    client: trio.SocketStream,
    target: Address,
    up: Link,
    down: Link,
    *,
    connect_timeout: float = 10.0,
) -> None:
    """Relay one accepted client to `target`: `up` towards it, `down` back.

    The two directions end independently, so a client that half-closes
    after its request still gets the whole response.

    The kernel completed the client's TCP handshake on loopback at once; a
    real one across the link takes a round trip (SYN, SYN-ACK) before the first
    byte can leave. Nothing is read from the client for that long, so its first
    bytes arrive `up.delay + down.delay` later than on an open connection, and
    a fresh connection costs what it costs across an ocean.
    """
    try:
        await trio.sleep(up.delay + down.delay)
        try:
            with trio.fail_after(connect_timeout):
                server = await trio.open_tcp_stream(*target)
        except (OSError, trio.TooSlowError) as exc:
            log.warning("relay cannot reach %s:%d: %r", *target, exc)
            return
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pipe, client, server, up)
                nursery.start_soon(pipe, server, client, down)
        finally:
            await trio.aclose_forcefully(server)
    finally:
        await trio.aclose_forcefully(client)


async def serve_relay(
    listen: Address,
    target: Address,
    up: Link,
    down: Link,
    *,
    task_status: trio.TaskStatus[Address] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept on `listen` and relay each connection to `target`.

    Reports the bound (host, port) through `task_status`, so port 0 works.
    """
    host, port = listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_host, bound_port = listeners[0].socket.getsockname()[:2]

    async def handler(client: trio.SocketStream) -> None:
        await relay_connection(client, target, up, down)

    task_status.started((bound_host, bound_port))
    await trio.serve_listeners(handler, listeners)


class RelaySpec(NamedTuple):
    """One relay of a RelaySet: a name to find it by, where it forwards to."""

    name: str
    target: Address
    up: Link
    down: Link
    listen: Address = ("127.0.0.1", 0)


class RelaySet:
    """Many relays in the caller's nursery, looked up by name.

        relays = RelaySet()
        await relays.start(nursery, [RelaySpec("fra>edge-lax", edge, wan, wan), ...])
        host, port = relays["fra>edge-lax"]

    They run until the nursery is cancelled.
    """

    def __init__(self) -> None:
        self.addresses: dict[str, Address] = {}

    async def start(self, nursery: trio.Nursery, specs: Iterable[RelaySpec]) -> dict[str, Address]:
        """Start each relay, wait until it listens; return name -> address."""
        started: dict[str, Address] = {}
        for spec in specs:
            if spec.name in self.addresses:
                raise ValueError(f"duplicate relay name {spec.name!r}")
            address: Address = await nursery.start(
                serve_relay, spec.listen, spec.target, spec.up, spec.down
            )
            self.addresses[spec.name] = started[spec.name] = address
        return started

    def __getitem__(self, name: str) -> Address:
        return self.addresses[name]


def parse_address(text: str) -> Address:
    """`host:port` or `[v6-host]:port` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _format_address(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _links_from_args(args: argparse.Namespace) -> tuple[Link, Link]:
    bandwidth = None if args.bandwidth_mbps is None else args.bandwidth_mbps * 1e6 / 8
    up_ms = args.delay_ms if args.up_delay_ms is None else args.up_delay_ms
    down_ms = args.delay_ms if args.down_delay_ms is None else args.down_delay_ms
    queue_limit = int(args.queue_mib * 2**20)
    return (
        Link(up_ms / 1000, bandwidth, queue_limit),
        Link(down_ms / 1000, bandwidth, queue_limit),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description="TCP relay with emulated wide-area delay."
    )
    parser.add_argument("--listen", type=parse_address, default=("127.0.0.1", 0))
    parser.add_argument("--target", type=parse_address, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way, both directions")
    parser.add_argument("--up-delay-ms", type=float, help="client -> target (overrides)")
    parser.add_argument("--down-delay-ms", type=float, help="target -> client (overrides)")
    parser.add_argument("--bandwidth-mbps", type=float, help="cap per direction, Mbit/s")
    parser.add_argument("--queue-mib", type=float, default=8.0, help="per direction")
    args = parser.parse_args(argv)
    try:
        up, down = _links_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(serve_relay, args.listen, args.target, up, down)
            print(_format_address(bound), flush=True)
            print(
                f"relaying to {_format_address(args.target)}: up {up}, down {down}",
                file=sys.stderr,
                flush=True,
            )

    try:
        trio.run(run)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
