"""The PROXY protocol policy on real TCP sockets (edge/proxy_accept.py).

What matters past the parser: the header is taken and not one byte more (the
client's bytes behind it reach TLS/SSH/HTTP intact, whether it came in one
segment or byte by byte), a client without a header loses nothing on an
`optional` listener, and each refusal is one log line.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from edge.config import ProxyMode, ProxyProtocol
from edge.proto.proxy_header import encode_v1, encode_v2
from edge.proxy_accept import client_address

CLIENT_BYTES = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
UNTRUSTED = (ipaddress.ip_network("10.255.0.0/16"),)


@asynccontextmanager
async def _connected() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    (listener,) = [
        lst for lst in await trio.open_tcp_listeners(0, host="127.0.0.1") if lst is not None
    ]
    async with listener:
        port = listener.socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listener.accept()
        assert isinstance(server, trio.SocketStream)
        async with client, server:
            yield client, server


async def _read_all(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    with trio.fail_after(5):
        while len(data) < size:
            data += await stream.receive_some(size - len(data))
    return data


async def _serve(
    policy: ProxyProtocol, pieces: list[bytes], *, rest: bytes = CLIENT_BYTES, kept: int = 0
) -> tuple[str | None, bytes]:
    """Send `pieces` one by one (each after the server blocked), then `rest`; read back
    `rest` and the `kept` bytes of the pieces that should still be there."""
    async with _connected() as (client, server):
        result: list[str | None] = []

        async def run() -> None:
            result.append(await client_address(server, policy, "https"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            for piece in pieces:
                # Also proves the server waits on the socket and does not spin on a
                # peek that keeps returning the same bytes.
                with trio.fail_after(5):
                    await trio.testing.wait_all_tasks_blocked()
                await client.send_all(piece)
            await client.send_all(rest)
        (address,) = result
        after = await _read_all(server, kept + len(rest)) if address is not None else b""
        return address, after


OPTIONAL = ProxyProtocol(ProxyMode.OPTIONAL)
REQUIRED = ProxyProtocol(ProxyMode.REQUIRED)


async def test_v1_header_gives_the_client_address_and_nothing_more_is_read() -> None:
    header = encode_v1(("203.0.113.9", 40000), ("127.0.0.1", 443))
    assert await _serve(REQUIRED, [header]) == ("203.0.113.9", CLIENT_BYTES)


async def test_v2_header_byte_by_byte() -> None:
    header = encode_v2(("2001:db8::9", 40000), ("2001:db8::1", 22), tlvs=((0x05, b"id"),))
    pieces = [header[i : i + 1] for i in range(len(header))]
    assert await _serve(OPTIONAL, pieces) == ("2001:db8::9", CLIENT_BYTES)


async def test_v4_mapped_source_is_unmapped() -> None:
    header = encode_v1(("::ffff:203.0.113.9", 1), ("::1", 443))
    assert (await _serve(REQUIRED, [header]))[0] == "203.0.113.9"


async def test_local_header_keeps_the_socket_address() -> None:
    assert await _serve(REQUIRED, [encode_v2(None)]) == ("127.0.0.1", CLIENT_BYTES)


async def test_optional_without_header_loses_no_byte() -> None:
    assert await _serve(OPTIONAL, []) == ("127.0.0.1", CLIENT_BYTES)
    tls_hello = b"\x16\x03\x01\x00\x05hello"
    assert await _serve(OPTIONAL, [], rest=tls_hello) == ("127.0.0.1", tls_hello)


async def test_optional_waits_for_a_signature_prefix_to_be_decided() -> None:
    # "PRO" could begin "PROXY ": nothing may be taken until the next bytes say no.
    address, after = await _serve(OPTIONAL, [b"PRO"], rest=b"PFIND / HTTP/1.1\r\n\r\n", kept=3)
    assert (address, after) == ("127.0.0.1", b"PROPFIND / HTTP/1.1\r\n\r\n")
    address, after = await _serve(OPTIONAL, [b"\r\n"], rest=b"GET / HTTP/1.1\r\n\r\n", kept=2)
    assert (address, after) == ("127.0.0.1", b"\r\nGET / HTTP/1.1\r\n\r\n")
    header = encode_v1(("203.0.113.9", 1), ("127.0.0.1", 443))
    assert await _serve(OPTIONAL, [header[:3], header[3:]]) == ("203.0.113.9", CLIENT_BYTES)


async def test_optional_client_that_waits_for_the_server_gets_no_header() -> None:
    policy = ProxyProtocol(ProxyMode.OPTIONAL, timeout=0.1)
    async with _connected() as (_client, server):
        assert await client_address(server, policy, "ssh") == "127.0.0.1"


async def test_required_without_header_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge.access")
    assert (await _serve(REQUIRED, []))[0] is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "https 127.0.0.1 - connection closed: no PROXY header"


async def test_required_header_cut_short_times_out() -> None:
    policy = ProxyProtocol(ProxyMode.REQUIRED, timeout=0.2)
    async with _connected() as (client, server):
        await client.send_all(b"PROXY TCP4 203.0")
        assert await client_address(server, policy, "https") is None


async def test_untrusted_peer_sending_a_header_is_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge.access")
    header = encode_v1(("203.0.113.9", 1), ("127.0.0.1", 443))
    policy = ProxyProtocol(ProxyMode.OPTIONAL, trusted=UNTRUSTED)
    assert (await _serve(policy, [header]))[0] is None
    # The same peer without a header is an ordinary client.
    assert await _serve(policy, []) == ("127.0.0.1", CLIENT_BYTES)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "https 127.0.0.1 - connection closed: PROXY header from a peer not in proxy_protocol_from"
    ]


async def test_required_refuses_an_untrusted_peer_at_once() -> None:
    policy = ProxyProtocol(ProxyMode.REQUIRED, trusted=UNTRUSTED)
    async with _connected() as (_client, server):
        with trio.fail_after(1):  # no byte is awaited
            assert await client_address(server, policy, "https") is None


async def test_bad_header_is_refused_and_logged_escaped(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "edge.access")
    assert (await _serve(REQUIRED, [b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n"]))[0] is None
    (line,) = [r.getMessage() for r in caplog.records]
    assert "bad PROXY header: v1 port is not a number" in line and "\n" not in line


async def test_off_reads_nothing() -> None:
    header = encode_v1(("203.0.113.9", 1), ("127.0.0.1", 443))
    address, after = await _serve(ProxyProtocol(), [], rest=header)
    assert (address, after) == ("127.0.0.1", header)
