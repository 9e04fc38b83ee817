"""OpenSSH's MaxStartups arithmetic (plumbing/maxstartups.py)."""

from __future__ import annotations

import random

import pytest

from plumbing.maxstartups import MaxStartups, MaxStartupsError


def test_parse() -> None:
    assert MaxStartups.parse("10:30:100") == MaxStartups(10, 30, 100)
    assert MaxStartups.parse("20") == MaxStartups(20, 100, 20)
    assert str(MaxStartups.parse("10:30:100")) == "10:30:100"


@pytest.mark.parametrize("text", ["", "a:b:c", "10:30", "10:30:100:1", "0:30:10", "10:0:100",
                                  "10:101:100", "20:30:10"])  # fmt: skip
def test_parse_refuses(text: str) -> None:
    with pytest.raises(MaxStartupsError):
        MaxStartups.parse(text)


def test_drop_percent_is_sshds() -> None:
    policy = MaxStartups(10, 30, 100)
    assert policy.drop_percent(0) == 0
    assert policy.drop_percent(9) == 0
    assert policy.drop_percent(10) == 30
    # sshd: p = rate + (100 - rate) * (n - start) / (full - start), in integers.
    assert policy.drop_percent(55) == 30 + 70 * 45 // 90
    assert policy.drop_percent(99) == 30 + 70 * 89 // 90
    assert policy.drop_percent(100) == 100
    assert policy.drop_percent(1000) == 100


def test_below_start_never_drops_and_at_full_always_drops() -> None:
    policy = MaxStartups(3, 50, 6)
    rng = random.Random(1)
    assert not any(policy.should_drop(2, rng) for _ in range(1000))
    assert all(policy.should_drop(6, rng) for _ in range(1000))


def test_between_start_and_full_drops_at_about_the_rate() -> None:
    policy = MaxStartups(10, 30, 100)
    rng = random.Random(7)
    drops = sum(policy.should_drop(10, rng) for _ in range(10_000))
    assert 2700 < drops < 3300  # 30 %, seeded: the same draws every run


def test_start_equal_to_full_is_a_hard_cap() -> None:
    policy = MaxStartups(4, 30, 4)
    assert policy.drop_percent(3) == 0
    assert policy.drop_percent(4) == 100
