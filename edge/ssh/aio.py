"""asyncio inside trio, for the SSH front (asyncssh runs only on asyncio).

The SSH front runs asyncssh on a trio-asyncio loop in the same thread as
everything else. Only edge/ssh imports this module; `edge/proto` never does.

Why a wrapper around `trio_asyncio.open_loop()`: trio-asyncio's default loop
exception handler re-raises every "exception was never retrieved" / "Task was
destroyed but it is pending" into the loop's nursery. Those are reported by
asyncssh when a client vanishes mid-handshake; reproduced here, one aborted
client took the whole server down. They are log lines, not failures.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar, cast

import trio_asyncio

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def open_aio_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """A trio-asyncio loop whose stray asyncio errors are logged, never raised."""
    async with trio_asyncio.open_loop() as loop:
        loop.set_exception_handler(log_loop_error)
        yield cast(asyncio.AbstractEventLoop, loop)


def log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """An asyncio exception handler that only logs (see the module docstring)."""
    message = context.get("message") or "asyncio error"
    exc = context.get("exception")
    # Whatever asyncio names (a task, a future, a transport) helps find the culprit.
    where = next(
        (f"{key}={context[key]!r}" for key in ("task", "future", "transport") if key in context),
        "",
    )
    if isinstance(exc, BaseException):
        log.warning("asyncio: %s %s: %r", message, where, exc, exc_info=exc)
    else:
        log.warning("asyncio: %s %s", message, where)


def aio_as_trio(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Call an asyncio coroutine function from trio (typed `trio_asyncio.aio_as_trio`).

    Each call runs as one asyncio task on the current trio-asyncio loop; cancelling
    the trio scope cancels that task.
    """
    return cast(Callable[P, Awaitable[T]], trio_asyncio.aio_as_trio(fn))


def trio_as_aio(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Call a trio async function from asyncio code (typed `trio_asyncio.trio_as_aio`)."""
    return cast(Callable[P, Awaitable[T]], trio_asyncio.trio_as_aio(fn))


# What the SSH front refuses at the SSH layer: anything but public-key auth, ptys, forwarding, scp.
# Data is bytes (pack data breaks asyncssh's default text mode).
GIT_ONLY_SSH_SERVER: dict[str, Any] = {
    "public_key_auth": True,
    "password_auth": False,
    "kbdint_auth": False,
    "host_based_auth": False,
    "gss_host": None,
    "allow_pty": False,
    "line_editor": False,
    "agent_forwarding": False,
    "x11_forwarding": False,
    "allow_scp": False,
    "encoding": None,
    "config": None,
}
