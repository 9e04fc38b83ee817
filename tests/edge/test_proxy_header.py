"""The PROXY protocol parser (edge/proto/proxy_header.py): examples, then properties.

Every header is fed whole, byte by byte and with the client's bytes behind it:
the parser must take exactly the header and never look past it, since the
bytes behind are a TLS ClientHello or an SSH banner for someone else.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.proto.proxy_header import (
    V1_MAX_SIZE,
    V2_MAX_SIZE,
    V2_SIGNATURE,
    Command,
    Family,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
    Signature,
    decided_at,
    encode_v1,
    encode_v2,
    parse_proxy_header,
    signature,
)

TRAILING = b"\x16\x03\x01\x02\x00SSH-2.0-OpenSSH_9.2\r\n"

V1_TCP4 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n"
V1_TCP6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 22\r\n"
V1_UNKNOWN = b"PROXY UNKNOWN ffff:f::f ffff:f::f 65535 65535\r\n"
V1_LONGEST = (
    b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    b" ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
)


def _fed_byte_by_byte(data: bytes) -> tuple[ProxyHeader, bytes]:
    reader = ProxyHeaderReader()
    header = None
    for i in range(len(data)):
        got = reader.feed(data[i : i + 1])
        if header is None and got is not None:
            assert reader.header is got
        header = got
    assert header is not None
    return header, reader.trailing


def _every_way(data: bytes) -> ProxyHeader:
    """Parsed whole, whole with trailing bytes, and byte by byte: always the same."""
    whole = parse_proxy_header(data)
    assert whole is not None and whole.size == len(data)
    assert parse_proxy_header(data + TRAILING) == whole
    for cut in range(len(data)):
        assert parse_proxy_header(data[:cut]) is None
    by_byte, trailing = _fed_byte_by_byte(data + TRAILING)
    assert by_byte == whole and trailing == TRAILING
    return whole


def test_v1_tcp4() -> None:
    header = _every_way(V1_TCP4)
    assert (header.version, header.command, header.family) == (1, Command.PROXY, Family.INET)
    assert header.source == ("192.0.2.7", 56324)
    assert header.destination == ("198.51.100.1", 443)


def test_v1_tcp6() -> None:
    header = _every_way(V1_TCP6)
    assert header.family is Family.INET6
    assert header.source == ("2001:db8::7", 56324)


def test_v1_unknown_keeps_the_socket_address() -> None:
    header = _every_way(V1_UNKNOWN)
    assert header.family is Family.UNSPEC and header.source is None
    assert _every_way(b"PROXY UNKNOWN\r\n").source is None


def test_v1_longest_header_is_accepted_and_one_more_byte_is_not() -> None:
    assert _every_way(V1_LONGEST).source == ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    # The spec's worst case: UNKNOWN followed by two full IPv6 addresses and ports.
    worst = V1_LONGEST.replace(b"TCP6", b"UNKNOWN")
    assert len(worst) == V1_MAX_SIZE
    assert _every_way(worst).source is None
    too_long = b"PROXY UNKNOWN " + b"x" * 200
    with pytest.raises(ProxyHeaderError, match="longer than 107"):
        parse_proxy_header(too_long[:V1_MAX_SIZE])
    assert parse_proxy_header(too_long[: V1_MAX_SIZE - 1]) is None


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n",
        b"PROXY TCP4 192.0.2.7  198.51.100.1 56324 443\r\n",
        b"PROXY TCP4 192.0.2.07 198.51.100.1 56324 443\r\n",
        b"PROXY TCP4 2001:db8::7 198.51.100.1 56324 443\r\n",
        b"PROXY TCP6 192.0.2.7 2001:db8::1 56324 443\r\n",
        b"PROXY TCP6 fe80::1%eth0 2001:db8::1 56324 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 0443 443\r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 -1 443\r\n",
        b"PROXY UDP4 192.0.2.7 198.51.100.1 56324 443\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\n",
        b"PROXY TCP4 192.0.2.7\x00 198.51.100.1 56324 443\r\n",
    ],
)
def test_v1_malformed_is_refused(line: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(line)


def test_v1_bad_byte_is_refused_before_the_line_ends() -> None:
    with pytest.raises(ProxyHeaderError, match="printable"):
        parse_proxy_header(b"PROXY TCP4 192.0.2.7\n")


def test_v2_tcp4_and_tcp6() -> None:
    four = _every_way(encode_v2(("192.0.2.7", 56324), ("198.51.100.1", 443)))
    assert (four.version, four.command, four.family) == (2, Command.PROXY, Family.INET)
    assert four.source == ("192.0.2.7", 56324) and four.destination == ("198.51.100.1", 443)
    six = _every_way(encode_v2(("2001:db8::7", 1), ("2001:db8::1", 22)))
    assert six.family is Family.INET6 and six.source == ("2001:db8::7", 1)


def test_v2_tlvs_are_skipped_and_kept() -> None:
    tlvs = ((0x05, b"unique-id"), (0x04, b""), (0xEA, b"vpce-0123"))
    header = _every_way(encode_v2(("192.0.2.7", 5), ("192.0.2.1", 443), tlvs=tlvs))
    assert header.source == ("192.0.2.7", 5) and header.tlvs == tlvs


def test_v2_local_keeps_the_socket_address() -> None:
    header = _every_way(encode_v2(None))
    assert header.command is Command.LOCAL and header.source is None
    # LOCAL with addresses (HAProxy's health checks may send them): still ignored.
    with_addresses = bytearray(encode_v2(("192.0.2.7", 5), ("192.0.2.1", 443)))
    with_addresses[12] = 0x20
    assert _every_way(bytes(with_addresses)).source is None


def test_v2_unspec_and_unix_keep_the_socket_address() -> None:
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert _every_way(unspec).family is Family.UNSPEC
    unix = V2_SIGNATURE + b"\x21\x31" + (216).to_bytes(2, "big") + b"/s\x00".ljust(216, b"\x00")
    header = _every_way(unix)
    assert header.family is Family.UNIX and header.source is None


def _v2(ver_cmd: int, fam: int, body: bytes) -> bytes:
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + len(body).to_bytes(2, "big") + body


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_v2(0x11, 0x11, bytes(12)), "version"),
        (_v2(0x22, 0x11, bytes(12)), "command"),
        (_v2(0x21, 0x41, bytes(12)), "family"),
        (_v2(0x21, 0x13, bytes(12)), "family"),
        (_v2(0x21, 0x11, bytes(11)), "shorter than its addresses"),
        (_v2(0x21, 0x21, bytes(35)), "shorter than its addresses"),
        (_v2(0x21, 0x12, bytes(12)), "transport"),
        (_v2(0x21, 0x10, bytes(12)), "transport"),
        (_v2(0x21, 0x11, bytes(12) + b"\x05\x00"), "cut short"),
        (_v2(0x21, 0x11, bytes(12) + b"\x05\x00\x09abc"), "overruns"),
    ],
)
def test_v2_malformed_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(ProxyHeaderError, match=why):
        parse_proxy_header(data)


def test_v2_length_is_checked_before_the_body_arrives() -> None:
    fixed = V2_SIGNATURE + b"\x21\x11" + (V2_MAX_SIZE - 16 + 1).to_bytes(2, "big")
    with pytest.raises(ProxyHeaderError, match="longer than"):
        parse_proxy_header(fixed)
    biggest = encode_v2(("192.0.2.7", 5), tlvs=((0x04, bytes(V2_MAX_SIZE - 31)),))
    assert len(biggest) == V2_MAX_SIZE
    assert _every_way(biggest).source == ("192.0.2.7", 5)


def test_signature_decides_as_early_as_it_can() -> None:
    assert signature(b"") is Signature.UNDECIDED and decided_at(b"") == 1
    assert signature(b"PRO") is Signature.UNDECIDED and decided_at(b"PRO") == 6
    assert signature(b"PROPFIND") is Signature.NOT_PROXY
    assert signature(b"\r\n\r\n") is Signature.UNDECIDED and decided_at(b"\r\n\r\n") == 12
    assert signature(b"\r\n\r\nX") is Signature.NOT_PROXY
    assert signature(b"\x16\x03\x01") is Signature.NOT_PROXY
    assert signature(b"SSH-2.0-") is Signature.NOT_PROXY
    assert signature(b"GET / HTTP/1.1\r\n") is Signature.NOT_PROXY
    assert signature(V1_TCP4) is signature(encode_v2(None)) is Signature.PROXY


def test_not_a_header_is_refused() -> None:
    for data in (b"GET / HTTP/1.1\r\n", b"SSH-2.0-x\r\n", b"\x16\x03\x01\x00"):
        with pytest.raises(ProxyHeaderError, match="signature"):
            parse_proxy_header(data)


def test_eof_inside_a_header_is_an_error() -> None:
    reader = ProxyHeaderReader()
    assert reader.feed(V1_TCP4[:10]) is None
    with pytest.raises(ProxyHeaderError, match="closed"):
        reader.eof()


# -- properties (example counts: tests/conftest.py) --------------------------------------


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


def _fuzzed(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, value in flips:
        if out:
            out[at % len(out)] = value
    return bytes(out)


_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.integers(0, 65535)
_endpoint = st.one_of(st.tuples(_ipv4, _port), st.tuples(_ipv6, _port))
_tlv = st.tuples(st.integers(0, 255), st.binary(max_size=40))


@st.composite
def _headers(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from(["v4", "v6"]))
    ip = _ipv4 if family == "v4" else _ipv6
    src, dst = (draw(st.tuples(ip, _port)) for _ in range(2))
    if draw(st.booleans()):
        return encode_v1(src, dst)
    return encode_v2(src, dst, tlvs=tuple(draw(st.lists(_tlv, max_size=4))))


_anything = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=120).map(lambda b: b"PROXY " + b),
    st.binary(max_size=300).map(lambda b: V2_SIGNATURE + b),
    st.tuples(_headers(), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)))).map(
        lambda t: _fuzzed(*t)
    ),
)


@given(_anything, st.lists(st.integers(0, 400), max_size=8))
def test_any_input_parses_or_raises_its_own_error(data: bytes, cuts: list[int]) -> None:
    try:
        whole = parse_proxy_header(data)
    except ProxyHeaderError:
        whole = None
        refused = True
    else:
        refused = False
    if whole is not None:
        assert 0 < whole.size <= len(data)
        assert whole.size <= (V1_MAX_SIZE if whole.version == 1 else V2_MAX_SIZE)
        # Only the header's own bytes decide it.
        assert parse_proxy_header(data[: whole.size]) == whole
    reader = ProxyHeaderReader()
    try:
        for piece in _splits(data, cuts):
            fed = reader.feed(piece)
    except ProxyHeaderError:
        assert refused or whole is None
        return
    assert fed == whole
    if whole is not None:
        assert reader.trailing == data[whole.size :]


@given(_headers(), st.binary(max_size=64), st.lists(st.integers(0, 400), max_size=8))
def test_a_sent_header_reads_back_with_its_addresses(
    header: bytes, trailing: bytes, cuts: list[int]
) -> None:
    parsed = parse_proxy_header(header + trailing)
    assert parsed is not None and parsed.size == len(header)
    assert parsed.source is not None and parsed.command is Command.PROXY
    reader = ProxyHeaderReader()
    for piece in _splits(header + trailing, cuts):
        fed = reader.feed(piece)
    assert fed == parsed and reader.trailing == trailing
