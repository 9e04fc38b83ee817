"""One client connection: an `h11.Connection` over a trio stream, with deadlines.

h11 does all of HTTP/1.1 (framing, keep-alive, 100-continue); this class only
moves bytes and puts a deadline on every wait: `keepalive_timeout` for an idle
connection between requests, `head_timeout` for a request head once it has
begun (or for the first request), `io_timeout` for a body read or a send that
makes no progress.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from http import HTTPStatus

import h11
import trio

from gitproto.protocol import CHUNK

MAX_HEAD = 16 * 1024
HEAD_TIMEOUT = 30.0
# A stalled body transfer: no byte in either direction for this long is a dead peer.
IO_TIMEOUT = 60.0

Header = tuple[str, str]


def header(request: h11.Request, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case, as h11 gives names)."""
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class BodyTooLarge(Exception):
    """A request body beyond what the handler accepts (413)."""


class HttpConn:
    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        keepalive_timeout: float,
        head_timeout: float = HEAD_TIMEOUT,
        io_timeout: float = IO_TIMEOUT,
        idle_guard: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._keepalive_timeout = keepalive_timeout
        self._head_timeout = head_timeout
        self._io_timeout = io_timeout
        self._send_lock = trio.StrictFIFOLock()
        self._requests = 0
        self.method = b""
        # Around the wait for a request's first byte: a draining node cancels it.
        self._idle_guard = idle_guard
        self.closing = False
        """Set by a drain: the next response says `connection: close`."""
        self.received = 0
        self.sent = 0
        """Bytes read and written on this connection so far (for the git operation log)."""
        self._request_base = 0
        self.status = 0
        """The status of the last response sent."""

    # --- requests -----------------------------------------------------------------

    async def next_request(self) -> h11.Request | None:
        """The next request head; None if the client closed, idled out or stalled."""
        if self._requests:
            self.h11.start_next_cycle()
        # What already arrived of the next request (keep-alive) counts as its bytes.
        self._request_base = self.received - len(self.h11.trailing_data[0])
        if not self.h11.trailing_data[0]:
            first_wait = self._keepalive_timeout if self._requests else self._head_timeout
            with trio.move_on_after(first_wait), self._idle_guard():
                await self._receive()
            if not self.h11.trailing_data[0] and not self.h11.trailing_data[1]:
                return None  # idle
        with trio.move_on_after(self._head_timeout):
            while True:
                event = self.h11.next_event()  # may raise RemoteProtocolError
                if isinstance(event, h11.Request):
                    self._requests += 1
                    self.method = event.method
                    return event
                if event is h11.NEED_DATA:
                    await self._receive()
                    continue
                return None  # ConnectionClosed
        return None  # head not complete within head_timeout

    @property
    def request_received(self) -> int:
        """Bytes received since the current request's head began: head and body."""
        return self.received - self._request_base

    async def next_body_piece(self, timeout: float | None = None) -> bytes | None:
        """The next piece of the request body; None at its end.

        `timeout`: the longest wait for more of it (default `io_timeout`);
        `math.inf` for a body that may rightly pause for as long as its sender
        likes (an SSH session's stdin, whose liveness the edge watches).
        """
        while True:
            event = self.h11.next_event()
            if isinstance(event, h11.Data):
                return bytes(event.data)
            if isinstance(event, h11.EndOfMessage):
                return None
            if event is not h11.NEED_DATA:
                raise h11.RemoteProtocolError(f"unexpected {event!r} in a request body")
            if self.h11.they_are_waiting_for_100_continue:
                await self.send(h11.InformationalResponse(status_code=100, headers=[]))
            with trio.fail_after(self._io_timeout if timeout is None else timeout):
                await self._receive()

    async def read_body(self, limit: int) -> bytes:
        body = bytearray()
        while (piece := await self.next_body_piece()) is not None:
            body += piece
            if len(body) > limit:
                raise BodyTooLarge(f"request body larger than {limit} bytes")
        return bytes(body)

    def skip_buffered_body(self) -> None:
        """Drop what has already arrived of the request body (a GET's empty one,
        or the rest of a small POST we answered early) so the connection can be
        reused. Reads nothing from the network."""
        try:
            while self.h11.their_state is h11.SEND_BODY:
                event = self.h11.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    return
        except h11.RemoteProtocolError:
            return

    async def _receive(self) -> None:
        data = bytes(await self.stream.receive_some(CHUNK))
        self.received += len(data)
        self.h11.receive_data(data)  # b"" is EOF

    # --- responses ----------------------------------------------------------------

    @property
    def response_started(self) -> bool:
        return self.h11.our_state is not h11.SEND_RESPONSE

    @property
    def reusable(self) -> bool:
        return (
            not self.closing and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE
        )

    def close_after(self) -> None:
        """Close after this request (a drain): its response says so if not yet sent."""
        self.closing = True

    async def send(self, event: h11.Event) -> None:
        # The lock orders h11's output with the bytes on the wire when two tasks
        # send (a 100 Continue from the body reader, the response from git's pump).
        if (
            self.closing
            and isinstance(event, h11.Response)
            and all(name != b"connection" for name, _ in event.headers)
        ):
            # h11 then ends the connection after this response (keep-alive off).
            event = h11.Response(
                status_code=event.status_code,
                headers=[*event.headers, (b"connection", b"close")],
                reason=event.reason,
            )
        if isinstance(event, h11.Response):
            self.status = event.status_code
        async with self._send_lock:
            data = self.h11.send(event)
            if data:
                self.sent += len(data)
                with trio.fail_after(self._io_timeout):
                    await self.stream.send_all(data)

    async def send_body(self, *pieces: bytes) -> None:
        """Send `pieces` of the response body in one write, copying them once.

        `send(h11.Data(header + chunk))` copies a CHUNK twice (the caller's
        concatenation, then h11 joining its chunk framing around it): measured
        here as a third of the node's own CPU on an SSH clone. One write, not
        one per piece: small segments would wake the reader once each.
        """
        async with self._send_lock:
            parts: list[bytes] = []
            for piece in pieces:
                parts += self.h11.send_with_data_passthrough(h11.Data(data=piece)) or []
            data = b"".join(parts)
            self.sent += len(data)
            with trio.fail_after(self._io_timeout):
                await self.stream.send_all(data)

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str = "text/plain; charset=utf-8",
        headers: Sequence[Header] = (),
    ) -> None:
        """A complete response with a known length."""
        self.skip_buffered_body()
        all_headers: list[Header] = []
        if status != 204:  # RFC 9110 15.3.5: no content, no Content-Length
            all_headers += [("content-type", content_type), ("content-length", str(len(body)))]
        all_headers += headers
        if self.h11.their_state is not h11.DONE:
            # The rest of the request body is unread: the connection cannot be reused.
            all_headers.append(("connection", "close"))
        response = h11.Response(status_code=status, headers=all_headers, reason=reason(status))
        await self.send(response)
        if body and self.method != b"HEAD":
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def respond_text(self, status: int, message: str, headers: Sequence[Header] = ()) -> None:
        await self.respond(status, (message + "\n").encode(), headers=headers)
