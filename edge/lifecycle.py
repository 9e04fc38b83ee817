"""The edge's signals: SIGTERM/SIGINT drain, SIGHUP reloads certificates.

- SIGTERM or SIGINT: the drain begins (`EdgeState.drain`): every listener
  (HTTPS, HTTP, SSH) stops accepting, idle keep-alive connections and SSH
  connections without a session close at once, and a connection busy with a
  request answers it with `connection: close`. In-flight git operations (HTTP
  requests and SSH sessions) get up to `drain_timeout` to finish; then what is
  left is cancelled and the edge exits 0. A second signal stops it at once.
- SIGHUP: the TLS certificate and key are read again, and so are the SSH host
  keys. New handshakes use them; open connections keep going on theirs. A file
  that does not load is logged and the old ones stay in use.
"""

from __future__ import annotations

import logging
import signal
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import trio

from plumbing.drain import Drain, RequestTracker

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class ServerTls:
    """The HTTPS front's `SSLContext`, replaced whole by `reload()`.

    Each connection takes `context` once, at accept: a reload never touches a
    connection that is already up.
    """

    def __init__(self, make: Callable[[], ssl.SSLContext]) -> None:
        self._make = make
        self.context = make()
        self.reloads = 0

    async def reload(self) -> None:
        """Load the files again (in a thread: it reads disk); raises what loading raises."""
        self.context = await trio.to_thread.run_sync(self._make)
        self.reloads += 1


async def handle_signals(
    signals: AsyncIterator[int],
    *,
    drain: Drain,
    requests: RequestTracker,
    drain_timeout: float,
    reload: Callable[[], Awaitable[None]],
    stop: trio.CancelScope,
    nursery: trio.Nursery,
) -> None:
    """Act on signals until the edge stops: `stop` is cancelled once drained."""
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            await _reload(reload)
        elif drain.begun:
            log.info("%s while draining: stopping now", name)
            stop.cancel()
            return
        else:
            log.info(
                "%s: draining, %d request(s) in flight, for up to %.0fs",
                name,
                requests.active,
                drain_timeout,
            )
            drain.begin()
            nursery.start_soon(_finish_drain, requests, drain_timeout, stop)


async def _reload(reload: Callable[[], Awaitable[None]]) -> None:
    try:
        await reload()
    except (OSError, ValueError, ssl.SSLError) as exc:
        log.error("SIGHUP: reload failed, the old certificates stay in use: %s", exc)
    else:
        log.info("SIGHUP: TLS certificate and SSH host keys reloaded; new connections use them")


async def _finish_drain(requests: RequestTracker, timeout: float, stop: trio.CancelScope) -> None:
    with trio.move_on_after(timeout) as waited:
        await requests.wait_idle()
    if waited.cancelled_caught:
        log.warning(
            "drain: %d request(s) still running after %.0fs: closing them", requests.active, timeout
        )
    else:
        log.info("drain: no request in flight; stopping")
    stop.cancel()
