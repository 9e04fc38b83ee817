"""A small real web frontend for the web tests: h11 over threads on a free loopback port.

`GET /big?bytes=N` streams N bytes (N at most 1 GiB) in 256 KiB writes; any other
request is answered with JSON echoing its method, target, headers and body size
(the body is read and counted, and its SHA-256 given, not kept). The echo names
the upstream (`WebUpstream(name)`); a request carrying `x-replay-from-<name>: V`
is answered by the upstream of that name with a `gitedge-replay: V` header (replay).
"""

from __future__ import annotations

import hashlib
import json
import socket
import socketserver
import threading
from types import TracebackType
from urllib.parse import parse_qs, urlsplit

import h11

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


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class WebUpstream:
    """Started on entry, shut down (its threads too) on exit."""

    def __init__(self, name: str = "web") -> None:
        self.name = name
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.name = name  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> WebUpstream:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def unused_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
