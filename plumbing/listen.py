"""Listening TCP sockets, made here so that `[::]` accepts IPv4 clients too.

trio's `open_tcp_listeners` and asyncio's `create_server` (so asyncssh) both
set IPV6_V6ONLY on every IPv6 socket: `listen = "[::]:443"` then takes IPv6
clients only, and `git clone https://127.0.0.1/...` cannot connect. Here the
wildcard `::` gets one dual-stack socket (IPV6_V6ONLY cleared, RFC 3493 5.3):
IPv4 clients arrive on it as v4-mapped addresses (`::ffff:192.0.2.1`), which
`client_ip` turns back into `192.0.2.1` for logs, trusted-proxy checks and
X-Forwarded-For. Every other IPv6 address is bound IPv6-only, as trio does, so
that `["0.0.0.0:443", "[::1]:443"]` is two sockets that do not collide.

On a host without IPv6 (the kernel refuses AF_INET6), `::` falls back to
`0.0.0.0`: the same "every address" meaning, with the family there is.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

import trio

BACKLOG = 1024


def bind_listeners(host: str, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Listening, non-blocking sockets for one `host:port` (a name may give several)."""
    if host == "::":
        try:
            return [_listen(socket.AF_INET6, ("::", port), backlog, v6only=False)]
        except OSError as exc:
            if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            host = "0.0.0.0"
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, _, _, _, sockaddr in dict.fromkeys(infos):
            sockets.append(_listen(family, sockaddr, backlog, v6only=True))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def open_trio_listeners(host: str, port: int) -> list[trio.SocketListener]:
    """bind_listeners' sockets as trio listeners (trio.open_tcp_listeners sets V6ONLY)."""
    return [
        trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        for sock in bind_listeners(host, port)
    ]


def _listen(family: int, sockaddr: tuple[Any, ...], backlog: int, v6only: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(sockaddr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def client_ip(address: str) -> str:
    """A peer's address as logs and access rules want it: v4-mapped IPv6 unmapped."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return address


def address_text(sockname: tuple[object, ...]) -> str:
    """`host:port`, the host in brackets when it is IPv6."""
    host, port = str(sockname[0]), sockname[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
