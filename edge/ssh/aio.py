"""asyncio inside trio, for the two SSH modules (asyncssh runs only on asyncio).

The SSH front, the edge's node pool and the node's SSH listener run asyncssh on
a trio-asyncio loop in the same thread as everything else. Only those modules
import this one; `edge/proto` never does.

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
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def open_aio_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """A trio-asyncio loop whose stray asyncio errors are logged, never raised."""
    skip_empty_ignore_packets()
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


# What both SSH servers (the edge's front and the node's edge-only listener)
# refuse at the SSH layer: anything but public-key auth, ptys, forwarding, scp.
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


_EMPTY_STRING = b"\0\0\0\0"  # an SSH `string` of length 0 (RFC 4251 section 5)


def skip_empty_ignore_packets() -> None:
    """Stop asyncssh from sending an empty SSH_MSG_IGNORE before every packet.

    asyncssh (2.x, `SSHConnection.send_packet`) precedes every post-kex packet
    with one, the countermeasure RFC 4251 section 9.3.1 suggests against a
    chosen-plaintext attack on CBC's predictable IV. No cipher negotiated here
    is CBC (asyncssh's defaults and `INTERNAL_CIPHERS` have none; a test checks
    that), so the packet only costs a second encryption, packet framing and
    `send()` per data packet: 3,200 of them per 100 MiB to an OpenSSH client
    (32 KiB packets); measured 0.26 -> 0.20 CPU-s per 100 MiB sent with
    chacha20-poly1305 (bench/results/archive/README.md). asyncssh has no
    setting for it; this wraps `send_packet` to drop exactly that message, and
    does nothing if a later asyncssh stops sending it. Idempotent.
    """
    original = SSHConnection.send_packet
    if getattr(original, "_gitedge_skips_empty_ignore", False):
        return

    def send_packet(self: SSHConnection, pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
            return
        original(self, pkttype, *args, **kwargs)

    send_packet._gitedge_skips_empty_ignore = True  # type: ignore[attr-defined]
    send_packet.__wrapped__ = original  # type: ignore[attr-defined]
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]
