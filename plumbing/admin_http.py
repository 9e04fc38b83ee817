"""The admin listener: `GET /metrics` in Prometheus' text format, for edges and nodes.

One request per connection, answered and closed (`connection: close`): a scraper
asks every 15 s or so, and a keep-alive loop would be code to get wrong for no
gain. Every read has a deadline, a head is capped, and the handler nursery is
the caller's, so that a drain stops the listener with the others.
"""

from __future__ import annotations

import logging
from functools import partial

import h11
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from plumbing.listen import address_text, open_trio_listeners

log = logging.getLogger(__name__)

READ_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
MAX_HEAD = 8192
CHUNK = 16384


def open_admin_listeners(addresses: tuple[tuple[str, int], ...]) -> list[trio.SocketListener]:
    opened: list[trio.SocketListener] = []
    try:
        for host, port in addresses:
            opened += open_trio_listeners(host, port)
    except BaseException:
        for done in opened:
            done.socket.close()
        raise
    return opened


def admin_addresses(listeners: list[trio.SocketListener]) -> list[str]:
    return [address_text(listener.socket.getsockname()) for listener in listeners]


async def serve_admin(
    listeners: list[trio.SocketListener],
    registry: CollectorRegistry,
    handlers: trio.Nursery | None = None,
) -> None:
    """Serve `/metrics` from `registry` on `listeners` until cancelled."""
    await trio.serve_listeners(partial(_serve_one, registry), listeners, handler_nursery=handlers)


async def _serve_one(registry: CollectorRegistry, stream: trio.SocketStream) -> None:
    try:
        request = None
        with trio.move_on_after(READ_TIMEOUT):
            request = await _read_request(stream)
        if request is None:
            return
        status, body, content_type = _answer(request, registry)
        head = (
            f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
            f"content-type: {content_type}\r\n"
            f"content-length: {len(body)}\r\n"
            "connection: close\r\n\r\n"
        ).encode()
        data = head if request.method == b"HEAD" else head + body
        with trio.move_on_after(WRITE_TIMEOUT):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        log.debug("admin connection ended: %r", exc)
    finally:
        await trio.aclose_forcefully(stream)


async def _read_request(stream: trio.SocketStream) -> h11.Request | None:
    """The request head; None on EOF, a malformed head or one over MAX_HEAD."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return None
        if isinstance(event, h11.Request):
            return event
        if event is not h11.NEED_DATA:
            return None
        data = await stream.receive_some(CHUNK)
        if not data:
            return None
        try:
            conn.receive_data(data)
        except h11.RemoteProtocolError:
            return None


_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}
_TEXT = "text/plain; charset=utf-8"


def _answer(request: h11.Request, registry: CollectorRegistry) -> tuple[int, bytes, str]:
    path = request.target.split(b"?", 1)[0]
    if path != b"/metrics":
        return 404, b"not found\n", _TEXT
    if request.method not in (b"GET", b"HEAD"):
        return 405, b"method not allowed\n", _TEXT
    # The collectors read the live counters now, in this thread: one source of numbers.
    return 200, generate_latest(registry), CONTENT_TYPE_LATEST
