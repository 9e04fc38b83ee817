"""The PROXY protocol header (HAProxy's proxy-protocol.txt, versions 1 and 2), sans-IO.

A load balancer in TCP mode (HAProxy, AWS NLB, ...) that connects to the edge
writes one header before the client's first byte: the client's address, which
the edge's socket would otherwise hide. This module only parses it.
`parse_proxy_header(data)` looks at the bytes received so far and answers
`None` (need more), a `ProxyHeader` whose `size` says how many bytes it took,
or raises `ProxyHeaderError`; bytes after `size` are the client's own (a TLS
ClientHello, an SSH banner, an HTTP request) and are never looked at.
`ProxyHeaderReader` is the same, fed in pieces.

Bounded: a v1 header is at most 107 bytes with its CRLF (spec 2.1), so
anything longer without a CRLF is refused as soon as 107 bytes are in; a v2
header announces its length in bytes 15-16, checked against `V2_MAX_SIZE`
before a byte of its body is awaited.

What the edge needs is the client's address. Where the header says there is
none to use, `source` is None and the socket's peer address stands: v1
`UNKNOWN`, v2 `LOCAL` (the balancer's own health check), and v2 families
AF_UNSPEC and AF_UNIX (spec 2.2: the receiver uses the real connection's
addresses). v2 TLVs are walked so that one overrunning the header is refused,
and kept (type, value) uninterpreted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum, StrEnum

V1_PREFIX = b"PROXY "
V1_MAX_SIZE = 107
"""Spec 2.1: "PROXY UNKNOWN" with two IPv6 addresses and ports is 107 bytes, CRLF included."""
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
V2_MAX_SIZE = 4096
"""Addresses (at most 216 bytes for AF_UNIX) and TLVs; a balancer's TLVs (AWS's VPC
endpoint id, HAProxy's SSL and unique-id TLVs) take a few hundred bytes. The spec
allows 16 + 65535; this edge refuses more than 4 KiB rather than hold it per connection."""

_V2_ADDRESS_SIZES = {1: 12, 2: 36, 3: 216}  # AF_INET, AF_INET6, AF_UNIX (spec 2.2)


class ProxyHeaderError(ValueError):
    """Not a well-formed PROXY header. The message is fixed text, safe to log."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Command(StrEnum):
    PROXY = "PROXY"
    """Relayed for a client: the addresses are the client's (when `source` is set)."""
    LOCAL = "LOCAL"
    """v2: the balancer's own connection (a health check): use the socket's addresses."""


class Family(StrEnum):
    INET = "TCP4"
    INET6 = "TCP6"
    UNIX = "UNIX"
    UNSPEC = "UNKNOWN"


Address = tuple[str, int]


@dataclass(frozen=True)
class ProxyHeader:
    version: int
    command: Command
    family: Family
    source: Address | None
    """The client's address and port; None: keep the socket's peer address."""
    destination: Address | None
    size: int
    """Bytes the header took, from the first: the client's data starts here."""
    tlvs: tuple[tuple[int, bytes], ...] = ()


class Signature(Enum):
    """What the first bytes of a connection say, for `optional` listeners."""

    PROXY = "proxy"
    NOT_PROXY = "not-proxy"
    UNDECIDED = "undecided"
    """A strict prefix of a signature: wait for `decided_at` bytes."""


def signature(data: bytes) -> Signature:
    """Whether `data` begins a PROXY header (v1 or v2), cannot, or cannot tell yet."""
    for sig in (V1_PREFIX, V2_SIGNATURE):
        if data.startswith(sig):
            return Signature.PROXY
        if sig.startswith(data):
            return Signature.UNDECIDED
    return Signature.NOT_PROXY


def decided_at(data: bytes) -> int:
    """How many bytes `signature()` needs to decide, given an undecided prefix."""
    if not data:
        return 1
    return len(V1_PREFIX) if V1_PREFIX.startswith(data) and data else len(V2_SIGNATURE)


def parse_proxy_header(data: bytes) -> ProxyHeader | None:
    """The header at the start of `data`, or None if more bytes are needed."""
    match signature(data[: len(V2_SIGNATURE)]):
        case Signature.UNDECIDED:
            return None
        case Signature.NOT_PROXY:
            raise ProxyHeaderError("no PROXY protocol signature")
    if data.startswith(V1_PREFIX):
        return _parse_v1(data)
    return _parse_v2(data)


class ProxyHeaderReader:
    """`parse_proxy_header` fed in pieces; `trailing` holds the bytes after the header."""

    def __init__(self) -> None:
        self._buffer = b""
        self.header: ProxyHeader | None = None
        self.trailing = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        if self.header is not None:
            self.trailing += data
            return self.header
        self._buffer += data
        header = parse_proxy_header(self._buffer)
        if header is not None:
            self.header = header
            self.trailing = self._buffer[header.size :]
            self._buffer = b""
        return header

    def eof(self) -> None:
        """The peer closed: an unfinished header is an error."""
        if self.header is None:
            raise ProxyHeaderError("connection closed inside the PROXY header")


# -- version 1: one text line ------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader | None:
    window = data[:V1_MAX_SIZE]
    end = window.find(b"\r\n")
    if end < 0:
        if len(window) >= V1_MAX_SIZE:
            raise ProxyHeaderError("v1 header longer than 107 bytes")
        if not _v1_text(window.removesuffix(b"\r")):
            raise ProxyHeaderError("v1 header has a byte that is not printable ASCII")
        return None
    line = window[:end]
    if not _v1_text(line):
        raise ProxyHeaderError("v1 header has a byte that is not printable ASCII")
    fields = line.split(b" ")
    size = end + 2
    if fields[1:2] == [b"UNKNOWN"]:
        # Spec 2.1: the rest of the line is to be ignored; use the socket's addresses.
        return ProxyHeader(1, Command.PROXY, Family.UNSPEC, None, None, size)
    if len(fields) != 6:
        raise ProxyHeaderError("v1 header needs protocol, two addresses and two ports")
    proto, src, dst, sport, dport = fields[1:]
    if proto == b"TCP4":
        family, parse_ip = Family.INET, _ipv4
    elif proto == b"TCP6":
        family, parse_ip = Family.INET6, _ipv6
    else:
        raise ProxyHeaderError("v1 protocol is not TCP4, TCP6 or UNKNOWN")
    source = (parse_ip(src), _port(sport))
    destination = (parse_ip(dst), _port(dport))
    return ProxyHeader(1, Command.PROXY, family, source, destination, size)


def _v1_text(line: bytes) -> bool:
    return all(0x20 <= byte < 0x7F for byte in line)


def _ipv4(text: bytes) -> str:
    try:
        return str(ipaddress.IPv4Address(text.decode("ascii")))
    except ValueError:
        raise ProxyHeaderError("v1 address is not an IPv4 address") from None


def _ipv6(text: bytes) -> str:
    # ipaddress takes a scope ("fe80::1%eth0"); a header has no business naming
    # one of this host's interfaces.
    if b"%" in text:
        raise ProxyHeaderError("v1 address is not an IPv6 address")
    try:
        return str(ipaddress.IPv6Address(text.decode("ascii")))
    except ValueError:
        raise ProxyHeaderError("v1 address is not an IPv6 address") from None


def _port(text: bytes) -> int:
    # Spec 2.1: decimal 0-65535; a leading zero would be another spelling of it.
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text[0:1] == b"0"):
        raise ProxyHeaderError("v1 port is not a number from 0 to 65535")
    port = int(text)
    if port > 65535:
        raise ProxyHeaderError("v1 port is not a number from 0 to 65535")
    return port


# -- version 2: binary -------------------------------------------------------------------


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if len(data) < V2_FIXED:
        return None
    version, command_bits = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError("v2 header with a version other than 2")
    if command_bits > 1:
        raise ProxyHeaderError("v2 command is neither LOCAL nor PROXY")
    family_bits, transport = data[13] >> 4, data[13] & 0x0F
    if family_bits > 3 or transport > 2:
        raise ProxyHeaderError("v2 address family or transport unknown")
    length = int.from_bytes(data[14:16], "big")
    size = V2_FIXED + length
    if size > V2_MAX_SIZE:
        raise ProxyHeaderError(f"v2 header longer than {V2_MAX_SIZE} bytes")
    if len(data) < size:
        return None
    body = data[V2_FIXED:size]
    address_size = _V2_ADDRESS_SIZES.get(family_bits, 0)
    if len(body) < address_size:
        raise ProxyHeaderError("v2 header shorter than its addresses")
    tlvs = _tlvs(body[address_size:])
    family = (Family.UNSPEC, Family.INET, Family.INET6, Family.UNIX)[family_bits]
    if command_bits == 0:
        # Spec 2.2: LOCAL's addresses, if any, are to be ignored.
        return ProxyHeader(2, Command.LOCAL, family, None, None, size, tlvs)
    if family in (Family.UNSPEC, Family.UNIX):
        return ProxyHeader(2, Command.PROXY, family, None, None, size, tlvs)
    if transport != 1:
        # A UDP (or unspecified) flow described on a TCP connection: not ours to trust.
        raise ProxyHeaderError("v2 PROXY header for a transport other than TCP")
    half = (address_size - 4) // 2
    ip_type = ipaddress.IPv4Address if family is Family.INET else ipaddress.IPv6Address
    src, dst = str(ip_type(body[:half])), str(ip_type(body[half : 2 * half]))
    sport = int.from_bytes(body[2 * half : 2 * half + 2], "big")
    dport = int.from_bytes(body[2 * half + 2 : address_size], "big")
    return ProxyHeader(2, Command.PROXY, family, (src, sport), (dst, dport), size, tlvs)


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """Spec 2.2.7: type (1 byte), length (2, big-endian), value; none may overrun the header."""
    tlvs = []
    at = 0
    while at < len(data):
        if len(data) - at < 3:
            raise ProxyHeaderError("v2 TLV cut short")
        length = int.from_bytes(data[at + 1 : at + 3], "big")
        if at + 3 + length > len(data):
            raise ProxyHeaderError("v2 TLV overruns the header")
        tlvs.append((data[at], data[at + 3 : at + 3 + length]))
        at += 3 + length
    return tuple(tlvs)


def encode_v1(source: Address, destination: Address) -> bytes:
    """A v1 header (for tests and tools): TCP4 or TCP6 by the source address."""
    proto = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {proto} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: Address | None,
    destination: Address | None = None,
    *,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> bytes:
    """A v2 header (for tests and tools): PROXY with addresses, or LOCAL when `source` is None."""
    tail = b"".join(bytes([kind]) + len(value).to_bytes(2, "big") + value for kind, value in tlvs)
    if source is None:
        return V2_SIGNATURE + b"\x20\x00" + len(tail).to_bytes(2, "big") + tail
    dst = destination or (("::" if ":" in source[0] else "0.0.0.0"), 0)
    src_ip, dst_ip = ipaddress.ip_address(source[0]), ipaddress.ip_address(dst[0])
    family = b"\x11" if src_ip.version == 4 else b"\x21"
    body = (
        src_ip.packed
        + dst_ip.packed
        + source[1].to_bytes(2, "big")
        + dst[1].to_bytes(2, "big")
        + tail
    )
    return V2_SIGNATURE + b"\x21" + family + len(body).to_bytes(2, "big") + body
