"""GITEDGE_TEST_PAUSE parsing: a typo must fail the node's start, not silently
run a crash test without its pause."""

from __future__ import annotations

import pytest

from node.faultpoints import FaultPointError, parse_pauses


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
