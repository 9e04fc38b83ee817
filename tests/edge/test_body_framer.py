"""BodyFramer: where a body ends, checked against h11 as an independent implementation.

Every body is fed whole, byte by byte, in random splits (fixed seed) and followed
by the bytes of the next message, which the framer must leave alone.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator, Sequence

import h11
import pytest

from edge.proto.body import MAX_CHUNK_LINE, MAX_TRAILERS, BodyError, BodyFramer

NEXT_MESSAGE = b"POST /alice/project.git/git-upload-pack HTTP/1.1\r\nHost: edge\r\n\r\n"
_CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\n"


def h11_chunked(chunks: Sequence[bytes], trailers: Sequence[tuple[str, str]] = ()) -> bytes:
    """A chunked body as h11 (a client sending Data events) frames it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(
            method="POST",
            target="/",
            headers=[("Host", "node"), ("Transfer-Encoding", "chunked")],
        )
    )
    out = bytearray()
    for chunk in chunks:
        out += conn.send(h11.Data(data=chunk)) or b""
    out += conn.send(h11.EndOfMessage(headers=list(trailers))) or b""
    return bytes(out)


def h11_body_length(stream: bytes) -> int:
    """How many leading bytes of `stream` h11 (as a server) reads as the chunked body."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(_CHUNKED_HEAD + stream)
    while True:
        event = conn.next_event()
        assert event is not h11.NEED_DATA, "h11 says the body is incomplete"
        if isinstance(event, h11.EndOfMessage):
            break
    return len(stream) - len(conn.trailing_data[0])


def whole(data: bytes) -> list[bytes]:
    return [data]


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def random_splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def splittings(data: bytes, trials: int = 60) -> Iterator[list[bytes]]:
    yield whole(data)
    yield byte_by_byte(data)
    for seed in range(trials):
        yield random_splits(data, seed)


def run(framer: BodyFramer, pieces: Sequence[bytes]) -> tuple[int, bytes]:
    """Feed pieces as a connection would: (bytes that were body, bytes left over)."""
    used = 0
    rest = bytearray()
    for piece in pieces:
        if framer.done:
            rest += piece
            continue
        n = framer.feed(piece)
        assert 0 <= n <= len(piece)
        if n < len(piece):
            assert framer.done, "a framer may only leave bytes over once the body is done"
        used += n
        rest += piece[n:]
    return used, bytes(rest)


def assert_frames(make: Callable[[], BodyFramer], body: bytes) -> None:
    """`body` is exactly one body: in every split, with and without what follows it."""
    for pieces in splittings(body):
        framer = make()
        assert run(framer, pieces) == (len(body), b"")
        assert framer.done
        framer.eof()  # a finished body may be followed by a close
    for pieces in splittings(body + NEXT_MESSAGE):
        framer = make()
        assert run(framer, pieces) == (len(body), NEXT_MESSAGE)
        assert framer.done


def assert_done_flips_at_the_last_byte(make: Callable[[], BodyFramer], body: bytes) -> None:
    framer = make()
    for i in range(len(body)):
        assert not framer.done, f"done after {i} of {len(body)} bytes"
        assert framer.feed(body[i : i + 1]) == 1
    assert framer.done


# -- content-length --------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 5, 100, 70_000])
def test_content_length_body(n: int) -> None:
    body = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
    assert len(body) == n
    assert_frames(lambda: BodyFramer.length(n), body)


@pytest.mark.parametrize("n", [1, 2, 300])
def test_content_length_done_flips_at_the_last_byte(n: int) -> None:
    assert_done_flips_at_the_last_byte(lambda: BodyFramer.length(n), b"b" * n)


def test_content_length_body_may_contain_anything() -> None:
    # Chunk syntax inside a length-framed body is just data.
    body = b"0\r\n\r\n" + NEXT_MESSAGE
    assert_frames(lambda: BodyFramer.length(len(body)), body)


def test_zero_length_body_is_done_at_once_and_takes_nothing() -> None:
    framer = BodyFramer.length(0)
    assert framer.done
    assert framer.feed(NEXT_MESSAGE) == 0
    assert framer.feed(b"") == 0
    assert framer.done
    framer.eof()


def test_content_length_feed_of_nothing_is_nothing() -> None:
    framer = BodyFramer.length(3)
    assert framer.feed(b"") == 0
    assert not framer.done


def test_content_length_feed_after_done_takes_nothing() -> None:
    framer = BodyFramer.length(3)
    assert framer.feed(b"abc") == 3
    assert framer.feed(b"def") == 0
    assert framer.done


@pytest.mark.parametrize("received", [0, 1, 9])
def test_content_length_eof_before_the_end_is_an_error(received: int) -> None:
    framer = BodyFramer.length(10)
    framer.feed(b"x" * received)
    with pytest.raises(BodyError):
        framer.eof()


def test_content_length_is_not_close_delimited() -> None:
    assert not BodyFramer.length(5).close_delimited
    assert not BodyFramer.length(0).close_delimited


def test_feed_accepts_bytearray_and_memoryview() -> None:
    framer = BodyFramer.length(4)
    assert framer.feed(bytearray(b"ab")) == 2
    assert framer.feed(memoryview(b"cdef")) == 2
    assert framer.done


# -- close-delimited -------------------------------------------------------------


def test_until_close_takes_everything_and_ends_at_eof() -> None:
    framer = BodyFramer.until_close()
    assert framer.close_delimited
    for pieces in splittings(b"everything until the peer closes" + NEXT_MESSAGE, trials=5):
        framer = BodyFramer.until_close()
        total = sum(len(p) for p in pieces)
        assert run(framer, pieces) == (total, b"")
        assert not framer.done
        framer.eof()
        assert framer.done


def test_until_close_with_no_body_at_all() -> None:
    framer = BodyFramer.until_close()
    framer.eof()
    assert framer.done


# -- chunked, framed by h11 ------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        [],
        [b"a"],
        [b"hello", b"world!"],
        [b"x" * 15, b"y" * 16, b"z" * 255, b"w" * 4096],
        [b"\r\n0\r\n\r\n", b"0\r\n\r\n"],  # framing look-alikes inside data
        [bytes(range(256)) * 300],  # 76800 bytes: a five-digit hex size
        [b"p"] * 50,
    ],
    ids=["empty", "one-byte", "two", "sizes", "look-alikes", "large", "many"],
)
def test_chunked_body_framed_by_h11(chunks: list[bytes]) -> None:
    body = h11_chunked(chunks)
    assert h11_body_length(body + NEXT_MESSAGE) == len(body)
    assert_frames(BodyFramer.chunked, body)


def test_chunked_body_with_trailers_framed_by_h11() -> None:
    body = h11_chunked([b"pack data"], [("X-Checksum", "abc123"), ("X-Other", "1")])
    assert b"X-Checksum: abc123\r\n" in body
    assert_frames(BodyFramer.chunked, body)


def test_chunked_done_flips_at_the_last_byte() -> None:
    body = h11_chunked([b"hello", b"world"], [("X-T", "v")])
    assert_done_flips_at_the_last_byte(BodyFramer.chunked, body)


def test_chunked_empty_body_done_flips_at_the_last_byte() -> None:
    assert_done_flips_at_the_last_byte(BodyFramer.chunked, b"0\r\n\r\n")


def test_chunked_is_not_done_before_any_bytes() -> None:
    framer = BodyFramer.chunked()
    assert not framer.done
    assert not framer.close_delimited
    assert framer.feed(b"") == 0
    assert not framer.done


def test_chunked_feed_after_done_takes_nothing() -> None:
    framer = BodyFramer.chunked()
    assert framer.feed(b"0\r\n\r\n") == 5
    assert framer.feed(b"5\r\nhello\r\n0\r\n\r\n") == 0
    assert framer.done


def test_chunked_pieces_may_be_memoryviews() -> None:
    body = h11_chunked([b"hello", b"world"])
    framer = BodyFramer.chunked()
    data = memoryview(body + NEXT_MESSAGE)
    used = framer.feed(data[:7])
    used += framer.feed(data[7:])
    assert used == len(body)
    assert framer.done


# -- chunked, written by hand (each checked against h11 first) -------------------

HAND_WRITTEN = {
    "extensions": b"5;name=value\r\nhello\r\nA;x\r\n0123456789\r\n0;last\r\n\r\n",
    "quoted-extension": b'5;a="x;y"\r\nhello\r\n0\r\n\r\n',
    "uppercase-hex": b"A\r\n0123456789\r\nF\r\n" + b"f" * 15 + b"\r\n0\r\n\r\n",
    "mixed-case-hex": b"1a\r\n" + b"m" * 26 + b"\r\n1A\r\n" + b"M" * 26 + b"\r\n0\r\n\r\n",
    "leading-zeros": b"0005\r\nhello\r\n000\r\n\r\n",
    "trailers": b"5\r\nhello\r\n0\r\nX-Sum: abc\r\nX-Other: 1\r\n\r\n",
    "zero-length-last-chunk-only": b"0\r\n\r\n",
    "single-byte-chunks": b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n",
    "crlf-in-data": b"4\r\n\r\n\r\n\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", HAND_WRITTEN.values(), ids=HAND_WRITTEN.keys())
def test_hand_written_chunked_body(body: bytes) -> None:
    assert h11_body_length(body + NEXT_MESSAGE) == len(body)
    assert_frames(BodyFramer.chunked, body)


def test_whitespace_before_a_chunk_extension_is_refused_as_h11_refuses_it() -> None:
    # RFC 9112 section 7.1.1 allows BWS before ';', but h11 (the nodes) refuses it:
    # relayed, such a body would fail at the node, half-sent.
    for body in (b"5 ;ext\r\nhello\r\n0\r\n\r\n", b"5\t;\ta\r\nhello\r\n0\r\n\r\n"):
        with pytest.raises(h11.RemoteProtocolError):
            h11_body_length(body + NEXT_MESSAGE)
        with pytest.raises(BodyError):
            BodyFramer.chunked().feed(body)
    # After the first ';' both accept it.
    assert_frames(BodyFramer.chunked, b"5;a ;b\r\nhello\r\n0;x ; last\r\n\r\n")


def test_chunk_extension_near_the_line_limit_is_accepted() -> None:
    size_line = b"5;" + b"e" * (MAX_CHUNK_LINE - 10) + b"\r\n"
    body = size_line + b"hello\r\n0\r\n\r\n"
    assert_frames(BodyFramer.chunked, body)


def test_many_trailer_lines_within_the_limit_are_accepted() -> None:
    trailers = [(f"X-T{i}", "v" * 50) for i in range(200)]  # ~12 KiB in all
    body = h11_chunked([b"data"], trailers)
    assert_frames(BodyFramer.chunked, body)


@pytest.mark.parametrize("feed", [whole, byte_by_byte], ids=["whole", "byte-by-byte"])
def test_one_long_trailer_line_within_the_trailer_limit(
    feed: Callable[[bytes], list[bytes]],
) -> None:
    # A 5000-byte trailer line is well under MAX_TRAILERS, and h11 accepts it.
    # The framer must end the body where h11 does however the bytes arrive.
    body = h11_chunked([b"data"], [("X-Long", "v" * 5000)])
    assert len(body) < MAX_TRAILERS
    assert h11_body_length(body + NEXT_MESSAGE) == len(body)
    framer = BodyFramer.chunked()
    assert run(framer, feed(body + NEXT_MESSAGE)) == (len(body), NEXT_MESSAGE)
    assert framer.done


def test_long_trailer_line_fed_whole_ends_the_body() -> None:
    body = h11_chunked([b"data"], [("X-Long", "v" * 5000)])
    framer = BodyFramer.chunked()
    assert framer.feed(body) == len(body)
    assert framer.done


# -- chunked, incomplete ---------------------------------------------------------


def test_chunked_eof_at_every_point_before_the_end_is_an_error() -> None:
    body = h11_chunked([b"hello", b"world"], [("X-T", "v")])
    for cut in range(len(body)):
        framer = BodyFramer.chunked()
        assert framer.feed(body[:cut]) == cut
        assert not framer.done
        with pytest.raises(BodyError):
            framer.eof()


def test_chunked_eof_when_done_is_fine() -> None:
    framer = BodyFramer.chunked()
    framer.feed(h11_chunked([b"x"]))
    framer.eof()
    assert framer.done


# -- chunked, malformed ----------------------------------------------------------


MALFORMED = {
    "non-hex-size": b"g\r\nhello\r\n0\r\n\r\n",
    "hex-then-junk": b"5x\r\nhello\r\n0\r\n\r\n",
    "junk-then-hex": b"x5\r\nhello\r\n0\r\n\r\n",
    "hex-prefix": b"0x5\r\nhello\r\n0\r\n\r\n",
    "signed-size": b"+5\r\nhello\r\n0\r\n\r\n",
    "negative-size": b"-5\r\nhello\r\n0\r\n\r\n",
    "underscore-size": b"1_0\r\n" + b"s" * 16 + b"\r\n0\r\n\r\n",
    "empty-size": b"\r\nhello\r\n0\r\n\r\n",
    "extension-only": b";ext\r\nhello\r\n0\r\n\r\n",
    "space-inside-size": b"1 0\r\n" + b"s" * 16 + b"\r\n0\r\n\r\n",
    "seventeen-digit-size": b"0" * 16 + b"5\r\nhello\r\n0\r\n\r\n",
    "no-crlf-after-data": b"5\r\nhelloXY0\r\n\r\n",
    "data-longer-than-size": b"5\r\nhello!\r\n0\r\n\r\n",
    "next-size-glued-to-data": b"5\r\nhello0\r\n\r\n",
}


def _feed(pieces: Sequence[bytes]) -> None:
    framer = BodyFramer.chunked()
    for piece in pieces:
        if framer.done:
            break
        framer.feed(piece)


@pytest.mark.parametrize("body", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_chunked_body_is_an_error(body: bytes) -> None:
    # The error comes from feed(), as soon as the bad line is complete: not at EOF.
    for pieces in splittings(body + NEXT_MESSAGE, trials=10):
        with pytest.raises(BodyError):
            _feed(pieces)


def test_malformed_size_is_refused_before_more_data_arrives() -> None:
    framer = BodyFramer.chunked()
    with pytest.raises(BodyError, match="chunk size"):
        framer.feed(b"zz\r\n")


def test_missing_crlf_after_data_is_refused_as_soon_as_the_line_ends() -> None:
    framer = BodyFramer.chunked()
    with pytest.raises(BodyError, match="missing CRLF"):
        framer.feed(b"5\r\nhelloXY\r\n")


@pytest.mark.parametrize("feed", [whole, byte_by_byte], ids=["whole", "byte-by-byte"])
def test_over_long_size_line_is_an_error(feed: Callable[[bytes], list[bytes]]) -> None:
    body = b"5;" + b"e" * (MAX_CHUNK_LINE + 10) + b"\r\nhello\r\n0\r\n\r\n"
    framer = BodyFramer.chunked()
    with pytest.raises(BodyError, match="too long"):
        for piece in feed(body):
            framer.feed(piece)


def test_endless_size_line_is_refused_without_a_newline() -> None:
    # A peer that never sends LF must not make the framer buffer forever.
    framer = BodyFramer.chunked()
    with pytest.raises(BodyError):
        for _ in range(MAX_CHUNK_LINE):
            framer.feed(b"00")


@pytest.mark.parametrize("feed", [whole, byte_by_byte], ids=["whole", "byte-by-byte"])
def test_over_large_trailer_section_is_an_error(feed: Callable[[bytes], list[bytes]]) -> None:
    trailers = [(f"X-T{i}", "v" * 100) for i in range(MAX_TRAILERS // 100 + 10)]
    body = h11_chunked([b"data"], trailers)
    framer = BodyFramer.chunked()
    with pytest.raises(BodyError, match=r"too large|too long"):
        for piece in feed(body):
            framer.feed(piece)


def test_over_long_single_trailer_line_is_an_error() -> None:
    body = b"0\r\nX-Huge: " + b"v" * (MAX_TRAILERS + 10) + b"\r\n\r\n"
    framer = BodyFramer.chunked()
    with pytest.raises(BodyError):
        framer.feed(body)


# -- chunked, outside the RFC 9112 7.1 grammar ------------------------------------
#
# The edge relays bodies verbatim, so whatever it lets through a node reads on
# its own: each of these was relayed before, and a backend that reads it another
# way (bare LF as a line end, say) sees a different body than the edge checked.

REFUSED = {
    # line ends are CRLF, nothing else
    "bare-lf-size-line": b"5\nhello\r\n0\r\n\r\n",
    "bare-lf-after-data": b"5\r\nhello\n0\r\n\r\n",
    "bare-lf-last-chunk": b"5\r\nhello\r\n0\n\r\n",
    "bare-lf-end-of-trailers": b"5\r\nhello\r\n0\r\n\n",
    "bare-lf-trailer-line": b"5\r\nhello\r\n0\r\nX-T: v\n\r\n",
    "cr-cr-lf-after-data": b"5\r\nhello\r\r\n0\r\n\r\n",
    "cr-only-after-data": b"5\r\nhello\r0\r\n\r\n",
    "lf-cr-after-data": b"5\r\nhello\n\r0\r\n\r\n",
    "stray-cr-in-size": b"5\r\r\nhello\r\n0\r\n\r\n",
    "stray-cr-before-size": b"\r5\r\nhello\r\n0\r\n\r\n",
    "stray-cr-in-extension": b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    "stray-cr-in-trailer": b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n",
    # no whitespace around a size (BWS is allowed only before ';' or '=')
    "space-before-size": b" 5\r\nhello\r\n0\r\n\r\n",
    "tab-before-size": b"\t5\r\nhello\r\n0\r\n\r\n",
    "space-after-size": b"5 \r\nhello\r\n0\r\n\r\n",
    "tab-after-size": b"5\t\r\nhello\r\n0\r\n\r\n",
    "space-after-last-chunk": b"5\r\nhello\r\n0 \r\n\r\n",
    "space-after-extension": b"5;a=b \r\nhello\r\n0\r\n\r\n",
    # chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
    "extension-without-name": b"5;\r\nhello\r\n0\r\n\r\n",
    "extension-value-without-name": b"5;=x\r\nhello\r\n0\r\n\r\n",
    "extension-without-value": b"5;a=\r\nhello\r\n0\r\n\r\n",
    "extension-name-with-space": b"5;a b\r\nhello\r\n0\r\n\r\n",
    "extension-name-not-a-token": b"5;a@b\r\nhello\r\n0\r\n\r\n",
    "extension-value-not-a-token": b"5;a=b,c\r\nhello\r\n0\r\n\r\n",
    "extension-unterminated-quote": b'5;a="x\r\nhello\r\n0\r\n\r\n',
    "extension-quote-with-nul": b'5;a="x\x00"\r\nhello\r\n0\r\n\r\n',
    "extension-nul": b"5;a\x00\r\nhello\r\n0\r\n\r\n",
    "extension-without-semicolon": b"5 a\r\nhello\r\n0\r\n\r\n",
    # trailer-section = *( field-line CRLF )
    "trailer-without-colon": b"5\r\nhello\r\n0\r\nX-T v\r\n\r\n",
    "trailer-space-before-colon": b"5\r\nhello\r\n0\r\nX-T : v\r\n\r\n",
    "trailer-obs-fold": b"5\r\nhello\r\n0\r\nX-T: v\r\n  more\r\n\r\n",
    "trailer-empty-name": b"5\r\nhello\r\n0\r\n: v\r\n\r\n",
    "trailer-nul-in-value": b"5\r\nhello\r\n0\r\nX-T: a\x00b\r\n\r\n",
}


@pytest.mark.parametrize("body", REFUSED.values(), ids=REFUSED.keys())
def test_framing_outside_the_rfc_grammar_is_refused(body: bytes) -> None:
    for pieces in splittings(body + NEXT_MESSAGE, trials=10):
        framer = BodyFramer.chunked()
        with pytest.raises(BodyError) as info:
            for piece in pieces:
                if framer.done:
                    break
                framer.feed(piece)
        # The client's mistake: a 400 with a fixed sentence, the detail for the log.
        assert info.value.http_status == 400
        assert info.value.public_message == "malformed request body"
        assert framer.broken
        assert not framer.done


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"5\nhello\r\n0\r\n\r\n", "bare LF"),
        (b"5;a\rb\r\nhello\r\n0\r\n\r\n", "stray CR"),
        (b" 5\r\nhello\r\n0\r\n\r\n", "bad chunk size line"),
        (b"5\r\nhello\r\n0\r\nX-T v\r\n\r\n", "bad trailer line"),
        (b"5\r\nhello\r\r\n", "missing CRLF after chunk data"),
    ],
)
def test_refusal_says_what_is_wrong_for_the_log(body: bytes, reason: str) -> None:
    with pytest.raises(BodyError, match=reason):
        BodyFramer.chunked().feed(body)


def test_refusal_comes_at_the_first_wrong_byte_after_data() -> None:
    # A CR CR after data is refused at the second CR, before any later byte arrives.
    framer = BodyFramer.chunked()
    assert framer.feed(b"5\r\nhello\r") == 9
    with pytest.raises(BodyError):
        framer.feed(b"\r")


def test_a_broken_framer_stays_broken() -> None:
    framer = BodyFramer.chunked()
    with pytest.raises(BodyError):
        framer.feed(b"5\nhello\r\n0\r\n\r\n")
    with pytest.raises(BodyError):
        framer.feed(b"0\r\n\r\n")
    with pytest.raises(BodyError):
        framer.eof()
    assert framer.broken


ACCEPTED = {
    "bws-around-equals": b"5;a = b\r\nhello\r\n0\r\n\r\n",
    "tab-bws": b"5;\ta\t=\tb\r\nhello\r\n0\r\n\r\n",
    "several-extensions": b'5;a;b=c;d="e f"\r\nhello\r\n0;z\r\n\r\n',
    "quoted-pair": b'5;a="x\\"y\\\\"\r\nhello\r\n0\r\n\r\n',
    "obs-text-in-quoted": b'5;a="\xe9"\r\nhello\r\n0\r\n\r\n',
    "empty-quoted": b'5;a=""\r\nhello\r\n0\r\n\r\n',
    "trailer-empty-value": b"5\r\nhello\r\n0\r\nX-T:\r\n\r\n",
    "trailer-tab-in-value": b"5\r\nhello\r\n0\r\nX-T:\ta\tb\r\n\r\n",
    "sixteen-digit-size": b"0" * 15 + b"5\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("body", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_framing_inside_the_rfc_grammar_is_accepted(body: bytes) -> None:
    assert_frames(BodyFramer.chunked, body)


def test_consumed_counts_body_bytes_with_their_framing() -> None:
    framer = BodyFramer.chunked()
    assert framer.consumed == 0
    framer.feed(b"5\r\nhel")
    assert framer.consumed == 6
    framer.feed(b"lo\r\n0\r\n\r\n" + NEXT_MESSAGE)
    assert framer.consumed == 15
    length = BodyFramer.length(10)
    length.feed(b"abcd")
    assert (length.consumed, length.known_remaining) == (4, 6)
    assert BodyFramer.chunked().known_remaining is None


@pytest.mark.parametrize(
    "body",
    [b"5\r\nhello\r\n0\r\n\r\n", *HAND_WRITTEN.values()],
)
def test_relayed_bytes_are_exactly_the_input(body: bytes) -> None:
    # Verbatim: the framer says where the body ends and never alters a byte.
    for pieces in splittings(body + NEXT_MESSAGE, trials=5):
        framer = BodyFramer.chunked()
        relayed = bytearray()
        for piece in pieces:
            if framer.done:
                break
            relayed += piece[: framer.feed(piece)]
        assert bytes(relayed) == body


# -- decode: the payload, for the SSH relay -------------------------------------------


def h11_payload(body: bytes) -> bytes:
    """The payload h11 (as a server) reads from a chunked `body`."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(_CHUNKED_HEAD + body)
    out = bytearray()
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        assert event is not h11.NEED_DATA
        if isinstance(event, h11.Data):
            out += event.data
    return bytes(out)


def decode_all(framer: BodyFramer, pieces: Sequence[bytes]) -> tuple[bytes, bytes]:
    """Decode pieces as the relay does: (payload, bytes left over after the body)."""
    payload, rest = bytearray(), bytearray()
    for piece in pieces:
        if framer.done:
            rest += piece
            continue
        used, spans = framer.decode(piece)
        assert used == len(piece) or framer.done
        for span in spans:
            assert isinstance(span, memoryview)
            payload += span
        rest += piece[used:]
    return bytes(payload), bytes(rest)


@pytest.mark.parametrize(
    "body",
    [
        h11_chunked([]),
        h11_chunked([b"hello", b"world!"]),
        h11_chunked([b"\r\n0\r\n\r\n", b"0\r\n\r\n", bytes(range(256)) * 300]),
        h11_chunked([b"data"], [("X-Sum", "abc")]),
        *HAND_WRITTEN.values(),
    ],
)
def test_decode_gives_the_payload_h11_reads_in_every_split(body: bytes) -> None:
    expected = h11_payload(body)
    for pieces in splittings(body + NEXT_MESSAGE, trials=20):
        framer = BodyFramer.chunked()
        assert decode_all(framer, pieces) == (expected, NEXT_MESSAGE)
        assert framer.done
        assert framer.consumed == len(body)


def test_decode_of_a_content_length_body_is_its_bytes() -> None:
    framer = BodyFramer.length(5)
    assert decode_all(framer, byte_by_byte(b"hello" + NEXT_MESSAGE)) == (b"hello", NEXT_MESSAGE)


def test_decode_refuses_what_feed_refuses_and_stays_broken() -> None:
    for bad in (b"5\nhello\r\n0\r\n\r\n", b" 5\r\nhello\r\n", b"5\r\nhello\r\r\n"):
        framer = BodyFramer.chunked()
        with pytest.raises(BodyError):
            decode_all(framer, whole(bad))
        assert framer.broken
        with pytest.raises(BodyError):
            framer.decode(b"0\r\n\r\n")
