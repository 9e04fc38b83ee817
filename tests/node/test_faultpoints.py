"""GITEDGE_TEST_PAUSE parsing: a typo must fail the node's start, not silently
run a crash test without its pause."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
import trio
import trio.testing

from node.faultpoints import FaultPointError, FaultPoints, parse_pauses


def test_points_and_seconds_are_parsed() -> None:
    assert parse_pauses("") == {}
    assert parse_pauses("vote-after-commit=2.5, vote-before-commit=1") == {
        "vote-after-commit": 2.5,
        "vote-before-commit": 1.0,
    }


@pytest.mark.parametrize(
    "raw", ["vote-after=1", "vote-after-commit", "vote-after-commit=x", "vote-after-commit=0",
            "vote-after-commit=nan", "vote-after-commit=1e9"],
)  # fmt: skip
def test_a_bad_value_is_a_clear_error(raw: str) -> None:
    with pytest.raises(FaultPointError, match="GITEDGE_TEST_PAUSE"):
        parse_pauses(raw)


async def _paused_until_released(faults: FaultPoints, release: Callable[[], object]) -> None:
    """A pause of 60 s in progress ends within seconds of `release()`."""
    done = trio.Event()

    async def vote() -> None:
        await faults.reach("vote-start", "alice/x")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(vote)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        release()
        with trio.fail_after(5):
            await done.wait()
        nursery.cancel_scope.cancel()


async def test_release_ends_a_pause_and_a_later_one_pauses_again() -> None:
    faults = FaultPoints("vote-start=60")
    assert faults.active and not FaultPoints("").active
    await _paused_until_released(faults, faults.release)
    with trio.move_on_after(0.2) as again:
        await faults.reach("vote-start", "alice/x")
    assert again.cancelled_caught


async def test_sigusr1_releases_the_pauses_in_progress() -> None:
    faults = FaultPoints("vote-start=60")
    async with trio.open_nursery() as nursery:
        await nursery.start(faults.release_on_signal)
        await _paused_until_released(faults, lambda: os.kill(os.getpid(), signal.SIGUSR1))
        nursery.cancel_scope.cancel()
