"""The PROXY protocol parser (edge/proto/proxy_header.py): examples, then properties.

Every header is fed whole, byte by byte and with the client's bytes behind it:
the parser must take exactly the header and never look past it, since the
bytes behind are a TLS ClientHello or an SSH banner for someone else.
"""

from __future__ import annotations

import pytest

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
