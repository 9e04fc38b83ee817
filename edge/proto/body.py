"""Finding where an HTTP/1.1 message body ends, without decoding it.

The edge relays git bodies verbatim, framing included: a chunked pack from the
node goes to the client as the same chunked bytes. Decoding and re-encoding
every chunk (what a plain h11 proxy does) costs a copy and Python work per
chunk, and measured here that made a trio+h11 proxy 1.6x slower than going
direct. `BodyFramer.feed` only steps over chunk headers and says how many of
the bytes it was given belong to the body.

Verbatim relay makes the framer the edge's only reader of the framing, so it
must read it exactly as RFC 9112 section 7.1 writes it: a peer behind the edge
that reads a sloppy chunk line another way (bare LF as a line end, a space
inside or around a size, `\\r\\r\\n` after data) would see a different message
than the edge checked, which is how requests are smuggled. Everything outside
the grammar is a `BodyError` (400), raised as soon as the offending line is
complete; chunk data itself is never looked at.
"""

from __future__ import annotations

import re
from enum import Enum, auto

MAX_CHUNK_LINE = 4096
MAX_TRAILERS = 16384
MAX_SIZE_DIGITS = 16  # 2**64: more is not a size anyone means

# RFC 9110 5.6.2 token, 5.6.4 quoted-string, 5.6.3 BWS (optional whitespace).
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_BWS = rb"[ \t]*"
_EXT = rb"%s%s(?:%s=%s(?:%s|%s))?" % (_BWS, _TOKEN, _BWS, _BWS, _TOKEN, _QUOTED)
# chunk = chunk-size [ chunk-ext ] CRLF
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# except BWS before the first ";": RFC 9112 7.1.1 has a recipient accept it, but
# h11 refuses it, and h11 is what the nodes behind the edge parse with. A body
# the edge relays and its node then refuses is a push that fails half-sent, so
# the edge refuses it first (found by tests/edge/test_proto_properties.py).
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})(?:;%s(?:%s;%s)*)?\r\n" % (MAX_SIZE_DIGITS, _EXT, _BWS, _EXT)
)
# trailer-section = *( field-line CRLF ); field-line = field-name ":" OWS field-value OWS.
# A line starting with whitespace would be obs-fold, which we refuse (RFC 9112 5.2).
_TRAILER_LINE = re.compile(rb"%s:[\t -~\x80-\xff]*\r\n" % _TOKEN)
_CRLF = b"\r\n"


class BodyError(Exception):
    """The peer's body framing is broken, too large, or ended early.

    `http_status` is what a client is answered with when it is the client's
    body; `public_message` is the sentence it sees (the detail is for the log).
    """

    def __init__(
        self, detail: str, http_status: int = 400, public_message: str = "malformed request body"
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.http_status = http_status
        self.public_message = public_message


class _State(Enum):
    SIZE_LINE = auto()
    DATA = auto()
    DATA_CRLF = auto()
    TRAILER = auto()
    DONE = auto()
    BROKEN = auto()


class BodyFramer:
    """Tracks one message body. Create with `length()`, `chunked()` or `until_close()`."""

    def __init__(self, *, remaining: int | None, chunked: bool) -> None:
        self._remaining = remaining  # None: delimited by connection close
        self._length = remaining or 0
        self._chunked = chunked
        self._state = _State.SIZE_LINE if chunked else _State.DATA
        self._line = bytearray()  # a chunk line split across feeds
        self._crlf_seen = 0  # of the CRLF after chunk data
        self._trailer_bytes = 0
        self._taken = 0  # chunked or close-delimited: body bytes so far
        if not chunked and remaining == 0:
            self._state = _State.DONE

    @classmethod
    def length(cls, n: int) -> BodyFramer:
        return cls(remaining=n, chunked=False)

    @classmethod
    def chunked(cls) -> BodyFramer:
        return cls(remaining=0, chunked=True)

    @classmethod
    def until_close(cls) -> BodyFramer:
        return cls(remaining=None, chunked=False)

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def broken(self) -> bool:
        """A framing error was raised: the stream is unusable from here on."""
        return self._state is _State.BROKEN

    @property
    def close_delimited(self) -> bool:
        return self._remaining is None and not self._chunked

    @property
    def consumed(self) -> int:
        """Body bytes taken so far, framing included."""
        if self._chunked or self._remaining is None:
            return self._taken
        return self._length - self._remaining

    @property
    def known_remaining(self) -> int | None:
        """Bytes still to come when the length is known (Content-Length), else None."""
        if self._state is _State.DONE:
            return 0
        return None if self._chunked else self._remaining

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """How many leading bytes of `data` are body; the rest belongs to what follows."""
        size = len(data)
        if not self._chunked:
            # The hot path for Content-Length bodies: nothing to check but the count.
            if self._remaining is None:
                self._taken += size
                return size
            take = min(size, self._remaining)
            self._remaining -= take
            if self._remaining == 0:
                self._state = _State.DONE
            return take
        if self._state is _State.BROKEN:
            raise BodyError("body framing already broken")
        try:
            pos = self._feed_chunked(data, size)
        except BodyError:
            self._state = _State.BROKEN
            raise
        self._taken += pos
        return pos

    def decode(self, data: bytes | bytearray | memoryview) -> tuple[int, list[memoryview]]:
        """`feed`, and the body's payload in `data`: views of it, chunk framing
        stripped (for the one reader that needs the content, the SSH relay)."""
        view = memoryview(data)
        if not self._chunked:
            take = self.feed(view)
            return take, [view[:take]] if take else []
        if self._state is _State.BROKEN:
            raise BodyError("body framing already broken")
        spans: list[memoryview] = []
        try:
            pos = self._feed_chunked(view, len(view), spans)
        except BodyError:
            self._state = _State.BROKEN
            raise
        self._taken += pos
        return pos, spans

    def eof(self) -> None:
        """The peer closed. Raise BodyError unless that ends the body."""
        if self._state is not _State.DONE and not self.close_delimited:
            self._state = _State.BROKEN
            raise BodyError("connection closed in the middle of a message body")
        self._state = _State.DONE

    def _feed_chunked(
        self,
        data: bytes | bytearray | memoryview,
        size: int,
        spans: list[memoryview] | None = None,
    ) -> int:
        pos = 0
        while pos < size:
            state = self._state
            if state is _State.DATA:
                assert self._remaining is not None
                take = min(size - pos, self._remaining)
                if spans is not None:
                    assert isinstance(data, memoryview)
                    spans.append(data[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = _State.DATA_CRLF
                    self._crlf_seen = 0
            elif state is _State.DATA_CRLF:
                # Exactly CRLF, checked byte by byte so "\r\r\n" or a bare LF
                # fails at its first wrong byte, whatever the split.
                if data[pos] != _CRLF[self._crlf_seen]:
                    raise BodyError("missing CRLF after chunk data")
                pos += 1
                self._crlf_seen += 1
                if self._crlf_seen == 2:
                    self._state = _State.SIZE_LINE
            elif state is _State.SIZE_LINE and not self._line:
                # The common case: the whole size line is in this piece, matched in place.
                match = _SIZE_LINE.match(data, pos, min(size, pos + MAX_CHUNK_LINE + 2))
                if match is None:
                    pos = self._feed_line(data, pos, size)
                else:
                    pos = match.end()
                    self._start_chunk(int(match.group(1), 16))
            elif state is _State.DONE:
                break
            else:
                pos = self._feed_line(data, pos, size)
        return pos

    def _start_chunk(self, chunk_size: int) -> None:
        self._remaining = chunk_size
        self._state = _State.DATA if chunk_size else _State.TRAILER

    def _feed_line(self, data: bytes | bytearray | memoryview, pos: int, size: int) -> int:
        """Consume up to one line (a chunk size, or a trailer) that may span feeds."""
        limit = MAX_TRAILERS if self._state is _State.TRAILER else MAX_CHUNK_LINE
        # Look no further than the line may be long: past that it is an error,
        # and bytes after the newline belong to the body or the next message.
        stop = min(size, pos + limit + 2 - len(self._line))
        if isinstance(data, memoryview):
            found = bytes(data[pos:stop]).find(b"\n")
            end = pos + found if found >= 0 else -1
        else:
            end = data.find(b"\n", pos, stop)
        if end < 0:
            self._line += data[pos:stop]
            if len(self._line) > limit:
                raise BodyError("chunk line too long")
            return stop
        self._line += data[pos : end + 1]
        line = bytes(self._line)
        self._line.clear()
        if self._state is _State.SIZE_LINE:
            match = _SIZE_LINE.fullmatch(line)
            if match is None:
                raise BodyError(_what_is_wrong("chunk size line", line))
            self._start_chunk(int(match.group(1), 16))
        else:
            self._trailer_line(line)
        return end + 1

    def _trailer_line(self, line: bytes) -> None:
        self._trailer_bytes += len(line)
        if self._trailer_bytes > MAX_TRAILERS:
            raise BodyError("trailer section too large")
        if line == _CRLF:
            self._state = _State.DONE
        elif not _TRAILER_LINE.fullmatch(line):
            raise BodyError(_what_is_wrong("trailer line", line))


def _what_is_wrong(what: str, line: bytes) -> str:
    """A log line for a refused chunk line (the error path only)."""
    if not line.endswith(b"\r\n"):
        return f"bare LF in {what} {line[:40]!r}"
    if b"\r" in line[:-2]:
        return f"stray CR in {what} {line[:40]!r}"
    return f"bad {what} {line[:40]!r}"
