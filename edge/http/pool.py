"""Pooled keep-alive HTTP/1.1 connections from the edge to the nodes.

A warm connection saves a TCP handshake per git request, which across regions
is a whole round trip. Idle connections are dropped after `idle_timeout`,
which must stay below the node's own keep-alive timeout (75 s by default) so
the edge is the side that closes (see DESIGN.md, "Pooled keep-alive").
"""

from __future__ import annotations

import select
import socket
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from edge.errors import NodeUnavailable
from edge.http.stream import BufferedStream


@dataclass
class NodeConn:
    address: tuple[str, int]
    stream: BufferedStream
    auth_line: bytes = b""
    """The header line that authenticates the edge to the node (node/auth.py)."""
    reused: bool = False
    idle_since: float = 0.0

    @property
    def host_header(self) -> bytes:
        host, port = self.address
        return f"{host}:{port}".encode()


@dataclass
class PoolStats:
    connects: int = 0
    reuses: int = 0
    stale_dropped: int = 0


def parse_node_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"node URL must be http://host:port, got {url!r}")
    return parts.hostname, parts.port or 80


class NodePool:
    def __init__(
        self,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int,
        *,
        dial: Mapping[str, tuple[str, int]] | None = None,
        credential: str = "",
    ) -> None:
        """`dial`: node id -> the address to connect to instead of its URL's (`[nodes.dial]`).

        `credential`: the secret every request to a node carries (`[nodes] admin_secret`).
        """
        self._auth_line = b"authorization: Bearer " + credential.encode() if credential else b""
        self._connect_timeout = connect_timeout
        self._dial = dict(dial or {})
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
        self._idle: dict[tuple[str, int], list[NodeConn]] = defaultdict(list)
        self._addresses: dict[str, tuple[str, int]] = {}
        self.stats = PoolStats()

    def address(self, node_url: str, node_id: str | None = None) -> tuple[str, int]:
        if node_id is not None and (override := self._dial.get(node_id)) is not None:
            return override
        found = self._addresses.get(node_url)
        if found is None:
            found = self._addresses[node_url] = parse_node_url(node_url)
        return found

    async def acquire(
        self, node_url: str, fresh: bool = False, *, node_id: str | None = None
    ) -> NodeConn:
        """A connection to the node: a live idle one, else a new one (NodeUnavailable).

        With `node_id` given and a dial override for it, that address is dialled.
        """
        address = self.address(node_url, node_id)
        idle = self._idle[address]
        now = trio.current_time()
        while idle and not fresh:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_timeout and _still_open(conn):
                conn.reused = True
                self.stats.reuses += 1
                return conn
            self.stats.stale_dropped += 1
            await conn.stream.aclose()
        try:
            with trio.fail_after(self._connect_timeout):
                stream = await trio.open_tcp_stream(*address)
        except (OSError, trio.TooSlowError) as exc:
            via = f" (nodes.dial.{node_id}.http)" if node_id in self._dial else ""
            raise NodeUnavailable(
                f"connect to node {address[0]}:{address[1]}{via}: {exc!r}"
            ) from None
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.stats.connects += 1
        return NodeConn(address, BufferedStream(stream), self._auth_line)

    def release(self, conn: NodeConn) -> bool:
        """Keep a connection whose last exchange ended cleanly; False if dropped."""
        idle = self._idle[conn.address]
        if len(idle) >= self._max_idle or conn.stream.pending:
            return False
        conn.idle_since = trio.current_time()
        idle.append(conn)
        return True

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                await conn.stream.aclose()
        self._idle.clear()


def _still_open(conn: NodeConn) -> bool:
    """Has the node closed (or written to) this idle connection since its last answer?

    An idle connection has nothing to read; readable means EOF, a reset or
    stray bytes, and either way it cannot carry another request.
    """
    stream = conn.stream.stream
    if not isinstance(stream, trio.SocketStream):
        return True
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN)
    return not poller.poll(0)
