"""A small real web frontend for the web tests: h11 over threads on a free loopback port.

`GET /big?bytes=N` streams N bytes (N at most 1 GiB) in 256 KiB writes.
`GET /events?count=N&every=S` is a server-sent event stream (chunked): N events
(`data: 1`, `data: 2`, …), the first at once, then one every S seconds, and the end;
with `&gate=1` the second and later wait for `WebUpstream.gate` instead (30 s at
most, then `data: gate timed out`), so a test can hold the stream.
`GET /poll?wait=S` is a long poll: the echo below, S seconds after the request. Any other
request is answered with JSON echoing its method, target, headers and body size
(the body is read and counted, and its SHA-256 given, not kept). The echo names
the upstream (`WebUpstream(name)`); a request carrying `x-replay-from-<name>: V`
is answered by the upstream of that name with a `gitedge-replay: V` header (replay).

`WebSocketEcho` is a real `websockets` echo server, the upstream of the upgrade tests.
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

import h11
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve

PIECE = 256 * 1024


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn = h11.Connection(h11.SERVER)
        sock: socket.socket = self.request
        sock.settimeout(30)
        try:
            while self._one(conn, sock):
                conn.start_next_cycle()
        except (OSError, h11.ProtocolError):
            return

    def _next(self, conn: h11.Connection, sock: socket.socket) -> object:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
                continue
            return event

    def _one(self, conn: h11.Connection, sock: socket.socket) -> bool:
        request = self._next(conn, sock)
        if not isinstance(request, h11.Request):
            return False
        received = 0
        digest = hashlib.sha256()
        while not isinstance(event := self._next(conn, sock), h11.EndOfMessage):
            if isinstance(event, h11.Data):
                received += len(event.data)
                digest.update(event.data)
            elif isinstance(event, h11.ConnectionClosed):
                return False
        name: str = self.server.name  # type: ignore[attr-defined]
        target = request.target.decode()
        parts = urlsplit(target)
        if parts.path == "/events":
            return self._events(conn, sock, parse_qs(parts.query))
        if parts.path == "/poll":
            time.sleep(float(parse_qs(parts.query)["wait"][0]))
        if parts.path == "/big":
            size = min(int(parse_qs(parts.query)["bytes"][0]), 2**30)
            head = h11.Response(
                status_code=200,
                headers=[
                    ("content-length", str(size)),
                    ("content-type", "application/octet-stream"),
                ],
            )
            sock.sendall(conn.send(head) or b"")
            piece = b"x" * PIECE
            left = size
            while left:
                data = piece[: min(left, PIECE)]
                sock.sendall(conn.send(h11.Data(data=data)) or b"")
                left -= len(data)
            sock.sendall(conn.send(h11.EndOfMessage()) or b"")
            return conn.our_state is h11.DONE and conn.their_state is h11.DONE
        body = json.dumps(
            {
                "method": request.method.decode(),
                "target": target,
                "headers": [[k.decode(), v.decode()] for k, v in request.headers],
                "received": received,
                "sha256": digest.hexdigest(),
                "upstream": name,
            }
        ).encode()
        extra: list[tuple[bytes, bytes]] = []
        for key, value in request.headers:
            if key == b"x-replay-from-" + name.encode():
                extra.append((b"gitedge-replay", value))
        head = h11.Response(
            status_code=200,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        )
        sock.sendall((conn.send(head) or b"") + (conn.send(h11.Data(data=body)) or b""))
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")
        return True

    def _events(
        self, conn: h11.Connection, sock: socket.socket, query: dict[str, list[str]]
    ) -> bool:
        count = int(query["count"][0])
        every = float(query.get("every", ["0"])[0])
        gate: threading.Event | None = self.server.gate if "gate" in query else None  # type: ignore[attr-defined]
        head = h11.Response(
            status_code=200,
            headers=[("content-type", "text/event-stream"), ("cache-control", "no-cache")],
        )
        sock.sendall(conn.send(head) or b"")  # h11 frames it chunked
        for n in range(1, count + 1):
            data = f"data: {n}"
            if n > 1 and gate is not None:
                data = data if gate.wait(30) else "data: gate timed out"
            elif n > 1:
                time.sleep(every)
            sock.sendall(conn.send(h11.Data(data=f"{data}\n\n".encode())) or b"")
        sock.sendall(conn.send(h11.EndOfMessage()) or b"")
        return True


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _ServedInThread:
    """A blocking server: `serve_forever` in a thread from entry, `_stop` on exit."""

    _thread: threading.Thread

    def _serve(self, serve_forever: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=serve_forever, daemon=True)

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()
        self._thread.join(10)


class WebUpstream(_ServedInThread):
    """Started on entry, shut down (its threads too) on exit."""

    def __init__(self, name: str = "web") -> None:
        self.name = name
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.name = name  # type: ignore[attr-defined]
        self.gate = threading.Event()
        """Opens the held events of `/events?gate=1` streams (see above)."""
        self._server.gate = self.gate  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._serve(self._server.serve_forever)

    def _stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class WebSocketEcho(_ServedInThread):
    """A websockets echo server (see `_echo`) on a free loopback port, while entered."""

    def __init__(self) -> None:
        self._server = serve(_echo, "127.0.0.1", 0, process_request=_refuse)
        self.url = f"http://127.0.0.1:{self._server.socket.getsockname()[1]}"
        self._serve(self._server.serve_forever)

    def _stop(self) -> None:
        self._server.shutdown()
