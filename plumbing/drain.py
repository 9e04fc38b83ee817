"""Graceful drain, shared by the edge and the node.

A `Drain` is begun once (SIGTERM). From then on:

- a connection waiting idle for its next request is closed at once: it waits
  inside `idle()`, whose cancel scope the drain cancels;
- a connection busy with a request says `connection: close` on its answer and
  closes after it: it runs the request inside `busy(close_after)`, and the drain
  calls `close_after` (at once, if it has already begun);
- whatever else must stop (the listeners) registered with `on_begin`.

`RequestTracker` counts the requests in flight, so the process can wait for the
last one (`wait_idle`) before it cancels what is left and exits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

log = logging.getLogger(__name__)


class RequestTracker:
    """Counts requests in flight so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        if self.active == 0:
            self._idle = trio.Event()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class Drain:
    """Whether the process is draining, and who must hear of it when it begins."""

    def __init__(self) -> None:
        self.begun = False
        self._idle: set[trio.CancelScope] = set()
        self._busy: set[Callable[[], None]] = set()
        self._on_begin: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the drain begins (at once if it has)."""
        if self.begun:
            callback()
        else:
            self._on_begin.append(callback)

    def begin(self) -> None:
        """Stop what registered, close idle connections, mark busy ones closing. Idempotent."""
        if self.begun:
            return
        self.begun = True
        log.info(
            "drain: %d idle HTTP connection(s) closed, %d busy one(s) close after their request",
            len(self._idle),
            len(self._busy),
        )
        for callback in [*self._on_begin, *self._busy]:
            try:
                callback()
            except Exception:  # one broken callback must not stop the drain
                log.exception("drain callback failed")
        for scope in self._idle:
            scope.cancel()

    @contextmanager
    def idle(self) -> Iterator[trio.CancelScope]:
        """A cancel scope for an idle wait: cancelled when the drain begins (or at once)."""
        with trio.CancelScope() as scope:
            if self.begun:
                scope.cancel()
            self._idle.add(scope)
            try:
                yield scope
            finally:
                self._idle.discard(scope)

    @contextmanager
    def busy(self, close_after: Callable[[], None]) -> Iterator[None]:
        """Around one request: `close_after()` is called if the drain begins meanwhile."""
        if self.begun:
            close_after()
        self._busy.add(close_after)
        try:
            yield
        finally:
            self._busy.discard(close_after)
