"""WebSocket through the edge (docs/web.md, Upgrades): a real websockets echo
server as the web upstream, a real websockets client over the edge's HTTPS."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from devnet.network import Devnet, start_devnet
from tests.e2e.conftest import tls
from tests.e2e.web_upstream import WebSocketEcho


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[str]:
    with WebSocketEcho() as server:
        yield server.url


@pytest.fixture(scope="module")
def ws_net(tmp_path_factory: pytest.TempPathFactory, ws_upstream: str) -> Iterator[Devnet]:
    with start_devnet(
        tmp_path_factory.mktemp("webws"), ("fra",), lease_ttl=3, web_upstream=ws_upstream
    ) as network:
        yield network


def _connect(net: Devnet, path: str) -> ClientConnection:
    url = net.edge.https_url.replace("https://", "wss://", 1) + path
    return connect(url, ssl=tls(net), open_timeout=10, close_timeout=5)


def test_websocket_messages_echo_through_the_edge(ws_net: Devnet) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: many chunks of the tunnel, each way
    with _connect(ws_net, "/live/websocket?vsn=2.0.0") as ws:
        for text in ("hello", "héllo wörld", "x" * 70_000):
            ws.send(text)
            assert ws.recv(timeout=10) == text
        ws.send(big)
        assert ws.recv(timeout=10) == big
        ws.send("bye")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    assert ws.close_code == 1000  # the upstream's close frame came through


def test_the_tunnel_closes_when_the_upstream_drops(ws_net: Devnet) -> None:
    with _connect(ws_net, "/socket") as ws:
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        ws.send("drop")
        # No close frame: only the edge closing its side of the tunnel ends this.
        with pytest.raises(ConnectionClosedError):
            ws.recv(timeout=10)
        assert ws.protocol.close_rcvd is None


def test_an_idle_tunnel_is_closed_after_the_upgrade_idle_timeout(
    ws_net: Devnet, ws_upstream: str
) -> None:
    edge = ws_net.start_edge(
        "fra", ssh=False, web_upstream=ws_upstream, web_options="upgrade_idle_timeout = 1.0"
    )
    try:
        url = edge.https_url.replace("https://", "wss://", 1) + "/socket"
        with connect(url, ssl=tls(ws_net), open_timeout=10, close_timeout=5) as ws:
            ws.send("ping")
            assert ws.recv(timeout=10) == "ping"
            # Nothing moves either way: the edge ends the tunnel, without a close frame.
            with pytest.raises(ConnectionClosedError):
                ws.recv(timeout=30)
            assert ws.protocol.close_rcvd is None
    finally:
        edge.process.stop()


def test_a_busy_tunnel_is_closed_at_the_upgrade_total_timeout(
    ws_net: Devnet, ws_upstream: str
) -> None:
    edge = ws_net.start_edge(
        "fra", ssh=False, web_upstream=ws_upstream, web_options="upgrade_total_timeout = 2.0"
    )
    try:
        url = edge.https_url.replace("https://", "wss://", 1) + "/socket"
        started = time.monotonic()
        echoed = 0
        with connect(url, ssl=tls(ws_net), open_timeout=10, close_timeout=5) as ws:
            # A message every 0.1 s: never idle (upgrade_idle_timeout is 300 s), yet
            # the edge ends the tunnel 2 s after its 101, without a close frame.
            with pytest.raises(ConnectionClosedError):
                while time.monotonic() - started < 30:
                    ws.send("ping")
                    assert ws.recv(timeout=10) == "ping"
                    echoed += 1
                    time.sleep(0.1)
            assert ws.protocol.close_rcvd is None
        elapsed = time.monotonic() - started
        assert 2.0 <= elapsed < 15, elapsed
        assert echoed >= 5
    finally:
        edge.process.stop()


def test_an_upgrade_answered_without_101_is_relayed_as_a_response(ws_net: Devnet) -> None:
    with pytest.raises(InvalidStatus) as refused:
        _connect(ws_net, "/forbidden")
    response = refused.value.response
    assert response.status_code == 403
    assert response.body == b"no sockets here\n"
