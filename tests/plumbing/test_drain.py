"""plumbing/drain.py: who hears of a drain, and when."""

from __future__ import annotations

import trio
import trio.testing

from plumbing.drain import Drain, RequestTracker


async def test_begin_cancels_idle_waits_and_tells_busy_and_registered_ones() -> None:
    drain, told = Drain(), list[str]()
    drain.on_begin(lambda: told.append("listener"))
    woke = trio.Event()

    async def idle_wait() -> None:
        with drain.idle() as scope:
            await trio.sleep_forever()
        assert scope.cancelled_caught
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(idle_wait)
        with drain.busy(lambda: told.append("request")):
            await trio.testing.wait_all_tasks_blocked()
            drain.begin()
            drain.begin()  # idempotent
        with trio.fail_after(1):
            await woke.wait()
    assert told == ["listener", "request"]


async def test_after_the_drain_began_idle_waits_end_at_once_and_busy_ones_close() -> None:
    drain, told = Drain(), list[str]()
    drain.begin()
    with drain.idle() as scope:
        await trio.sleep_forever()
    assert scope.cancelled_caught
    with drain.busy(lambda: told.append("request")):
        pass
    drain.on_begin(lambda: told.append("late"))
    assert told == ["request", "late"]


async def test_wait_idle_waits_for_the_last_request() -> None:
    tracker, order = RequestTracker(), []

    async def request(name: str, done: trio.Event) -> None:
        with tracker.track():
            await done.wait()
            order.append(name)

    first, second = trio.Event(), trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "first", first)
        nursery.start_soon(request, "second", second)
        await trio.testing.wait_all_tasks_blocked()
        assert tracker.active == 2
        first.set()
        await trio.testing.wait_all_tasks_blocked()
        assert tracker.active == 1
        with trio.move_on_after(0.05) as waited:  # the second request still runs
            await tracker.wait_idle()
        assert waited.cancelled_caught
        second.set()
        with trio.fail_after(1):
            await tracker.wait_idle()
        order.append("idle")
    assert order == ["first", "second", "idle"]
