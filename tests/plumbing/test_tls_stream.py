"""SocketTLSStream against real TLS clients (trio.SSLStream over TCP, trustme CA)."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import os
import socket
import ssl
import struct
import termios
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trustme

from plumbing.tls import DEFAULT_RECEIVE_SIZE, SocketTLSStream, _Readiness

MiB = 1024 * 1024
TLS_RECORD = 16 * 1024
ClientStream = trio.SSLStream[trio.SocketStream]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    # The same settings as edge.app.tls_context.
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def client_ctx(ca: trustme.CA, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


@asynccontextmanager
async def tcp_pair() -> AsyncIterator[tuple[trio.SocketStream, trio.SocketStream]]:
    """(accepted server side, client side) of one loopback TCP connection."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    try:
        yield server, client
    finally:
        # Nested: under an outer cancellation aclose_forcefully raises Cancelled.
        try:
            await trio.aclose_forcefully(client)
        finally:
            await trio.aclose_forcefully(server)


@asynccontextmanager
async def tls_pair(
    server_ctx: ssl.SSLContext,
    ctx: ssl.SSLContext,
    *,
    https_compatible_client: bool = True,
) -> AsyncIterator[tuple[SocketTLSStream, ClientStream]]:
    async with tcp_pair() as (server_tcp, client_tcp):
        server = SocketTLSStream(server_tcp, server_ctx)
        client = trio.SSLStream(
            client_tcp,
            ctx,
            server_hostname="localhost",
            https_compatible=https_compatible_client,
        )
        try:
            with trio.fail_after(5):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.do_handshake)
                    await client.do_handshake()
            yield server, client
        finally:
            try:
                await trio.aclose_forcefully(client)
            finally:
                await trio.aclose_forcefully(server)


async def receive_exactly(stream: trio.abc.ReceiveStream, n: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        data = await stream.receive_some()
        assert data, f"EOF after {got} of {n} bytes"
        chunks.append(bytes(data))
        got += len(data)
    assert got == n
    return b"".join(chunks)


async def send_in_chunks(stream: trio.abc.SendStream, data: bytes, chunk: int = 256 * 1024) -> None:
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        await stream.send_all(view[start : start + chunk])


def kernel_queued(fd: int) -> int:
    """Bytes waiting in the kernel's receive queue of a socket (FIONREAD)."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0])


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_small_messages_both_ways(
    ca: trustme.CA, server_ctx: ssl.SSLContext, version: ssl.TLSVersion
) -> None:
    with trio.fail_after(10):
        async with tls_pair(server_ctx, client_ctx(ca, version)) as (server, client):
            assert server.socket.version() == client.version()
            assert server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert server.socket.selected_alpn_protocol() is None  # the client offered none
            await client.send_all(b"ping")
            assert await receive_exactly(server, 4) == b"ping"
            await server.send_all(b"pong")
            assert await receive_exactly(client, 4) == b"pong"
            await server.send_all(b"")  # allowed, sends nothing
            await client.send_all(b"!")
            assert await server.receive_some(1) == b"!"


async def test_20_mib_each_way_arrives_intact(ca: trustme.CA, server_ctx: ssl.SSLContext) -> None:
    upload = os.urandom(20 * MiB)
    download = os.urandom(20 * MiB)
    with trio.fail_after(60):
        async with tls_pair(server_ctx, client_ctx(ca)) as (server, client):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_in_chunks, client, upload)
                received = await receive_exactly(server, len(upload))
            assert hashlib.sha256(received).digest() == hashlib.sha256(upload).digest()
            async with trio.open_nursery() as nursery:
                # One send_all call for the whole 20 MiB: many want-write retries.
                nursery.start_soon(server.send_all, download)
                received = await receive_exactly(client, len(download))
            assert hashlib.sha256(received).digest() == hashlib.sha256(download).digest()


async def test_full_duplex_send_and_receive_from_two_tasks(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    """What proxy.py does: one task uploads the request while another downloads."""
    upload = os.urandom(20 * MiB)
    download = os.urandom(20 * MiB)
    results: dict[str, bytes] = {}

    async def collect(name: str, stream: trio.abc.ReceiveStream, n: int) -> None:
        results[name] = await receive_exactly(stream, n)

    with trio.fail_after(60):
        async with (
            tls_pair(server_ctx, client_ctx(ca)) as (server, client),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(send_in_chunks, client, upload)
            nursery.start_soon(collect, "client", client, len(download))
            nursery.start_soon(send_in_chunks, server, download)
            nursery.start_soon(collect, "server", server, len(upload))
    assert hashlib.sha256(results["server"]).digest() == hashlib.sha256(upload).digest()
    assert hashlib.sha256(results["client"]).digest() == hashlib.sha256(download).digest()


async def test_one_receive_returns_every_record_already_arrived(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    payload = os.urandom(1 * MiB)
    with trio.fail_after(20):
        async with tls_pair(server_ctx, client_ctx(ca)) as (server, client):
            # Room for the whole payload: a receive window stays at its initial
            # 64 KiB or so while nobody reads.
            server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, payload)
                # Wait until the kernel holds more than a full receive of records.
                while kernel_queued(server.socket.fileno()) < DEFAULT_RECEIVE_SIZE + 64 * 1024:
                    await trio.sleep(0.005)
                first = await server.receive_some()
                assert len(first) == DEFAULT_RECEIVE_SIZE > TLS_RECORD
                # A limit that ends inside a record: the rest stays for the next call.
                second = await server.receive_some(100_000)
                assert len(second) == 100_000
                rest = await receive_exactly(server, len(payload) - len(first) - len(second))
            assert first + second + rest == payload


@pytest.mark.parametrize("close_notify", [False, True])
async def test_client_hangup_is_eof(
    ca: trustme.CA, server_ctx: ssl.SSLContext, close_notify: bool
) -> None:
    with trio.fail_after(10):
        async with tls_pair(
            server_ctx, client_ctx(ca), https_compatible_client=not close_notify
        ) as (server, client):
            await client.send_all(b"last words")
            if close_notify:
                await client.aclose()
            else:
                # https_compatible: just close the TCP connection, as git clients do.
                await client.transport_stream.aclose()
            assert await receive_exactly(server, 10) == b"last words"
            assert await server.receive_some() == b""
            assert await server.receive_some() == b""


async def test_garbage_instead_of_client_hello_fails_handshake_quickly(
    server_ctx: ssl.SSLContext,
) -> None:
    async with tcp_pair() as (server_tcp, client_tcp):
        server = SocketTLSStream(server_tcp, server_ctx)
        await client_tcp.send_all(b"GET / HTTP/1.1\r\nHost: edge.example\r\n\r\n")
        with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()
        with pytest.raises(trio.BrokenResourceError):
            await server.receive_some()
        await server.aclose()


async def test_hangup_during_handshake_is_broken(server_ctx: ssl.SSLContext) -> None:
    async with tcp_pair() as (server_tcp, client_tcp):
        server = SocketTLSStream(server_tcp, server_ctx)
        await client_tcp.aclose()
        with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
            await server.do_handshake()
        await server.aclose()


async def test_cancelled_send_breaks_stream_and_fd_is_closed_once(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    gc.collect()  # leftovers of earlier tests are theirs, not this one's
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with trio.fail_after(10):
            async with tcp_pair() as (server_tcp, client_tcp):
                server = SocketTLSStream(server_tcp, server_ctx)
                fd = server.socket.fileno()
                assert server_tcp.socket.fileno() == -1  # the fd changed owner
                client = trio.SSLStream(client_tcp, client_ctx(ca), server_hostname="localhost")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server.do_handshake)
                    await client.do_handshake()
                async with trio.open_nursery() as nursery:
                    # The client reads nothing, so this send blocks mid-stream.
                    nursery.start_soon(server.send_all, os.urandom(64 * MiB))
                    await trio.testing.wait_all_tasks_blocked()
                    nursery.cancel_scope.cancel()
                # OpenSSL would take a buffer at least as long as the interrupted
                # one for a retry of it and skip the part it had sent.
                with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
                    await server.send_all(os.urandom(64 * MiB))
                with pytest.raises(trio.BrokenResourceError):
                    await server.receive_some()
                await server.aclose()
                with pytest.raises(OSError):
                    os.fstat(fd)
                # Give the number to another file: closing again, or closing the
                # SocketStream the fd came from, must leave that file alone.
                devnull = os.open(os.devnull, os.O_RDONLY)
                try:
                    os.dup2(devnull, fd)
                    await server.aclose()
                    await server_tcp.aclose()
                    with pytest.raises(trio.ClosedResourceError):
                        await server.receive_some()
                    with pytest.raises(trio.ClosedResourceError):
                        await server.send_all(b"x")
                    del server, server_tcp
                    gc.collect()
                    os.fstat(fd)  # still open
                finally:
                    os.close(fd)
                    os.close(devnull)
                await trio.aclose_forcefully(client)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_aclose_wakes_a_task_waiting_to_receive(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(10):
        async with tls_pair(server_ctx, client_ctx(ca)) as (server, _client):

            async def receive_until_closed() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await server.receive_some()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(receive_until_closed)
                await trio.testing.wait_all_tasks_blocked()
                await server.aclose()


async def test_two_concurrent_receives_or_sends_are_busy(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(10):
        async with (
            tls_pair(server_ctx, client_ctx(ca)) as (server, _client),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(server.receive_some)
            nursery.start_soon(server.send_all, os.urandom(64 * MiB))  # the client reads nothing
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.BusyResourceError):
                await server.receive_some()
            with pytest.raises(trio.BusyResourceError):
                await server.send_all(b"x")
            with pytest.raises(trio.BusyResourceError):
                await server.wait_send_all_might_not_block()
            nursery.cancel_scope.cancel()


async def test_cancelled_receive_leaves_stream_usable(
    ca: trustme.CA, server_ctx: ssl.SSLContext
) -> None:
    with trio.fail_after(10):
        async with tls_pair(server_ctx, client_ctx(ca)) as (server, client):
            with trio.move_on_after(0.05) as scope:
                await server.receive_some()
            assert scope.cancelled_caught
            await client.send_all(b"still here")
            assert await receive_exactly(server, 10) == b"still here"
            await server.send_all(b"me too")
            assert await receive_exactly(client, 6) == b"me too"


async def test_second_task_waiting_on_one_direction_queues_behind_the_first() -> None:
    """trio allows one waiter per fd direction; the receiver needing to write (an
    alert) while the sender waits for writability must queue, not fail."""
    near, far = socket.socketpair()
    with near, far:
        near.setblocking(False)
        readable = _Readiness(near.fileno(), trio.lowlevel.wait_readable)
        woken: list[str] = []

        async def wait(name: str) -> None:
            await readable.wait()
            woken.append(name)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait, "first")
                nursery.start_soon(wait, "second")
                await trio.testing.wait_all_tasks_blocked()
                assert woken == []
                far.send(b"x")
        assert sorted(woken) == ["first", "second"]
