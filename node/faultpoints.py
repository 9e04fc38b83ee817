"""Test-only pauses at named points of a push's vote, so a test can SIGKILL the
node exactly there, or change the replica set under the push (tests/e2e/test_repl_crash.py);
and of an apply, so a new replica never catches up (tests/e2e/test_operator_cli.py).

    GITEDGE_TEST_PAUSE="vote-start=5"           the record read, before git reads the refs
    GITEDGE_TEST_PAUSE="vote-before-commit=5"   after the transfer, before the etcd txn
    GITEDGE_TEST_PAUSE="vote-after-commit=5"    after the txn won, before the hook's answer
    GITEDGE_TEST_PAUSE="apply-start=60"         an apply (a catch-up) asked of this node,
                                                before it takes the repository's lock

Several points: comma-separated. Read once from the node's environment at start;
unset (production) there is no pause and no cost. At a pause the node logs one
WARNING line `test pause: <seconds>s at <point> (<repo>)` before it sleeps, which
is what a test waits for. A malformed value is refused at start with a clear
error, so a typo cannot silently run a test without its pause.

With pauses set, SIGUSR1 ends every pause in progress at once: a test that has
done what it paused the node for lets it go on, rather than sitting out the rest
of the seconds (and the seconds can be generous on a slow machine). Without
pauses SIGUSR1 keeps its default action.
"""

from __future__ import annotations

import logging
import math
import signal

import trio

log = logging.getLogger(__name__)

PAUSE_ENV = "GITEDGE_TEST_PAUSE"
POINTS = ("vote-start", "vote-before-commit", "vote-after-commit", "apply-start")


class FaultPointError(ValueError):
    """GITEDGE_TEST_PAUSE names an unknown point or a bad number of seconds."""


def parse_pauses(raw: str) -> dict[str, float]:
    pauses: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        point, sep, seconds = item.partition("=")
        if point not in POINTS or not sep:
            raise FaultPointError(
                f"{PAUSE_ENV}: {item!r} is not <point>=<seconds> with a point of {POINTS}"
            )
        try:
            value = float(seconds)
        except ValueError:
            value = math.nan
        if not 0 < value <= 600:
            raise FaultPointError(f"{PAUSE_ENV}: {seconds!r} seconds must be in (0, 600]")
        pauses[point] = value
    return pauses


class FaultPoints:
    def __init__(self, raw: str = "") -> None:
        self._pauses = parse_pauses(raw)
        self._released = trio.Event()

    @property
    def active(self) -> bool:
        return bool(self._pauses)

    async def reach(self, point: str, what: object) -> None:
        seconds = self._pauses.get(point)
        if seconds:
            log.warning("test pause: %ss at %s (%s)", seconds, point, what)
            with trio.move_on_after(seconds):
                await self._released.wait()

    def release(self) -> None:
        """End the pauses in progress; a point reached later pauses again."""
        self._released.set()
        self._released = trio.Event()

    async def release_on_signal(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Forever: each SIGUSR1 ends the pauses in progress (started once it listens)."""
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                log.warning("test pause: released by SIGUSR1")
                self.release()
