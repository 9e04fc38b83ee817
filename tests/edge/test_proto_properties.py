"""Property tests of the edge's sans-IO parsers: routes, heads, body framing, Basic auth.

For any input a parser returns its result or raises its own error; no
repository path or user name it accepts leaves its grammar; the body framer
agrees with h11 (what the nodes parse with) on every body it accepts: the same
end and the same decoded bytes. Example counts: tests/conftest.py.
"""

from __future__ import annotations

import base64
import itertools
import re

import h11
from hypothesis import given
from hypothesis import strategies as st

from edge.proto.basic_auth import (
    BasicCredentials,
    hash_secret,
    new_token,
    parse_basic,
    parse_bearer,
    split_token,
)
from edge.proto.body import BodyError, BodyFramer
from edge.proto.http_head import HeadError, HeadReader, parse_request_head
from edge.proto.http_route import (
    CreateToken,
    GetRepo,
    ListCredentials,
    RepoOp,
    RevokeCredential,
    parse_route,
)
from gitproto.routes import InfoRefs, RouteError, Rpc
from tests.strategies import assert_safe_repo, nasty_path

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


# -- routes ------------------------------------------------------------------------------


@given(
    st.one_of(
        st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE", b"PUT"]), st.binary(max_size=6)
    ),
    st.one_of(
        nasty_path().map(lambda p: p.encode("utf-8", "surrogatepass")),
        nasty_path().map(lambda p: ("/api/repos/" + p).encode("utf-8", "surrogatepass")),
        nasty_path().map(lambda p: ("/api/admin/users/" + p).encode("utf-8", "surrogatepass")),
        st.binary(max_size=64),
    ),
)
def test_route_parses_or_raises_route_error(method: bytes, target: bytes) -> None:
    try:
        route = parse_route(method, target)
    except RouteError as exc:
        assert 400 <= exc.http_status < 500 and exc.message
        return
    if isinstance(route, InfoRefs | Rpc | GetRepo | RepoOp):
        assert_safe_repo(route.repo)
    if isinstance(route, RepoOp) and route.where:
        assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", route.where)
        assert route.where not in (".", "..")
    if isinstance(route, CreateToken | ListCredentials) and route.user is not None:
        assert _USER.fullmatch(route.user) and ".." not in route.user
    if isinstance(route, RevokeCredential):
        pattern = r"SHA256:[A-Za-z0-9+/]{43}" if route.kind == "key" else r"[0-9a-f]{12}"
        assert re.fullmatch(pattern, route.ident)


# -- request heads -------------------------------------------------------------------------

_LINE_ENDS = st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r", b"\r\r\n", b"\n\r"])
_HEADER_LINES = st.sampled_from(
    [
        b"Host: x",
        b"Content-Length: 5",
        b"Content-Length: 05",
        b"Content-Length: 5, 5",
        b"Content-Length: -1",
        b"Content-Length: 99999999999999999999",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: gzip, chunked",
        b"Transfer-Encoding : chunked",
        b"Connection: close",
        b"Authorization: Basic YWxpY2U6cHc=",
        b" folded",
        b"X: a\x00b",
        b"X:\tv ",
        b"Bad Name: v",
        b"",
    ]
)


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"G T", b""]))
    target = draw(st.sampled_from([b"/", b"/alice/pub.git/info/refs", b"*", b"/a b", b"/\x00"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"http/1.1", b""]))
    line = method + b" " + target + b" " + version
    parts = [line]
    for header in draw(st.lists(_HEADER_LINES, max_size=6)):
        parts += [draw(_LINE_ENDS), header]
    return b"".join(parts) + draw(_LINE_ENDS) + draw(_LINE_ENDS) + draw(st.binary(max_size=8))


@given(st.one_of(heads(), st.binary(max_size=120)), st.lists(st.integers(0, 200), max_size=6))
def test_head_reader_gives_the_same_head_however_it_is_split(
    stream: bytes, cuts: list[int]
) -> None:
    def read(pieces: list[bytes]) -> tuple[bytes, bytes] | HeadError | None:
        reader = HeadReader()
        try:
            for i, piece in enumerate(pieces):
                if (done := reader.feed(piece)) is not None:
                    head, rest = done
                    return head, rest + b"".join(pieces[i + 1 :])
        except HeadError as exc:
            return exc
        return None

    whole, split = read([stream]), read(_splits(stream, cuts))
    if isinstance(whole, HeadError):
        assert isinstance(split, HeadError) and split.http_status == whole.http_status
        return
    assert split == whole
    if whole is not None:
        head, rest = whole
        assert head + rest == stream
        assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n\r\n") == 1
        assert re.search(rb"(?<!\r)\n", head) is None  # no bare LF reaches h11


@given(st.one_of(heads(), st.binary(max_size=120)))
def test_head_parses_or_raises_head_error(raw: bytes) -> None:
    try:
        head = parse_request_head(raw)
    except HeadError as exc:
        # 501: a transfer coding other than a lone chunked (RFC 9112 6.1, as h11 says).
        assert 400 <= exc.http_status < 500 or exc.http_status == 501
        # h11's quoted input is not echoed: it may carry the client's credentials.
        assert "b'" not in exc.message and "bytearray" not in exc.message
        return
    assert head.content_length >= 0
    names = [name for name, _ in head.headers]
    if head.framing == "chunked":
        assert b"content-length" not in names
    if head.framing == "length":
        assert b"transfer-encoding" not in names
    assert raw.startswith(head.method + b" " + head.target + b" ")


# -- body framing: the framer against h11 -----------------------------------------------

_HEAD = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
_EXT = st.sampled_from([b"", b";a", b";a=b", b';a="q \\" x"', b" ;a", b"; a = b", b";a=", b";"])
_TRAILER = st.sampled_from([b"X: y\r\n", b"X-Sum:  abc \r\n", b"X:\r\n", b" X: y\r\n", b"X y\r\n"])


@st.composite
def chunked_bodies(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(a chunked encoding, the data it carries), or (it with one byte mangled, None)."""
    data_parts = draw(st.lists(st.binary(min_size=1, max_size=40), max_size=5))
    out = bytearray()
    for part in data_parts:
        size = draw(st.sampled_from(["%x", "%X", "%03x"])) % len(part)
        out += size.encode() + draw(_EXT) + b"\r\n" + part + b"\r\n"
    out += draw(st.sampled_from([b"0", b"000"])) + draw(_EXT) + b"\r\n"
    for trailer in draw(st.lists(_TRAILER, max_size=2)):
        out += trailer
    out += b"\r\n"
    mangled = draw(st.booleans())
    if mangled:
        at = draw(st.integers(0, len(out)))
        byte = draw(st.sampled_from([b"\r", b"\n", b" ", b"\t", b";", b"0", b"f", b"x", b"\x00"]))
        how = draw(st.sampled_from(["insert", "replace", "delete"]))
        if how == "insert":
            out[at:at] = byte
        elif at < len(out):
            out[at : at + 1] = byte if how == "replace" else b""
    return bytes(out), None if mangled else b"".join(data_parts)


def _h11_body(stream: bytes) -> tuple[bytes, int] | None:
    """What a node's h11 decodes from `stream` and where it says the body ends;
    None if the body has not ended within `stream`. Raises h11.RemoteProtocolError."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(_HEAD + stream)
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return None
        if isinstance(event, h11.Data):
            body += event.data
        if isinstance(event, h11.EndOfMessage):
            return bytes(body), len(stream) - len(conn.trailing_data[0])


@given(chunked_bodies(), st.binary(max_size=10), st.lists(st.integers(0, 400), max_size=6))
def test_chunked_framer_agrees_with_h11(
    body: tuple[bytes, bytes | None], after: bytes, cuts: list[int]
) -> None:
    encoded, data = body
    stream = encoded + after
    framer = BodyFramer.chunked()
    taken = 0
    try:
        for piece in _splits(stream, cuts):
            taken += framer.feed(piece)
            if framer.done:
                break
    except BodyError:
        return  # refused: nothing of it is relayed
    try:
        seen = _h11_body(stream)
    except h11.RemoteProtocolError as exc:
        raise AssertionError(f"the framer accepted what h11 refuses: {exc}") from None
    if not framer.done:
        # The framer waits for more: h11 must not have seen the body end either,
        # or the node would take the rest as a second request (smuggling).
        assert seen is None and taken == len(stream)
        return
    assert seen is not None, "the framer ended a body h11 has not"
    decoded, end = seen
    assert end == taken
    assert framer.consumed == taken
    if data is not None:  # not mangled: the data that was encoded is what h11 decodes
        assert taken == len(encoded)
        assert decoded == data


@given(st.integers(0, 200), st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=4))
def test_content_length_framer_agrees_with_h11(length: int, stream: bytes, cuts: list[int]) -> None:
    framer = BodyFramer.length(length)
    taken = sum(framer.feed(piece) for piece in _splits(stream, cuts))
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length + stream)
    body = bytearray()
    ended = False
    while (event := conn.next_event()) is not h11.NEED_DATA:
        if isinstance(event, h11.Data):
            body += event.data
        if isinstance(event, h11.EndOfMessage):
            ended = True
            break
    assert ended == framer.done
    assert bytes(body) == stream[:taken]


# -- Basic credentials and tokens --------------------------------------------------------


@given(
    st.one_of(
        st.none(),
        st.binary(max_size=80),
        st.text(max_size=60).map(lambda t: b"Basic " + t.encode()),
    )
)
def test_basic_parses_or_raises_value_error(header: bytes | None) -> None:
    try:
        creds = parse_basic(header)
    except ValueError:
        return
    if creds is not None:
        assert creds.user and ":" not in creds.user


@given(
    st.text(min_size=1, max_size=30).filter(lambda u: ":" not in u),
    st.text(max_size=30),
    st.sampled_from(["Basic", "basic", "BASIC"]),
)
def test_basic_round_trips(user: str, password: str, scheme: str) -> None:
    value = base64.b64encode(f"{user}:{password}".encode()).decode()
    assert parse_basic(f"{scheme} {value}".encode()) == BasicCredentials(user, password)


@given(st.binary(max_size=60))
def test_bearer_is_none_or_a_value(header: bytes) -> None:
    token = parse_bearer(header)
    assert token is None or (token and token == token.strip())


@given(st.text(max_size=80))
def test_split_token_accepts_only_its_own_format(raw: str) -> None:
    parts = split_token(raw)
    if parts is not None:
        token_id, secret = parts
        assert re.fullmatch(r"[0-9a-f]{12}", token_id) and secret
        assert raw == f"ge_{token_id}_{secret}"


def test_new_tokens_split_back() -> None:
    for _ in range(50):
        token = new_token()
        secret = token.token.removeprefix(f"ge_{token.token_id}_")
        assert split_token(token.token) == (token.token_id, secret)
        assert hash_secret(secret) == token.secret_sha256
