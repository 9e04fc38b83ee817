"""Per-listener and per-address connection caps at the HTTP(S) fronts' accept.

A connection over a cap is refused before any of it is parsed:
- HTTPS: closed at once, with no TLS handshake (a handshake costs more CPU than
  the refusal saves; the client sees the connection closed or reset);
- plain HTTP: one `503 Service Unavailable` with `connection: close` and
  `retry-after`, written without parsing the request, then closed once the
  client has closed too or after REFUSAL_WRITE_TIMEOUT.
The count covers a connection's whole life, TLS handshake included, from when
its client address is known (after a PROXY header, when the listener takes one).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from edge.proto.exchange import refusal
from plumbing.connlimit import ConnLimiter

log = logging.getLogger("edge.access")

REFUSAL_WRITE_TIMEOUT = 1.0
"""The most a refused HTTP connection may cost: the 503, then reading until the
client closes (LINGER_BYTES at most)."""
LINGER_BYTES = 64 * 1024
RETRY_AFTER = b"retry-after: 1\r\n"


def over_limit_answer(reason: str) -> bytes:
    """The plain-HTTP refusal: a 503 that closes, and says when to try again."""
    answer = refusal(503, f"too many connections: {reason}")
    head, sep, body = answer.partition(b"\r\n\r\n")
    return head + b"\r\n" + RETRY_AFTER.rstrip(b"\r\n") + sep + body


Handler = Callable[[trio.SocketStream, str], Awaitable[None]]


def admitted(limiter: ConnLimiter, scheme: str, handler: Handler) -> Handler:
    """A `(stream, client_ip)` handler that counts its connection in `limiter`, and
    refuses one over a cap; `handler(stream, client_ip)` serves the rest.

    `client_ip` is the client's address: the socket's, or its PROXY header's
    (edge/proxy_accept.with_client_address runs first), so a load balancer's
    clients are counted each at its own address.
    """

    async def serve(stream: trio.SocketStream, peer: str) -> None:
        refused = limiter.admit(peer)
        if refused is not None:
            log.info("%s - %s connection refused: %s", peer, scheme, refused.value)
            if scheme == "http":
                await _refuse_http(stream, refused.value)
            await trio.aclose_forcefully(stream)
            return
        try:
            await handler(stream, peer)
        finally:
            limiter.release(peer)

    return serve


async def _refuse_http(stream: trio.SocketStream, reason: str) -> None:
    """The 503, then a short lingering close: closing with the client's request
    still unread would send a reset, and a reset can destroy the 503 in the
    client's receive queue before it reads it (RFC 9112 9.6)."""
    with trio.move_on_after(REFUSAL_WRITE_TIMEOUT):
        try:
            await stream.send_all(over_limit_answer(reason))
            await stream.send_eof()
            budget = LINGER_BYTES
            while budget > 0 and (data := await stream.receive_some(budget)):
                budget -= len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
