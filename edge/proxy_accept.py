"""A listener's PROXY protocol policy, applied to each accepted socket before TLS, HTTP or SSH.

The header is read off the socket with MSG_PEEK and then taken with recv()
of exactly its length, so not one byte of the client's own is read: the
socket handed on is as accepted, minus the header, and TLS (plumbing/tls.py)
and asyncssh drive it themselves with no extra copy. Until the first bytes
say whether a header is there at all, nothing is taken, so an `optional`
listener loses nothing of a client that sends none. When they are a strict
prefix of a signature ("PRO"), SO_RCVLOWAT makes the socket readable only once
enough bytes have arrived to decide (or at EOF), instead of peeking in a loop.

What the policy does (docs/proxy-protocol.md):

| mode     | peer in proxy_protocol_from   | any other peer              |
| -------- | ----------------------------- | --------------------------- |
| off      | nothing is read               | nothing is read             |
| optional | header used if sent           | closed if it sends a header |
| required | closed without a header       | closed at once              |

A header that says LOCAL or UNKNOWN (a balancer's health check) keeps the
socket's address. Every refusal is one access-log line, its reason fixed text.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from enum import Enum

import trio

from edge.config import ProxyMode, ProxyProtocol
from edge.proto.proxy_header import (
    V2_MAX_SIZE,
    ProxyHeader,
    ProxyHeaderError,
    Signature,
    decided_at,
    parse_proxy_header,
    signature,
)
from plumbing.listen import client_ip
from plumbing.logsafe import printable

log = logging.getLogger("edge.access")

ClientHandler = Callable[[trio.SocketStream, str], Awaitable[None]]


class NoHeader(Enum):
    ABSENT = "absent"
    """The client's first bytes are not a PROXY header (nothing of them was taken)."""
    CLOSED = "closed"
    """The peer closed before sending a byte."""


class HeaderTaker:
    """Takes one PROXY header off a socket; `taken` says whether any byte is gone."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock
        self.taken = b""

    async def take(self) -> ProxyHeader | NoHeader:
        sock = self._sock
        while True:
            peeked = await sock.recv(V2_MAX_SIZE - len(self.taken), socket.MSG_PEEK)
            if not peeked:
                if self.taken:
                    raise ProxyHeaderError("connection closed inside the PROXY header")
                return NoHeader.CLOSED
            if not self.taken:
                kind = signature(peeked)
                if kind is Signature.NOT_PROXY:
                    return NoHeader.ABSENT
                if kind is Signature.UNDECIDED:
                    if not await self._decided(decided_at(peeked)):
                        return NoHeader.ABSENT  # closed on a prefix: the protocol sees EOF
                    continue
            # The signature is there: every byte from here on is the header's until it ends.
            header = parse_proxy_header(self.taken + peeked)
            if header is not None:
                await self._recv_exactly(header.size - len(self.taken))
                return header
            self.taken += await self._recv_exactly(len(peeked))

    async def _decided(self, wanted: int) -> bool:
        """Wait until `wanted` bytes are buffered (or EOF); whether they begin a header."""
        sock = self._sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, wanted)
        try:
            await trio.lowlevel.wait_readable(sock)
        finally:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        peeked = await sock.recv(wanted, socket.MSG_PEEK)
        return signature(peeked) is Signature.PROXY

    async def _recv_exactly(self, count: int) -> bytes:
        # The peek showed these bytes buffered: one recv returns them all.
        data = await self._sock.recv(count)
        if len(data) != count:
            raise ProxyHeaderError("connection closed inside the PROXY header")
        return data


async def client_address(
    stream: trio.SocketStream, policy: ProxyProtocol, front: str
) -> str | None:
    """The client's address under `policy`; None: refused (logged once), the caller closes."""
    try:
        peer = client_ip(stream.socket.getpeername()[0])
    except OSError:  # reset between accept and here (ENOTCONN): nothing to serve
        return None
    if policy.mode is ProxyMode.OFF:
        return peer
    trusted = policy.trusts(peer)
    if policy.mode is ProxyMode.REQUIRED and not trusted:
        _refused(front, peer, "PROXY header required, peer not in proxy_protocol_from")
        return None
    taker = HeaderTaker(stream.socket)
    try:
        with trio.fail_after(policy.timeout):
            got = await taker.take()
    except trio.TooSlowError:
        if policy.mode is ProxyMode.OPTIONAL and not taker.taken:
            # A client that waits for the server to speak first (SSH may): no header.
            return peer
        _refused(front, peer, f"no PROXY header within {policy.timeout:g}s")
        return None
    except ProxyHeaderError as exc:
        _refused(front, peer, f"bad PROXY header: {exc.message}")
        return None
    except OSError as exc:
        log.debug("%s %s: connection ended before its PROXY header: %r", front, peer, exc)
        return None
    if got is NoHeader.CLOSED:
        log.debug("%s %s: closed before sending a byte", front, peer)
        return None
    if got is NoHeader.ABSENT:
        if policy.mode is ProxyMode.REQUIRED:
            _refused(front, peer, "no PROXY header")
            return None
        return peer
    if not trusted:
        _refused(front, peer, "PROXY header from a peer not in proxy_protocol_from")
        return None
    return client_ip(got.source[0]) if got.source is not None else peer


def _refused(front: str, peer: str, why: str) -> None:
    log.info("%s %s - connection closed: %s", front, peer, printable(why))


def with_client_address(
    policy: ProxyProtocol, front: str, handler: ClientHandler
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """A `trio.serve_listeners` handler: `handler(stream, client_ip)`, or the stream closed."""

    async def serve(stream: trio.SocketStream) -> None:
        try:
            address = await client_address(stream, policy, front)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        if address is None:
            await trio.aclose_forcefully(stream)
            return
        await handler(stream, address)

    return serve
