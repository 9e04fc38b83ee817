"""NodePool's reuse rules: what goes back in the pool, what comes out, what is dropped.

Connections handed to `release` may be any stream (trio memory streams here);
those `acquire` makes are real loopback TCP, to a listener in the test. Idle
time runs on trio's MockClock, moved by hand.
"""

from __future__ import annotations

import socket
from functools import partial

import pytest
import trio
import trio.testing

from edge.errors import NodeUnavailable
from edge.http.pool import NodeConn, NodePool
from edge.http.stream import BufferedStream

ADDRESS = ("127.0.0.1", 1)  # never dialled: connections come from release()
URL = "http://127.0.0.1:1"


def memory_conn(address: tuple[str, int] = ADDRESS) -> tuple[NodeConn, trio.abc.Stream]:
    ours, node = trio.testing.memory_stream_pair()
    return NodeConn(address, BufferedStream(ours)), node


class Listener:
    """A loopback TCP listener that accepts and keeps the node side of each connection."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted: list[trio.SocketStream] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def keep(self, stream: trio.SocketStream) -> None:
        self.accepted.append(stream)
        await trio.sleep_forever()


@pytest.fixture
async def listener(nursery: trio.Nursery) -> Listener:
    found = Listener()
    listeners = await nursery.start(partial(trio.serve_tcp, found.keep, 0, host="127.0.0.1"))
    found.port = listeners[0].socket.getsockname()[1]
    return found


async def test_released_connection_is_reused() -> None:
    pool = NodePool(1.0, 30.0, 4)
    conn, _node = memory_conn()
    assert pool.release(conn)
    again = await pool.acquire(URL)
    assert again is conn
    assert again.reused
    assert (pool.stats.reuses, pool.stats.connects) == (1, 0)


async def test_most_recently_released_is_reused_first() -> None:
    pool = NodePool(1.0, 30.0, 4)
    first, _n1 = memory_conn()
    second, _n2 = memory_conn()
    pool.release(first)
    pool.release(second)
    assert await pool.acquire(URL) is second
    assert await pool.acquire(URL) is first


async def test_max_idle_bounds_what_is_kept() -> None:
    pool = NodePool(1.0, 30.0, 2)
    conns = [memory_conn() for _ in range(3)]
    assert [pool.release(conn) for conn, _ in conns] == [True, True, False]


async def test_max_idle_zero_keeps_nothing() -> None:
    pool = NodePool(1.0, 30.0, 0)
    conn, _node = memory_conn()
    assert not pool.release(conn)


async def test_connection_with_unread_bytes_is_not_kept() -> None:
    # A node that sent more than its response: those bytes would be read as
    # the next response.
    pool = NodePool(1.0, 30.0, 4)
    conn, node = memory_conn()
    await node.send_all(b"HTTP/1.1 200 OK\r\n")
    conn.stream.unread(await conn.stream.receive())
    assert not pool.release(conn)


async def test_connections_are_kept_per_node(listener: Listener) -> None:
    pool = NodePool(1.0, 30.0, 4)
    other, _node = memory_conn(("127.0.0.1", 2))
    pool.release(other)
    fresh = await pool.acquire(listener.url)  # a different address: a new connection
    assert fresh is not other
    assert not fresh.reused
    assert pool.stats.connects == 1
    await fresh.stream.aclose()


async def test_idle_past_the_timeout_is_dropped(
    mock_clock: trio.testing.MockClock, listener: Listener
) -> None:
    pool = NodePool(1.0, 30.0, 4)
    host, port = listener.url.removeprefix("http://").split(":")
    conn, node = memory_conn((host, int(port)))
    pool.release(conn)
    mock_clock.jump(30.5)
    fresh = await pool.acquire(listener.url)
    assert fresh is not conn
    assert pool.stats.stale_dropped == 1
    assert pool.stats.connects == 1
    with pytest.raises(trio.BrokenResourceError):
        await node.send_all(b"x")  # the pool closed the stale one
    await fresh.stream.aclose()


async def test_idle_within_the_timeout_is_kept(mock_clock: trio.testing.MockClock) -> None:
    pool = NodePool(1.0, 30.0, 4)
    conn, _node = memory_conn()
    pool.release(conn)
    mock_clock.jump(29.5)
    assert await pool.acquire(URL) is conn


async def test_connection_the_node_closed_while_idle_is_dropped(listener: Listener) -> None:
    pool = NodePool(1.0, 30.0, 4)
    conn = await pool.acquire(listener.url)
    await trio.testing.wait_all_tasks_blocked()
    assert pool.release(conn)
    await listener.accepted[0].aclose()  # the node's idle close
    stream = conn.stream.stream
    assert isinstance(stream, trio.SocketStream)
    with trio.fail_after(5):
        await trio.lowlevel.wait_readable(stream.socket)  # the FIN has arrived
    again = await pool.acquire(listener.url)
    assert again is not conn
    assert pool.stats.stale_dropped == 1
    assert pool.stats.connects == 2
    await again.stream.aclose()


async def test_fresh_skips_the_idle_connections(listener: Listener) -> None:
    pool = NodePool(1.0, 30.0, 4)
    host, port = listener.url.removeprefix("http://").split(":")
    conn, _node = memory_conn((host, int(port)))
    pool.release(conn)
    fresh = await pool.acquire(listener.url, fresh=True)
    assert fresh is not conn
    assert not fresh.reused
    assert await pool.acquire(listener.url) is conn  # still there for the next caller
    await fresh.stream.aclose()


async def test_connect_refused_is_node_unavailable() -> None:
    # A port that was just free: nothing listens on it.
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = NodePool(1.0, 30.0, 4)
    with pytest.raises(NodeUnavailable) as info:
        await pool.acquire(f"http://127.0.0.1:{port}")
    assert info.value.http_status == 503


async def test_every_connection_carries_the_credential_line(listener: Listener) -> None:
    pool = NodePool(1.0, 30.0, 4, credential="s3cret")
    conn = await pool.acquire(listener.url)
    assert conn.auth_line == b"authorization: Bearer s3cret"
    await conn.stream.aclose()


async def test_node_connections_probe_a_silent_peer(listener: Listener) -> None:
    """An SSH session may idle for minutes: TCP keepalive, not the client's 600 s idle
    timeout, must notice a node that vanished without a FIN."""
    pool = NodePool(1.0, 30.0, 4)
    conn = await pool.acquire(listener.url)
    sock = conn.stream.stream
    assert isinstance(sock, trio.SocketStream)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    await conn.stream.aclose()


async def test_aclose_closes_the_idle_connections() -> None:
    pool = NodePool(1.0, 30.0, 4)
    conn, node = memory_conn()
    pool.release(conn)
    await pool.aclose()
    assert await node.receive_some(10) == b""  # our side closed
