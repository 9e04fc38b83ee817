"""HeadReader and the request/response head parsers (h11 underneath).

The parsers report facts (framing, persistence); what the edge does with them
(framers, HEAD, reuse) is tested through the Exchange in test_exchange.py.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence

import h11
import pytest

from edge.proto.http_head import (
    MAX_HEAD,
    HeadError,
    HeadReader,
    parse_request_head,
    parse_response_head,
)

GET_HEAD = (
    b"GET /alice/project.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"
    b"Host: edge.example\r\n"
    b"Git-Protocol: version=2\r\n"
    b"\r\n"
)
POST_HEAD = (
    b"POST /alice/project.git/git-upload-pack HTTP/1.1\r\n"
    b"Host: edge.example\r\n"
    b"Content-Type: application/x-git-upload-pack-request\r\n"
    b"Content-Length: 11\r\n"
    b"\r\n"
)
POST_BODY = b"0000command"


def _splits(data: bytes, trials: int = 40) -> list[list[bytes]]:
    out = [[data], [data[i : i + 1] for i in range(len(data))]]
    for seed in range(trials):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), k=rng.randint(1, min(8, len(data) - 1))))
        bounds = [0, *cuts, len(data)]
        out.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    return out


def _read(reader: HeadReader, pieces: Sequence[bytes]) -> tuple[bytes, bytes]:
    """Feed pieces until the head is complete; the rest includes any later pieces."""
    for i, piece in enumerate(pieces):
        got = reader.feed(piece)
        if got is not None:
            head, rest = got
            return head, rest + b"".join(pieces[i + 1 :])
    raise AssertionError("head never completed")


def _request_error(head: bytes) -> HeadError:
    with pytest.raises(HeadError) as info:
        parse_request_head(head)
    return info.value


def _response_error(head: bytes) -> HeadError:
    with pytest.raises(HeadError) as info:
        parse_response_head(head)
    return info.value


# -- HeadReader ------------------------------------------------------------------


@pytest.mark.parametrize("head", [GET_HEAD, POST_HEAD, b"\r\n\r\n"], ids=["get", "post", "empty"])
def test_head_reader_in_every_split(head: bytes) -> None:
    for pieces in _splits(head):
        reader = HeadReader()
        assert _read(reader, pieces) == (head, b"")
        assert reader.pending == 0


def test_head_reader_returns_the_body_bytes_that_came_with_the_head() -> None:
    trailing = POST_BODY + GET_HEAD  # a body, then a pipelined request
    for pieces in _splits(POST_HEAD + trailing):
        assert _read(HeadReader(), pieces) == (POST_HEAD, trailing)


def test_head_reader_is_silent_until_the_last_byte() -> None:
    reader = HeadReader()
    for i, byte in enumerate(GET_HEAD[:-1]):
        assert reader.feed(bytes([byte])) is None
        assert reader.pending == i + 1
    assert reader.feed(GET_HEAD[-1:]) == (GET_HEAD, b"")
    assert reader.pending == 0


def test_head_reader_finds_the_terminator_split_across_feeds() -> None:
    for cut in range(1, 4):
        reader = HeadReader()
        assert reader.feed(GET_HEAD[:-cut]) is None
        assert reader.feed(GET_HEAD[-cut:] + b"rest") == (GET_HEAD, b"rest")


def test_head_reader_does_not_take_lf_pairs_as_the_end() -> None:
    reader = HeadReader()
    assert reader.feed(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    # LF LF is not CRLF CRLF, and a bare LF is refused as soon as it arrives.
    with pytest.raises(HeadError) as info:
        reader.feed(b"\n\n")
    assert info.value.http_status == 400


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"GET / HTTP/1.1\r\nHost: x\nX: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX: y\n\r\n",
        b"GET / HTTP/1.1\n\r\n\r\n",
        b"\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
def test_head_with_a_bare_lf_is_400_in_every_split(head: bytes) -> None:
    # h11 alone takes these (RFC 9112 2.2 lets a recipient); a proxy must not.
    for pieces in _splits(head):
        reader = HeadReader()
        with pytest.raises(HeadError) as info:
            _read(reader, pieces)
        assert info.value.http_status == 400


def test_bare_lf_after_the_head_belongs_to_the_body() -> None:
    # Only the head is checked: the bytes after it are not the reader's business.
    for pieces in _splits(GET_HEAD + b"\nbody\n"):
        assert _read(HeadReader(), pieces) == (GET_HEAD, b"\nbody\n")


def test_head_reader_reads_pipelined_heads_one_after_another() -> None:
    reader = HeadReader()
    first = reader.feed(GET_HEAD + GET_HEAD)
    assert first == (GET_HEAD, GET_HEAD)
    # The caller owns the rest; the reader starts afresh.
    assert reader.pending == 0
    assert reader.feed(first[1]) == (GET_HEAD, b"")


def test_head_reader_empty_feed_is_no_progress() -> None:
    reader = HeadReader()
    assert reader.feed(b"") is None
    assert reader.pending == 0


def _head_of_size(size: int) -> bytes:
    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    end = b"\r\n\r\n"
    head = start + b"p" * (size - len(start) - len(end)) + end
    assert len(head) == size
    return head


def test_head_of_exactly_max_head_is_accepted() -> None:
    head = _head_of_size(MAX_HEAD)
    for pieces in ([head + b"body"], [head[:100], head[100:] + b"body"]):
        assert _read(HeadReader(), pieces) == (head, b"body")


def test_head_over_max_head_is_431_when_fed_whole() -> None:
    with pytest.raises(HeadError) as info:
        HeadReader().feed(_head_of_size(MAX_HEAD + 1))
    assert info.value.http_status == 431


def test_incomplete_head_over_max_head_is_431_without_waiting_for_the_end() -> None:
    reader = HeadReader()
    assert reader.feed(b"GET / HTTP/1.1\r\n" + b"x" * (MAX_HEAD - 16)) is None
    with pytest.raises(HeadError) as info:
        reader.feed(b"x")
    assert info.value.http_status == 431


def test_head_over_max_head_fed_byte_by_byte_is_431() -> None:
    head = _head_of_size(MAX_HEAD + 1)
    reader = HeadReader()
    with pytest.raises(HeadError) as info:
        for i in range(len(head)):
            reader.feed(head[i : i + 1])
    assert info.value.http_status == 431


def test_large_body_after_a_small_head_is_not_431() -> None:
    body = b"b" * (MAX_HEAD * 4)
    assert HeadReader().feed(GET_HEAD + body) == (GET_HEAD, body)


def test_head_reader_limit_is_configurable() -> None:
    reader = HeadReader(max_head=len(GET_HEAD))
    assert reader.feed(GET_HEAD) == (GET_HEAD, b"")
    with pytest.raises(HeadError) as info:
        HeadReader(max_head=len(GET_HEAD) - 1).feed(GET_HEAD)
    assert info.value.http_status == 431


# -- parse_request_head ----------------------------------------------------------


def test_request_head_fields() -> None:
    head = parse_request_head(GET_HEAD)
    assert head.method == b"GET"
    assert head.target == b"/alice/project.git/info/refs?service=git-upload-pack"
    assert head.http_version == b"1.1"
    assert head.header(b"host") == b"edge.example"
    assert head.header(b"git-protocol") == b"version=2"  # names are lower-cased
    assert head.header(b"Git-Protocol") is None
    assert head.header(b"content-length") is None


def test_request_head_header_returns_the_first_value() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\nAccept: a\r\nAccept: b\r\n\r\n")
    assert head.header(b"accept") == b"a"
    assert [v for k, v in head.headers if k == b"accept"] == [b"a", b"b"]


def test_request_with_content_length_is_length_framed() -> None:
    head = parse_request_head(POST_HEAD)
    assert (head.framing, head.content_length) == ("length", 11)


def test_request_with_chunked_transfer_encoding_is_chunked() -> None:
    head = parse_request_head(
        b"POST /a/b.git/git-receive-pack HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert head.framing == "chunked"


@pytest.mark.parametrize(
    "raw",
    [
        GET_HEAD,
        b"POST /a/b.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ],
)
def test_request_without_framing_says_so(raw: bytes) -> None:
    head = parse_request_head(raw)
    assert (head.framing, head.content_length) == ("none", 0)


@pytest.mark.parametrize(
    ("raw", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: te\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", False),
    ],
)
def test_request_persistent(raw: bytes, keep_alive: bool) -> None:
    assert parse_request_head(raw).persistent is keep_alive


def test_request_with_content_length_and_chunked_is_refused_or_closes() -> None:
    # RFC 9112 section 6.1: such a request "might indicate an attempt to perform
    # request smuggling"; a server MAY reject it, and "Regardless, the server MUST
    # close the connection after responding to such a request".
    raw = (
        b"POST /a/b.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    try:
        head = parse_request_head(raw)
    except HeadError as exc:
        assert exc.http_status == 400
        return
    assert head.framing == "chunked"  # Transfer-Encoding wins over Content-Length
    assert not head.persistent


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET /\r\nHost: x\r\n\r\n",
        b"GET\r\nHost: x\r\n\r\n",
        b"GET / HTTPS/1.1\r\nHost: x\r\n\r\n",
        b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n",  # incomplete
        b"",
        b"\r\n\r\n",
    ],
)
def test_malformed_request_head_is_400(raw: bytes) -> None:
    assert _request_error(raw).http_status == 400


def test_unsupported_transfer_coding_is_refused_with_h11s_status() -> None:
    error = _request_error(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
    )
    assert error.http_status == 501


def test_head_error_carries_a_message() -> None:
    error = _request_error(b"GET /  HTTP/1.1\r\nHost: x\r\n\r\n")
    assert str(error) == error.message
    assert error.message.startswith("bad request")


# -- parse_response_head ---------------------------------------------------------


def _h11_response(headers: list[tuple[str, str]], status: int = 200) -> bytes:
    """A response head as h11 would write it."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    return conn.send(h11.Response(status_code=status, headers=headers)) or b""


def test_chunked_response() -> None:
    raw = _h11_response([("Transfer-Encoding", "chunked"), ("Content-Type", "x/y")])
    head = parse_response_head(raw)
    assert (head.status, head.reason, head.http_version) == (200, b"", b"1.1")
    assert head.header(b"content-type") == b"x/y"
    assert head.persistent
    assert head.framing == "chunked"


def test_content_length_response() -> None:
    head = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
    assert (head.status, head.reason) == (200, b"OK")
    assert head.persistent
    assert (head.framing, head.content_length) == ("length", 12)


def test_unframed_response_says_so() -> None:
    # What that means (a body until close, or none for HEAD/204/304) is the exchange's call.
    head = parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n")
    assert head.framing == "none"
    assert head.persistent


@pytest.mark.parametrize(
    ("raw", "persistent"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", False),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n", False),
    ],
)
def test_response_persistent(raw: bytes, persistent: bool) -> None:
    assert parse_response_head(raw).persistent is persistent


def test_response_status_and_reason_are_kept() -> None:
    head = parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n")
    assert (head.status, head.reason) == (404, b"Not Found")


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n",  # incomplete
        b"",
        b"HTTP/1.1 100 Continue\r\n\r\n",  # interim: not a final answer
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    ],
)
def test_bad_response_head_is_502(raw: bytes) -> None:
    assert _response_error(raw).http_status == 502


def test_response_reader_in_every_split() -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    for pieces in _splits(raw + b"hello", trials=10):
        head_bytes, rest = _read(HeadReader(), pieces)
        assert parse_response_head(head_bytes).status == 200
        assert rest == b"hello"


@pytest.mark.parametrize("ctl", [b"\x01", b"\x08", b"\x0b", b"\x0c", b"\x1b", b"\x7f"])
def test_a_control_character_in_a_header_value_is_a_400(ctl: bytes) -> None:
    # h11 alone accepts these; an escape (\x1b) would also reach a terminal reading the log.
    head = b"GET / HTTP/1.1\r\nHost: edge.example\r\nUser-Agent: git/2" + ctl + b"x\r\n\r\n"
    with pytest.raises(HeadError) as caught:
        parse_request_head(head)
    assert caught.value.http_status == 400  # h11 itself refuses \x0b and \x0c


def test_a_tab_in_a_header_value_is_still_fine() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nHost: edge.example\r\nX-A: a\tb\r\n\r\n")
    assert head.header(b"x-a") == b"a\tb"


def test_a_101_is_taken_only_when_the_request_asked_to_upgrade() -> None:
    raw = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Accept: abc\r\n\r\n"
    )
    with pytest.raises(HeadError):
        parse_response_head(raw)
    response = parse_response_head(raw, upgrade=True)
    assert response.status == 101
    assert response.header(b"upgrade") == b"websocket"
    assert not response.persistent
    # Other interim answers stay refused; final ones parse as ever.
    with pytest.raises(HeadError):
        parse_response_head(b"HTTP/1.1 100 Continue\r\n\r\n", upgrade=True)
    assert (
        parse_response_head(b"HTTP/1.1 426 x\r\nContent-Length: 0\r\n\r\n", upgrade=True).status
        == 426
    )
