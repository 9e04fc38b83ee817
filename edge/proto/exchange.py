"""One HTTP/1.1 request and its answer: the one owner of the exchange's state.

Sans-IO. The front makes an `Exchange` from each request head it reads; the
proxy (a node's answer relayed) and the edge's own answers (health, errors, the
API) both go through it, and so does every later question about the two
connections involved. Nothing else decides:

- how the request body is framed (its `BodyFramer` is built here, once, and
  fed by whoever reads the body: the relay, the API's JSON reader, a drain);
- whether that body has been read (`request_progress`), and whether the rest
  of a body nobody wanted may be drained (`drain_budget`) or the connection
  must close instead, because unread body bytes would be parsed as the next
  request: request smuggling across users behind a load balancer;
- HEAD semantics: a response to HEAD has no body whatever its Content-Length
  says (RFC 9110 9.3.2), and the edge's own answers to HEAD are heads only;
- whether the client connection and the node connection may carry another
  request (`client_reusable`, `node_reusable`), from what the heads said
  (RFC 9112 9.3), whether both bodies ended where their framing said, and
  whether anything failed (`fail`).

The answer's head says `connection: close` whenever the edge already knows it
will close (RFC 9112 9.6); when it learns later (a node answering before the
upload ended, a relay failing midway) it closes without having said so, which
a client must expect of any connection.
"""

from __future__ import annotations

from enum import Enum

import h11

from edge.proto.body import BodyError, BodyFramer
from edge.proto.http_head import RequestHead, ResponseHead, parse_request_head

DRAIN_LIMIT = 64 * 1024
"""The most of an unwanted request body the edge reads and drops to keep a connection."""

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

# Hop-by-hop fields (RFC 9110 7.6.1) describe one connection, not the message.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)


class BodyProgress(Enum):
    """How much of the request body the edge has read."""

    UNREAD = "unread"
    PARTIAL = "partial"
    READ = "read"  # all of it, or there was none
    BROKEN = "broken"  # its framing was wrong, or the client closed inside it


class Exchange:
    """A request from its parsed head to the end of its answer."""

    def __init__(self, raw_head: bytes) -> None:
        """Parse `raw_head` (HeadError with the status to answer if it is bad)."""
        self.raw_head = raw_head
        self.head: RequestHead = parse_request_head(raw_head)
        self.request_body = _request_framer(self.head)
        self.response: ResponseHead | None = None
        self.response_body: BodyFramer | None = None
        self.status = 0
        """The status the client was sent; 0 while nothing was."""
        self._expects_continue = (
            self.head.http_version == b"1.1"  # RFC 9110 10.1.1: ignored from HTTP/1.0
            and (self.head.header(b"expect") or b"").lower() == b"100-continue"
            and not self.request_body.done
        )
        self._announced_close = False
        self._closing = False
        self.failure: str | None = None
        """Why the exchange broke off, if it did (for the log)."""

    # -- the request --------------------------------------------------------------

    @property
    def is_head(self) -> bool:
        return self.head.method == b"HEAD"

    @property
    def request_progress(self) -> BodyProgress:
        framer = self.request_body
        if framer.broken:
            return BodyProgress.BROKEN
        if framer.done:
            return BodyProgress.READ
        return BodyProgress.PARTIAL if framer.consumed else BodyProgress.UNREAD

    def continue_head(self) -> bytes | None:
        """`100 Continue`, once, if the client waits for it before sending its body.

        Send it just before reading the body (RFC 9110 10.1.1): a client that
        gets an answer instead knows its body is not wanted.
        """
        if not self._expects_continue or self.status:
            return None
        self._expects_continue = False
        return CONTINUE

    @property
    def drain_budget(self) -> int:
        """How many bytes of an unread request body to read and drop before answering.

        0 means none: the body is read, broken, given up on (`fail`), too
        large to be worth it, the connection closes anyway, or the client
        waits for a `100 Continue` it will not get; the answer then closes
        the connection.
        """
        framer = self.request_body
        if framer.done or framer.broken or self.failure is not None:
            return 0
        if self._expects_continue or not self.head.persistent or self._closing:
            return 0
        left = DRAIN_LIMIT - framer.consumed
        remaining = framer.known_remaining
        if remaining is not None:
            return remaining if remaining <= left else 0
        return max(0, left)  # chunked: its end is unknown, give it up to the limit

    def decoded_request_body(self, framed: bytes) -> bytes:
        """The request body without its framing, from the framed bytes the framer took."""
        if self.head.framing != "chunked":
            return framed
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(self.raw_head + framed)
        body = bytearray()
        try:
            while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                if event is h11.NEED_DATA:
                    raise BodyError("chunked body ended early")
                if isinstance(event, h11.Data):
                    body += event.data
        except h11.RemoteProtocolError as exc:
            # None known since the framer refuses BWS before ';' as h11 does; the
            # property tests (tests/edge/test_proto_properties.py) look for more.
            raise BodyError(f"chunked body: {exc}") from None
        return bytes(body)

    # -- the answer ---------------------------------------------------------------

    @property
    def response_started(self) -> bool:
        return self.status != 0

    def answer(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> bytes:
        """The bytes of the edge's own complete answer (a HEAD gets the head alone).

        Call it after any drain: the head says `connection: close` unless the
        client connection can carry another request.
        """
        assert not self.response_started, "one answer per exchange"
        headers = [
            (b"content-type", content_type),
            (b"content-length", b"%d" % len(body)),
            (b"cache-control", b"no-cache"),
            *(extra or []),
        ]
        close = self._must_close()
        if close:
            headers.append((b"connection", b"close"))
        self._announced_close = close
        self.status = status
        self.response_body = BodyFramer.length(0)  # complete as soon as it is written
        return _h11_head(self.head.method, status, headers) + (b"" if self.is_head else body)

    def receive_response_head(self, response: ResponseHead) -> bytes:
        """Take the node's response head; returns the head to send to the client.

        Builds the response body's framer (`response_body`): none for HEAD,
        204 and 304 whatever the head says, else as the head frames it.
        """
        assert not self.response_started, "one answer per exchange"
        self.response = response
        self.response_body = response_framer(response, self.head.method)
        close = self._must_close() or self.response_body.close_delimited
        self._announced_close = close
        self.status = response.status
        named = _connection_options(response)
        lines = [b"HTTP/1.1 %d %s" % (response.status, response.reason or b"-")]
        lines += [
            name + b": " + value
            for name, value in response.headers
            if name not in _HOP_BY_HOP and name not in named
        ]
        if close:
            lines.append(b"connection: close")
        return b"\r\n".join([*lines, b"", b""])

    def receive_upgrade(self, response: ResponseHead) -> bytes:
        """Take a `101 Switching Protocols`; returns its head for the client.

        The connections become a tunnel (edge/http/tunnel.py): the exchange is
        marked failed, so neither goes back to a pool or carries another request.
        """
        assert not self.response_started, "one answer per exchange"
        assert response.status == 101
        self.response = response
        self.response_body = BodyFramer.length(0)
        self.status = 101
        self.fail("upgraded: the connections became a tunnel")
        named = _connection_options(response)
        lines = [b"HTTP/1.1 101 %s" % (response.reason or b"Switching Protocols")]
        lines += [
            name + b": " + value
            for name, value in response.headers
            if name not in _HOP_BY_HOP and name not in named
        ]
        lines += [b"connection: upgrade", b"upgrade: " + (response.header(b"upgrade") or b"")]
        return b"\r\n".join([*lines, b"", b""])

    @property
    def response_complete(self) -> bool:
        return self.response_body is not None and self.response_body.done

    def close_after(self) -> None:
        """The edge closes the client connection after this exchange (a drain): the
        answer says `connection: close` if its head is not sent yet."""
        self._closing = True

    def fail(self, reason: str) -> None:
        """Something broke off the exchange: neither connection is reused."""
        if self.failure is None:
            self.failure = reason

    # -- what happens next --------------------------------------------------------

    @property
    def client_reusable(self) -> bool:
        """May the client's connection carry its next request?"""
        return (
            not self._announced_close
            and not self._closing
            and self.failure is None
            and self.response_complete
            and self.request_body.done
        )

    @property
    def node_reusable(self) -> bool:
        """May the node's connection go back to the pool?

        Only after a whole exchange: the node read all of the request (the
        edge forwards every byte it reads) and sent all of a response that
        leaves the connection open.
        """
        return (
            self.failure is None
            and self.response is not None
            and self.response.persistent
            and self.response_body is not None
            and self.response_body.done
            and not self.response_body.close_delimited  # it ended because the node closed
            and self.request_body.done
        )

    def _must_close(self) -> bool:
        return (
            self._closing
            or not self.head.persistent
            or not self.request_body.done
            or self.failure is not None
        )


def refusal(status: int, message: str) -> bytes:
    """The answer to a request whose head could not be read: it always closes."""
    body = (message + "\n").encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-cache"),
        (b"connection", b"close"),
    ]
    return _h11_head(b"GET", status, headers) + body


def _request_framer(head: RequestHead) -> BodyFramer:
    if head.framing == "chunked":
        return BodyFramer.chunked()
    return BodyFramer.length(head.content_length)  # "none" is a zero-length body


def response_framer(response: ResponseHead, request_method: bytes) -> BodyFramer:
    """How a response to `request_method` is framed (RFC 9112 6.3): none for HEAD,
    204 and 304 whatever the head says. Public for relays whose request to a node
    is their own (no client Exchange), so the rule stays in one place."""
    if request_method == b"HEAD" or response.status in (204, 304):
        return BodyFramer.length(0)
    if response.framing == "chunked":
        return BodyFramer.chunked()
    if response.framing == "length":
        return BodyFramer.length(response.content_length)
    return BodyFramer.until_close()


def _connection_options(response: ResponseHead) -> set[bytes]:
    """Field names the Connection header lists: hop-by-hop too (RFC 9110 7.6.1)."""
    return {
        token.strip().lower()
        for name, value in response.headers
        if name == b"connection"
        for token in value.split(b",")
    }


def _h11_head(method: bytes, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A response head, written (and so checked) by h11."""
    conn = h11.Connection(h11.SERVER)
    # h11 writes a response only to a request it has "seen"; the method is the
    # real one so a HEAD answer keeps the GET's headers (RFC 9110 9.3.2).
    conn.receive_data(b"%s / HTTP/1.1\r\nhost: edge\r\n\r\n" % method)
    conn.next_event()
    return conn.send(h11.Response(status_code=status, headers=headers)) or b""
