"""HTTP/1.1 message heads: cut from a byte stream, parsed and checked by h11.

A fresh `h11.Connection` parses each head; the body is then framed by
`BodyFramer` and relayed verbatim (see `body.py` for why). Heads larger than
`MAX_HEAD` are refused with 431, as h11 would.
"""

from __future__ import annotations

from dataclasses import dataclass

import h11

from edge.proto.body import BodyFramer

MAX_HEAD = 16384
Headers = list[tuple[bytes, bytes]]


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
    keep_alive: bool
    framer_kind: str  # "length", "chunked" or "none"
    content_length: int

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def new_body_framer(self) -> BodyFramer:
        if self.framer_kind == "chunked":
            return BodyFramer.chunked()
        return BodyFramer.length(self.content_length)


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: bytes
    http_version: bytes
    headers: Headers
    keep_alive: bool

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _framing(headers: Headers) -> tuple[str, int]:
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
        raise HeadError(exc.error_status_hint, f"bad request: {exc}") from None
    if not isinstance(event, h11.Request):
        raise HeadError(400, "bad request: incomplete head")
    headers = list(event.headers)
    kind, length = _framing(headers)
    return RequestHead(
        method=event.method,
        target=event.target,
        http_version=event.http_version,
        headers=headers,
        keep_alive=_wants_keep_alive(event.http_version, headers),
        framer_kind="length" if kind == "none" else kind,
        content_length=length,
    )


def parse_response_head(head: bytes, request_method: bytes) -> tuple[ResponseHead, BodyFramer]:
    """Parse a node's response head; also says how its body is framed."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    # h11 needs to have "sent" the request to accept a response; only the
    # method matters to framing (HEAD has no body).
    conn.send(h11.Request(method=request_method, target=b"/", headers=[(b"host", b"node")]))
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HeadError(502, f"bad response from node: {exc}") from None
    if isinstance(event, h11.InformationalResponse):
        raise HeadError(502, "node sent an interim response")
    if not isinstance(event, h11.Response):
        raise HeadError(502, "node sent an incomplete response head")
    headers = list(event.headers)
    kind, length = _framing(headers)
    if request_method == b"HEAD" or event.status_code in (204, 304):
        framer = BodyFramer.length(0)
    elif kind == "chunked":
        framer = BodyFramer.chunked()
    elif kind == "length":
        framer = BodyFramer.length(length)
    else:
        framer = BodyFramer.until_close()
    keep_alive = _wants_keep_alive(event.http_version, headers) and not framer.close_delimited
    return (
        ResponseHead(event.status_code, event.reason, event.http_version, headers, keep_alive),
        framer,
    )


def _wants_keep_alive(http_version: bytes, headers: Headers) -> bool:
    for name, value in headers:
        if name == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            if b"close" in tokens:
                return False
    return http_version == b"1.1"
