"""HTTP/1.1 message heads: cut from a byte stream, parsed and checked by h11.

A fresh `h11.Connection` parses each head; what it says about the body and the
connection is reported here as fact (`framing`, `persistent`), and acted on in
one place, `exchange.py`. Heads larger than `MAX_HEAD` are refused with 431, as
h11 would.

Line ends must be CRLF. h11 also takes a bare LF as a line end (RFC 9112 2.2
lets a recipient), but the edge is a proxy: a head it reads one way and a
server behind it, or before it, reads another way is a smuggled request. So a
bare LF anywhere in a head is a 400, found as soon as it arrives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import h11

MAX_HEAD = 16384
Headers = list[tuple[bytes, bytes]]
Framing = Literal["length", "chunked", "none"]
_BARE_LF = re.compile(rb"(?<!\r)\n")
# RFC 9110 5.5: CTLs other than HTAB are invalid in a field value. h11 takes
# them (it refuses only NUL, CR and LF); a proxy passes on what it accepts, so
# a byte that a backend or a log reader could read as a separator is a 400 here.
_CTL_IN_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


class HeadError(Exception):
    """A head we will not parse; carries the HTTP status to answer with."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


class HeadReader:
    """Accumulates bytes until a complete head (CRLF CRLF) has arrived."""

    def __init__(self, max_head: int = MAX_HEAD) -> None:
        self._buf = bytearray()
        self._max = max_head

    def feed(self, data: bytes) -> tuple[bytes, bytes] | None:
        """Returns (head, rest) once the head is complete, else None."""
        start = max(0, len(self._buf) - 3)
        self._buf += data
        end = self._buf.find(b"\r\n\r\n", start)
        # Only the head is checked: what follows it is a body, or the next message.
        bare_lf = _BARE_LF.search(self._buf, start, len(self._buf) if end < 0 else end)
        if bare_lf is not None:
            self._buf.clear()
            raise HeadError(400, "bad request: bare LF in the head (lines end with CRLF)")
        if end < 0:
            if len(self._buf) > self._max:
                raise HeadError(431, "request header fields too large")
            return None
        end += 4
        if end > self._max:
            raise HeadError(431, "request header fields too large")
        head, rest = bytes(self._buf[:end]), bytes(self._buf[end:])
        self._buf.clear()
        return head, rest

    @property
    def pending(self) -> int:
        return len(self._buf)


@dataclass(frozen=True)
class RequestHead:
    method: bytes
    target: bytes
    http_version: bytes
    headers: Headers  # names lower-cased, as h11 gives them
    persistent: bool
    """The head lets the connection persist (HTTP/1.1, no `Connection: close`)."""
    framing: Framing  # "none": no body (RFC 9112 6.3: a request without framing has none)
    content_length: int

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: bytes
    http_version: bytes
    headers: Headers
    persistent: bool
    framing: Framing  # "none": delimited by the connection's close, unless the status has no body
    content_length: int

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _framing(headers: Headers) -> tuple[Framing, int]:
    names = {name for name, _ in headers}
    if b"transfer-encoding" in names:
        if b"content-length" in names:
            # Both framings at once is how requests are smuggled (RFC 9112 6.1):
            # refuse rather than pick one.
            raise HeadError(400, "both Transfer-Encoding and Content-Length")
        # h11 has already refused any coding but a lone "chunked".
        return "chunked", 0
    for name, value in headers:
        if name == b"content-length":
            return "length", int(value)
    return "none", 0


def parse_request_head(head: bytes) -> RequestHead:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(exc.error_status_hint, f"bad request: {_reason(exc)}") from None
    if not isinstance(event, h11.Request):
        raise HeadError(400, "bad request: incomplete head")
    headers = list(event.headers)
    if any(_CTL_IN_VALUE.search(value) for _, value in headers):
        raise HeadError(400, "bad request: a control character in a header value")
    framing, length = _framing(headers)
    return RequestHead(
        method=event.method,
        target=event.target,
        http_version=event.http_version,
        headers=headers,
        persistent=_persistent(event.http_version, headers),
        framing=framing,
        content_length=length,
    )


# h11 quotes the offending bytes ("illegal header line: bytearray(b'Authorization: ...')"):
# they may be credentials, and the message is logged and sent back. Only h11's words stay.
_QUOTED_INPUT = re.compile(r":? (?:bytearray\(b|b)['\"].*", re.DOTALL)


def _reason(exc: h11.ProtocolError) -> str:
    return _QUOTED_INPUT.sub("", str(exc))


def parse_response_head(head: bytes, *, upgrade: bool = False) -> ResponseHead:
    """Parse a node's response head (HeadError 502 if it is not a final response).

    `upgrade`: the request asked for an `Upgrade`, so `101 Switching Protocols`
    is taken too (its framing "none": what follows is the new protocol's)."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    # h11 needs to have "sent" a request to accept a response; framing is ours.
    proposal = [(b"connection", b"upgrade"), (b"upgrade", b"any")] if upgrade else []
    conn.send(h11.Request(method=b"GET", target=b"/", headers=[(b"host", b"node"), *proposal]))
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(502, f"bad response from node: {exc}") from None
    if isinstance(event, h11.InformationalResponse):
        if upgrade and event.status_code == 101:
            return ResponseHead(
                status=101,
                reason=event.reason,
                http_version=event.http_version,
                headers=list(event.headers),
                persistent=False,
                framing="none",
                content_length=0,
            )
        raise HeadError(502, "node sent an interim response")
    if not isinstance(event, h11.Response):
        raise HeadError(502, "node sent an incomplete response head")
    headers = list(event.headers)
    framing, length = _framing(headers)
    return ResponseHead(
        status=event.status_code,
        reason=event.reason,
        http_version=event.http_version,
        headers=headers,
        persistent=_persistent(event.http_version, headers),
        framing=framing,
        content_length=length,
    )


def _persistent(http_version: bytes, headers: Headers) -> bool:
    """RFC 9112 9.3; HTTP/1.0 keep-alive is not spoken here."""
    for name, value in headers:
        if name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                return False
    return http_version == b"1.1"
