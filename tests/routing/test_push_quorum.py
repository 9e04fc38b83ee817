"""Which acks make a push durable: W copies, in 2 regions where the replica set spans them."""

from __future__ import annotations

from routing.model import Region
from routing.replicas import durable_enough, regions_needed

FRA, LAX, SYD = Region("fra"), Region("lax"), Region("syd")


def test_regions_needed() -> None:
    assert regions_needed(2, [FRA, LAX, SYD]) == 2
    assert regions_needed(3, [FRA, FRA, LAX]) == 2
    assert regions_needed(2, [FRA, FRA]) == 1  # the set is in one region: one is all there is
    assert regions_needed(1, [FRA, LAX]) == 1  # W=1: one copy, one region


def test_a_same_region_ack_is_not_enough_while_the_set_spans_two_regions() -> None:
    # Set {fra-1 (primary), fra-2, lax-1}, W=2: fra-2's ack alone is one region.
    set_regions = [FRA, FRA, LAX]
    assert not durable_enough(FRA, [FRA], 2, set_regions)
    assert durable_enough(FRA, [LAX], 2, set_regions)
    # fra-2 first, then lax: durable only once lax acked.
    assert durable_enough(FRA, [FRA, LAX], 2, set_regions)


def test_w_copies_are_needed_whatever_the_regions() -> None:
    assert not durable_enough(FRA, [], 2, [FRA, LAX])
    assert not durable_enough(FRA, [LAX], 3, [FRA, LAX, SYD])
    assert durable_enough(FRA, [LAX, SYD], 3, [FRA, LAX, SYD])


def test_a_set_in_one_region_needs_only_the_copies() -> None:
    assert durable_enough(FRA, [FRA], 2, [FRA, FRA, FRA])


def test_w_one_needs_no_ack() -> None:
    assert durable_enough(FRA, [], 1, [FRA, LAX])
