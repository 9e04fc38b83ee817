"""edge/ssh/aio.py: asyncio inside trio for the SSH front (asyncssh runs only on asyncio)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections import Counter

import asyncssh
import pytest
import trio

from edge.ssh.aio import aio_as_trio, open_aio_loop


async def test_stray_asyncio_errors_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression guard: trio-asyncio's default handler raised these into the loop's
    nursery, and one "Task was destroyed" from an aborted client ended a server."""

    async def fails() -> None:
        raise ConnectionResetError("client went away")

    with trio.fail_after(5):
        async with open_aio_loop() as loop:
            task = loop.create_task(fails())
            await aio_as_trio(asyncio.wait)([task])  # it fails; nobody retrieves that
            del task
            gc.collect()  # "Task exception was never retrieved"
            loop.call_exception_handler({"message": "Task was destroyed but it is pending!"})
            assert await aio_as_trio(asyncio.sleep)(0, "alive") == "alive"
    logged = [r.getMessage() for r in caplog.records if r.name == "edge.ssh.aio"]
    assert any("never retrieved" in m and "client went away" in m for m in logged)
    assert any("Task was destroyed" in m for m in logged)
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "edge.ssh.aio")


class _NoAuth(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


async def _download(size: int) -> int:
    """An asyncssh client reads `size` bytes from an in-process asyncssh server."""

    async def serve(process: asyncssh.SSHServerProcess[bytes]) -> None:
        process.stdout.write(b"x" * size)
        process.exit(0)

    server = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
        server_factory=_NoAuth,
        process_factory=serve,
        encoding=None,
        config=None,
    )
    try:
        async with asyncssh.connect(
            "127.0.0.1",
            server.get_port(),
            username="t",
            known_hosts=None,
            client_keys=None,
            agent_path=None,
            config=None,
        ) as conn:
            result = await conn.run("x", encoding=None, check=True)
            assert isinstance(result.stdout, bytes)
            return len(result.stdout)
    finally:
        server.close()


@pytest.mark.parametrize("skipping", [True, False])
async def test_no_empty_ignore_packet_precedes_each_packet(
    monkeypatch: pytest.MonkeyPatch, skipping: bool
) -> None:
    """asyncssh's CBC countermeasure, one SSH_MSG_IGNORE per packet, is not sent
    once the loop is open (edge.ssh.aio.skip_empty_ignore_packets); without the
    skip (the control case) it is."""
    received: Counter[int] = Counter()

    def count(self: object, pkttype: int, *args: object, **kwargs: object) -> None:
        received[pkttype] += 1

    # Connections and channels log every packet they receive through this method.
    monkeypatch.setattr(asyncssh.packet.SSHPacketLogger, "log_received_packet", count)
    connection = asyncssh.connection.SSHConnection
    with trio.fail_after(10):
        async with open_aio_loop():
            if not skipping:
                unpatched = getattr(connection.send_packet, "__wrapped__")  # noqa: B009
                monkeypatch.setattr(connection, "send_packet", unpatched)
            assert await aio_as_trio(_download)(2**20) == 2**20
    data_packets = received[asyncssh.constants.MSG_CHANNEL_DATA]
    assert data_packets >= 2**20 // 32768
    if skipping:
        assert received[asyncssh.constants.MSG_IGNORE] == 0
    else:
        assert received[asyncssh.constants.MSG_IGNORE] >= data_packets


def test_no_cbc_cipher_is_offered() -> None:
    """Dropping the empty SSH_MSG_IGNORE is safe only because no hop can negotiate
    CBC (RFC 4251 section 9.3.1): the SSH front, the only SSH hop, uses asyncssh's
    defaults."""
    defaults = asyncssh.encryption.get_default_encryption_algs()
    assert defaults
    assert not [alg for alg in defaults if b"cbc" in alg]
