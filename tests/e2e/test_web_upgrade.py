"""WebSocket through the edge (docs/web.md, Upgrades): a real websockets echo
server as the web upstream, a real websockets client over the edge's HTTPS."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.http11 import Request, Response
from websockets.sync.client import ClientConnection, connect
from websockets.sync.server import ServerConnection, serve

from devnet.network import Devnet, start_devnet
from tests.e2e.conftest import tls


def _echo(ws: ServerConnection) -> None:
    """Echoes every message; "bye" closes cleanly, "drop" cuts the TCP connection."""
    try:
        for message in ws:
            if message == "bye":
                ws.close()
                return
            if message == "drop":
                ws.socket.shutdown(socket.SHUT_RDWR)
                ws.socket.close()
                return
            ws.send(message)
    except ConnectionClosed:
        return


def _refuse(ws: ServerConnection, request: Request) -> Response | None:
    """`/forbidden` is answered 403 instead of switching protocols."""
    if request.path == "/forbidden":
        return ws.respond(403, "no sockets here\n")
    return None


@pytest.fixture(scope="module")
def ws_upstream() -> Iterator[str]:
    with serve(_echo, "127.0.0.1", 0, process_request=_refuse) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.shutdown()
            thread.join(10)


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


def test_an_upgrade_answered_without_101_is_relayed_as_a_response(ws_net: Devnet) -> None:
    with pytest.raises(InvalidStatus) as refused:
        _connect(ws_net, "/forbidden")
    response = refused.value.response
    assert response.status_code == 403
    assert response.body == b"no sockets here\n"
