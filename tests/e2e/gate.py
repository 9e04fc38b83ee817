"""A TCP relay that holds one direction after some bytes: an operation "in flight" on cue.

A git client dialled through `GatedRelay` runs normally until `hold_after`
bytes have passed in the held direction ("up": client to server, a push's
pack; "down": server to client, a clone's pack); then that direction stops
being read, so the client (or the server) blocks on a full socket, with the
operation half done, for as long as the test likes. `release()` lets it run on.
The relay is transparent to TLS and SSH: it only copies bytes.

Blocking threads on purpose (the tests drive git with subprocess). Every
thread ends when `close()` closes the sockets; a hold gives up after
`HOLD_LIMIT` so that nothing waits forever.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType
from typing import Literal

HOLD_LIMIT = 60.0
CHUNK = 65536

Direction = Literal["up", "down"]


class GatedRelay:
    def __init__(self, target: tuple[str, int], *, hold: Direction, hold_after: int) -> None:
        self._target = target
        self._hold = hold
        self._hold_after = hold_after
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.bytes = {"up": 0, "down": 0}
        self.held = threading.Event()
        """Set once the held direction has stopped (the operation is half done)."""
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._start(self._accept_loop)

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._closed = True
        self._released.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> GatedRelay:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=10)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, server]
            self._start(self._pump, client, server, "up")
            self._start(self._pump, server, client, "down")

    def _pump(self, src: socket.socket, dst: socket.socket, direction: Direction) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
                with self._lock:
                    self.bytes[direction] += len(data)
                    total = self.bytes[direction]
                holding = direction == self._hold and total >= self._hold_after
                if holding and not self._released.is_set():
                    self.held.set()
                    self._released.wait(HOLD_LIMIT)
        except OSError:
            # One side reset or closed (a killed process, close()): end both.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
