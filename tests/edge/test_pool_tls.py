"""NodePool over real TLS: pinned from the node's record, keyed by pin, and the
`require_tls` policy. Loopback TLS servers in-process; see test_node_tls.py for
the same through real git, a real edge and etcd."""

from __future__ import annotations

import logging
import select
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from edge.config import NodeTlsPolicy
from edge.errors import NodeUnavailable
from edge.http.pool import NodeConn, NodePool
from plumbing.tls import SocketTLSStream
from plumbing.tlscerts import load_or_create_cert
from routing.model import NodeId, NodeRecord, Region, VolumeId, VolumeInfo

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
REQUEST = b"GET /healthz HTTP/1.1\r\nhost: n\r\n\r\n"


@dataclass
class Cert:
    context: ssl.SSLContext
    pin: str


def _cert(tmp_path: Path, name: str) -> Cert:
    cert_file, key_file = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    pin = load_or_create_cert(cert_file, key_file, name)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    ctx.num_tickets = 0  # as node/tls.py
    return Cert(ctx, pin)


@dataclass
class FakeNode:
    """Answers every request head with 200; remembers every plaintext byte it got."""

    cert: Cert | None
    close_after_answer: bool = False
    accepted: int = 0
    handshakes: int = 0
    received: bytearray = field(default_factory=bytearray)
    url: str = ""

    async def handle(self, tcp: trio.SocketStream) -> None:
        self.accepted += 1
        stream: trio.abc.Stream = tcp
        try:
            if self.cert is not None:
                stream = tls = SocketTLSStream(tcp, self.cert.context)
                await tls.do_handshake()
                self.handshakes += 1
            pending = b""
            while data := await stream.receive_some(65536):
                self.received += data
                pending += data
                while b"\r\n\r\n" in pending:
                    _, _, pending = pending.partition(b"\r\n\r\n")
                    await stream.send_all(ANSWER)
                    if self.close_after_answer:
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def serving(node: FakeNode) -> AsyncIterator[FakeNode]:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, node.handle, 0)
        port = listeners[0].socket.getsockname()[1]
        node.url = f"{'https' if node.cert else 'http'}://127.0.0.1:{port}"
        yield node
        nursery.cancel_scope.cancel()


def _record(url: str, pin: str | None, region: str = "fra") -> NodeRecord:
    volumes = (VolumeInfo(VolumeId("v-0123456789abcdef"), 1),)
    return NodeRecord(NodeId("n-1"), Region(region), url, volumes, tls_cert_sha256=pin)


def _pool(
    records: dict[NodeId, NodeRecord],
    policy: NodeTlsPolicy = NodeTlsPolicy.NEVER,
) -> NodePool:
    return NodePool(
        3.0, 30.0, 4, credential="s", nodes=records.get, region="fra", require_tls=policy
    )


async def _exchange(conn: NodeConn) -> bytes:
    with trio.fail_after(5):
        await conn.stream.send_all(REQUEST)
        answer = b""
        while len(answer) < len(ANSWER):
            answer += await conn.stream.receive()
    return answer


async def test_tls_node_is_dialled_pinned_and_its_connection_reused(tmp_path: Path) -> None:
    cert = _cert(tmp_path, "a")
    async with serving(FakeNode(cert)) as node:
        records = {NodeId("n-1"): _record(node.url, cert.pin)}
        pool = _pool(records)
        conn = await pool.acquire(node.url, node_id="n-1")
        assert conn.tls_pin == cert.pin and isinstance(conn.stream.stream, SocketTLSStream)
        assert await _exchange(conn) == ANSWER
        assert pool.release(conn)
        again = await pool.acquire(node.url, node_id="n-1")
        assert again is conn and again.reused
        assert await _exchange(again) == ANSWER
        assert (pool.stats.connects, pool.stats.tls_connects, pool.stats.reuses) == (1, 1, 1)
        assert node.accepted == 1
        await pool.aclose()


async def test_a_certificate_that_is_not_the_pin_is_refused_before_any_byte(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    served, published = _cert(tmp_path, "impostor"), _cert(tmp_path, "genuine")
    async with serving(FakeNode(served)) as node:
        pool = _pool({NodeId("n-1"): _record(node.url, published.pin)})
        with caplog.at_level(logging.WARNING), pytest.raises(NodeUnavailable) as info:
            await pool.acquire(node.url, node_id="n-1")
        assert "is not the pin in etcd" in info.value.detail
        with trio.fail_after(5):
            while node.accepted and node.handshakes == 0:
                await trio.sleep(0.01)  # the server side of the handshake, finishing
        assert node.handshakes == 1  # it was reached, and TLS did complete...
        assert node.received == b""  # ...but nothing was sent over it
        assert pool.stats.pin_mismatches == 1 and pool.stats.connects == 0
    assert any(
        "n-1" in r.message and served.pin in r.message and published.pin in r.message
        for r in caplog.records
    )


async def test_a_new_pin_for_the_same_address_gets_a_fresh_connection(tmp_path: Path) -> None:
    first, second = _cert(tmp_path, "first"), _cert(tmp_path, "second")
    async with serving(FakeNode(first)) as node:
        records = {NodeId("n-1"): _record(node.url, first.pin)}
        pool = _pool(records)
        conn = await pool.acquire(node.url, node_id="n-1")
        await _exchange(conn)
        assert pool.release(conn)
        # The node restarts with a new certificate at the same address and re-registers.
        node.cert = second
        records[NodeId("n-1")] = _record(node.url, second.pin)
        renewed = await pool.acquire(node.url, node_id="n-1")
        assert renewed is not conn and not renewed.reused
        assert renewed.tls_pin == second.pin
        assert await _exchange(renewed) == ANSWER
        assert pool.stats.connects == 2 and pool.stats.reuses == 0
        await renewed.stream.aclose()
        await pool.aclose()


async def test_an_https_node_without_a_pin_is_not_dialled(tmp_path: Path) -> None:
    async with serving(FakeNode(_cert(tmp_path, "a"))) as node:
        for records in ({}, {NodeId("n-1"): _record(node.url, None)}):
            with pytest.raises(NodeUnavailable, match="no TLS certificate pin"):
                await _pool(records).acquire(node.url, node_id="n-1")
        # A record for another URL (the node moved since the lookup) is no pin either.
        moved = {NodeId("n-1"): _record("https://127.0.0.1:1", _cert(tmp_path, "b").pin)}
        with pytest.raises(NodeUnavailable, match="no TLS certificate pin"):
            await _pool(moved).acquire(node.url, node_id="n-1")
        assert node.accepted == 0


async def test_an_idle_tls_connection_the_node_closed_is_dropped_not_reused(
    tmp_path: Path,
) -> None:
    cert = _cert(tmp_path, "a")
    async with serving(FakeNode(cert, close_after_answer=True)) as node:
        pool = _pool({NodeId("n-1"): _record(node.url, cert.pin)})
        conn = await pool.acquire(node.url, node_id="n-1")
        await _exchange(conn)
        assert pool.release(conn)
        with trio.fail_after(5):
            # The node's close must have reached our socket: the pool's check is a poll.
            while not _readable(conn):
                await trio.sleep(0.01)
        fresh = await pool.acquire(node.url, node_id="n-1")
        assert fresh is not conn
        assert pool.stats.stale_dropped == 1 and pool.stats.connects == 2
        assert await _exchange(fresh) == ANSWER
        await fresh.stream.aclose()


def _readable(conn: NodeConn) -> bool:
    stream = conn.stream.stream
    assert isinstance(stream, SocketTLSStream)
    return bool(select.select([stream.socket.fileno()], [], [], 0)[0])


@pytest.mark.parametrize(
    ("policy", "node_region", "refused"),
    [
        (NodeTlsPolicy.NEVER, "lax", False),
        (NodeTlsPolicy.OTHER_REGIONS, "fra", False),
        (NodeTlsPolicy.OTHER_REGIONS, "lax", True),
        (NodeTlsPolicy.ALWAYS, "fra", True),
    ],
)
async def test_require_tls_refuses_plain_nodes_it_covers_before_connecting(
    policy: NodeTlsPolicy, node_region: str, refused: bool
) -> None:
    async with serving(FakeNode(None)) as node:
        pool = _pool({NodeId("n-1"): _record(node.url, None, node_region)}, policy)
        if refused:
            with pytest.raises(NodeUnavailable, match=r"plain http.*require_tls"):
                await pool.acquire(node.url, node_id="n-1")
            assert node.accepted == 0
        else:
            conn = await pool.acquire(node.url, node_id="n-1")
            assert conn.tls_pin is None
            assert await _exchange(conn) == ANSWER
            await conn.stream.aclose()


async def test_require_tls_refuses_a_plain_node_of_unknown_region() -> None:
    async with serving(FakeNode(None)) as node:
        with pytest.raises(NodeUnavailable, match="region unknown"):
            await _pool({}, NodeTlsPolicy.OTHER_REGIONS).acquire(node.url, node_id="n-1")
        assert node.accepted == 0
