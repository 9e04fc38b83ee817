"""edge/ssh/aio.py: asyncio inside trio for the SSH front (asyncssh runs only on asyncio)."""

from __future__ import annotations

import asyncio
import gc
import logging

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
