"""TCP relays for the PROXY protocol tests: what a load balancer in TCP mode does.

`HeaderRelay` listens on loopback; for each client it connects to the target
from a chosen source address (127.0.0.2 plays the balancer), writes a PROXY
header, and copies bytes both ways. With no header it is a tap that keeps what
went upstream (the edge's requests to a node). Run as a script it is an SSH
ProxyCommand: stdin/stdout instead of a listening socket.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
from collections.abc import Callable


def _pump(
    read: Callable[[int], bytes], write: Callable[[bytes], object], done: Callable[[], None]
) -> None:
    try:
        while data := read(65536):
            write(data)
    except OSError:
        pass
    finally:
        done()


def _connect(target: tuple[str, int], source: str) -> socket.socket:
    upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    upstream.bind((source, 0))
    upstream.connect(target)
    return upstream


class HeaderRelay:
    def __init__(
        self, target: tuple[str, int], header: bytes = b"", source: str = "127.0.0.2"
    ) -> None:
        self.target, self.header, self.source = target, header, source
        self.upstream_bytes = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = _connect(self.target, self.source)
            upstream.sendall(self.header)
            self._open += [client, upstream]

            def up(data: bytes, upstream: socket.socket = upstream) -> None:
                with self._lock:
                    self.upstream_bytes += data
                upstream.sendall(data)

            for read, write, sock in (
                (client.recv, up, upstream),
                (upstream.recv, client.sendall, client),
            ):
                threading.Thread(
                    target=_pump, args=(read, write, lambda s=sock: _half_close(s)), daemon=True
                ).start()

    def close(self) -> None:
        self._listener.close()
        for sock in self._open:
            sock.close()


def _half_close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)


def main() -> None:
    """ProxyCommand: `proxy_relay.py --header-hex H --source S host port`."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--header-hex", default="")
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    upstream = _connect((args.host, args.port), args.source)
    upstream.sendall(bytes.fromhex(args.header_hex))
    stdin, stdout = sys.stdin.buffer.fileno(), sys.stdout.buffer.fileno()
    down = threading.Thread(
        target=_pump,
        args=(upstream.recv, lambda d: os.write(stdout, d), lambda: os.close(stdout)),
    )
    down.start()
    _pump(lambda n: os.read(stdin, n), upstream.sendall, lambda: _half_close(upstream))
    down.join()


if __name__ == "__main__":
    main()
