"""Pooled keep-alive HTTP/1.1 connections from the edge to the nodes.

A warm connection saves a TCP handshake per git request, which across regions
is a whole round trip. Idle connections are dropped after `idle_timeout`,
which must stay below the node's own keep-alive timeout (75 s by default) so
the edge is the side that closes (see DESIGN.md, "Pooled keep-alive").

A node whose URL is https is dialled with TLS and trusted by one thing: the
SHA-256 of its certificate as the node published it in its etcd record
(`NodeRecord.tls_cert_sha256`). No CA, no host name, no trust on first use:
a node whose certificate differs is refused before any byte of a request is
sent. The idle pool is keyed by address and pin, so a node that re-registers
with a new certificate is dialled afresh. `[nodes] require_tls` says which
nodes may not be reached over plain http at all (edge/config.py).
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from edge.config import NodeTlsPolicy
from edge.errors import NodeUnavailable
from edge.http.stream import BufferedStream
from plumbing.tcp import enable_keepalive
from plumbing.tls import SocketTLSStream
from plumbing.tlscerts import cert_sha256
from routing.model import NodeId, NodeRecord

log = logging.getLogger(__name__)

Address = tuple[str, int]
NodeLookup = Callable[[NodeId], NodeRecord | None]
"""A node's live record by id: the routing cache's `nodes.get`."""


@dataclass
class NodeConn:
    address: tuple[str, int]
    stream: BufferedStream
    auth_line: bytes = b""
    """The header line that authenticates the edge to the node (node/auth.py)."""
    reused: bool = False
    idle_since: float = 0.0
    tls_pin: str | None = None
    """The certificate SHA-256 this connection was verified against; None: plain http."""

    @property
    def host_header(self) -> bytes:
        host, port = self.address
        return f"{host}:{port}".encode()


@dataclass
class PoolStats:
    connects: int = 0
    reuses: int = 0
    stale_dropped: int = 0
    tls_connects: int = 0
    pin_mismatches: int = 0


def parse_node_url(url: str) -> tuple[bool, Address]:
    """(whether it is https, (host, port)) of a node's URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"node URL must be http(s)://host:port, got {url!r}")
    tls = parts.scheme == "https"
    return tls, (parts.hostname, parts.port or (443 if tls else 80))


def node_tls_context() -> ssl.SSLContext:
    """The client context for TLS nodes; the pin check after the handshake is the trust.

    OpenSSL still checks, without CERT_REQUIRED, that the node signed the
    handshake with the key of the certificate it sent, which is what makes a
    matching certificate hash prove the node's identity.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class NodePool:
    def __init__(
        self,
        connect_timeout: float,
        idle_timeout: float,
        max_idle: int,
        *,
        dial: Mapping[str, Address] | None = None,
        credential: str = "",
        nodes: NodeLookup | None = None,
        region: str = "",
        require_tls: NodeTlsPolicy = NodeTlsPolicy.NEVER,
    ) -> None:
        """`dial`: node id -> the address to connect to instead of its URL's (`[nodes.dial]`).

        `credential`: the secret every request to a node carries (`[nodes] admin_secret`).
        `nodes`: where TLS pins and node regions come from; without it no https
        node can be verified, so none is used. `region` (this edge's) and
        `require_tls`: which plain-http nodes to refuse (`[nodes] require_tls`).
        """
        self._auth_line = b"authorization: Bearer " + credential.encode() if credential else b""
        self._connect_timeout = connect_timeout
        self._dial = dict(dial or {})
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
        self._nodes = nodes
        self._region = region
        self._require_tls = require_tls
        self._tls_context = node_tls_context()
        self._idle: dict[tuple[Address, str | None], list[NodeConn]] = defaultdict(list)
        self._urls: dict[str, tuple[bool, Address]] = {}
        self.stats = PoolStats()

    def _parsed(self, node_url: str) -> tuple[bool, Address]:
        found = self._urls.get(node_url)
        if found is None:
            found = self._urls[node_url] = parse_node_url(node_url)
        return found

    def address(self, node_url: str, node_id: str | None = None) -> Address:
        if node_id is not None and (override := self._dial.get(node_id)) is not None:
            return override
        return self._parsed(node_url)[1]

    def _tls_pin(self, node_url: str, node_id: str | None) -> str | None:
        """The certificate pin to dial `node_url` with; None for plain http.

        Raises NodeUnavailable for an https node with no pin in etcd, and for a
        plain one that `require_tls` refuses.
        """
        tls = self._parsed(node_url)[0]
        record = self._nodes(NodeId(node_id)) if self._nodes and node_id else None
        if record is not None and record.http_url != node_url:
            record = None  # re-registered elsewhere since the caller looked: not this URL's pin
        name = node_id or node_url
        if tls:
            if record is None or not record.tls_cert_sha256:
                raise NodeUnavailable(f"node {name}: https URL but no TLS certificate pin in etcd")
            return record.tls_cert_sha256
        if self._require_tls is not NodeTlsPolicy.NEVER:
            region = record.region if record is not None else None
            if region is None or self._require_tls.requires_tls(self._region, region):
                detail = (
                    f"node {name} (region {region or 'unknown'}) serves plain http, and"
                    f" [nodes] require_tls = {self._require_tls.value!r} in region"
                    f" {self._region}: refused"
                )
                log.warning("%s", detail)
                raise NodeUnavailable(detail)
        return None

    async def acquire(
        self, node_url: str, fresh: bool = False, *, node_id: str | None = None
    ) -> NodeConn:
        """A connection to the node: a live idle one, else a new one (NodeUnavailable).

        With `node_id` given and a dial override for it, that address is dialled.
        An https node is verified against its pin (see the module doc).
        """
        address = self.address(node_url, node_id)
        pin = self._tls_pin(node_url, node_id)
        idle = self._idle[address, pin]
        now = trio.current_time()
        while idle and not fresh:
            conn = idle.pop()
            if now - conn.idle_since < self._idle_timeout and _still_open(conn):
                conn.reused = True
                self.stats.reuses += 1
                return conn
            self.stats.stale_dropped += 1
            await conn.stream.aclose()
        where = f"{address[0]}:{address[1]}"
        if node_id in self._dial:
            where += f" (nodes.dial.{node_id}.http)"
        try:
            # One deadline for TCP and TLS: both are the node answering at all.
            with trio.fail_after(self._connect_timeout):
                stream = await self._dial_node(address, pin)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            raise NodeUnavailable(f"connect to node {where}: {exc!r}") from None
        if isinstance(stream, SocketTLSStream):
            await self._check_pin(stream, pin, node_id, where)
        self.stats.connects += 1
        return NodeConn(address, BufferedStream(stream), self._auth_line, tls_pin=pin)

    async def _dial_node(self, address: Address, pin: str | None) -> trio.abc.Stream:
        tcp = await trio.open_tcp_stream(*address)
        try:
            tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
            # A partition mid-session must not wait for the client's idle timeout.
            enable_keepalive(tcp)
            if pin is None:
                return tcp
            # Takes the fd over (closing tcp again is harmless).
            tls = SocketTLSStream(tcp, self._tls_context, server_side=False)
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        try:
            await tls.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tls)
            raise
        self.stats.tls_connects += 1
        return tls

    async def _check_pin(
        self, tls: SocketTLSStream, pin: str | None, node_id: str | None, where: str
    ) -> None:
        """Close and refuse a node whose certificate is not the one etcd has.

        Runs after the handshake and before the request: the impostor has seen
        a ClientHello and a Finished, and nothing of git or the credential.
        """
        served = cert_sha256(tls.socket.getpeercert(binary_form=True) or b"")
        if served == pin:
            return
        await trio.aclose_forcefully(tls)
        self.stats.pin_mismatches += 1
        detail = (
            f"node {node_id or '?'} at {where}: TLS certificate sha256 {served}"
            f" is not the pin in etcd ({pin}): refused, nothing sent"
        )
        log.warning("%s", detail)
        raise NodeUnavailable(detail)

    def release(self, conn: NodeConn) -> bool:
        """Keep a connection whose last exchange ended cleanly; False if dropped."""
        idle = self._idle[conn.address, conn.tls_pin]
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
    stray bytes, and either way it cannot carry another request. Over TLS the
    same holds for the socket (a close_notify or EOF; nodes send no session
    tickets, node/tls.py), and plaintext OpenSSL already decrypted is stray bytes.
    """
    stream = conn.stream.stream
    if isinstance(stream, SocketTLSStream):
        if stream.socket.pending():
            return False
        fd = stream.socket.fileno()
    elif isinstance(stream, trio.SocketStream):
        fd = stream.socket.fileno()
    else:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return not poller.poll(0)
