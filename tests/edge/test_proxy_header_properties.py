"""Property tests of the PROXY protocol parser (edge/proto/proxy_header.py).

For any input, whole or in pieces, it parses or raises ProxyHeaderError; a header it
accepts is decided by its own bytes alone; a header that was sent reads back with its
addresses and leaves the bytes behind it alone. Example counts: tests/conftest.py.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from edge.proto.proxy_header import (
    V1_MAX_SIZE,
    V2_MAX_SIZE,
    V2_SIGNATURE,
    Command,
    ProxyHeaderError,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
    parse_proxy_header,
)

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
