"""The floor under a request body's rate (edge/proto/pace.py)."""

from __future__ import annotations

from edge.proto.pace import BodyRate


def test_off_when_min_rate_is_zero() -> None:
    assert BodyRate(0, 30).start(0.0) is None


def test_trickle_is_cut_once_grace_behind() -> None:
    # The attack: one byte every 20 s; floor 1 KiB/s, 30 s of grace.
    pace = BodyRate(1024, 30).start(0.0)
    assert pace is not None
    now = 0.0
    while not pace.overdue(now):
        now += 20
        pace.received(1, now)
    assert now == 40  # the first byte after the deadline at ~30 s


def test_line_rate_may_stall_for_grace_but_saves_no_more() -> None:
    pace = BodyRate(1000, 5).start(0.0)
    assert pace is not None
    for second in range(1, 101):
        pace.received(1_000_000, float(second))  # 1 MB/s for 100 s
    # Credit is capped at `grace`: a stall of 5 s is fine, not a stall of hours.
    assert pace.deadline == 105.0
    assert not pace.overdue(104.9)
    assert pace.overdue(105.0)


def test_just_above_the_floor_is_never_cut() -> None:
    pace = BodyRate(1000, 2).start(0.0)
    assert pace is not None
    for tick in range(1, 1001):
        now = tick * 0.5
        assert not pace.overdue(now)
        pace.received(510, now)


def test_time_the_reader_was_paused_is_not_the_senders() -> None:
    pace = BodyRate(1000, 2).start(0.0)
    assert pace is not None
    pace.received(1000, 1.0)
    pace.paused(60.0)  # the node took a minute to take the last chunk
    assert not pace.overdue(62.0)
    assert pace.overdue(63.0)
