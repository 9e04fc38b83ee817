"""The optimization heuristics (node/housekeeping.py): pure, no git."""

from __future__ import annotations

import pytest

from node import housekeeping as hk

COUNT_OBJECTS = """count: 600
size: 2400
in-pack: 16
packs: 1
size-pack: 2
prune-packable: 0
garbage: 0
size-garbage: 0
"""


def test_parse_count_objects() -> None:
    assert hk.parse_count_objects(COUNT_OBJECTS) == hk.ObjectCounts(
        loose=600, loose_kib=2400, in_pack=16, packs=1, pack_kib=2
    )


@pytest.mark.parametrize("text", ["", "count: x\npacks: 1\n", "size: 1\n"])
def test_parse_count_objects_refuses_garbage(text: str) -> None:
    with pytest.raises(hk.CountObjectsError):
        hk.parse_count_objects(text)


def stats(**counts: int) -> hk.RepoStats:
    return hk.RepoStats(hk.ObjectCounts(**counts), has_bitmap=True, has_commit_graph=True)


def test_an_optimized_repository_needs_nothing() -> None:
    assert not hk.plan(stats(in_pack=5000, packs=1)).needed
    assert hk.plan(hk.RepoStats(hk.ObjectCounts())) == hk.Plan()  # empty repo


def test_many_loose_objects_call_for_a_geometric_repack_and_commit_graph() -> None:
    plan = hk.plan(stats(loose=256, in_pack=10, packs=1))
    assert plan == hk.Plan(repack=hk.Repack.GEOMETRIC, commit_graph=True)
    assert not hk.plan(stats(loose=255, in_pack=10, packs=1)).needed


def test_a_few_huge_loose_objects_count_by_size() -> None:
    # The case: a 256 MB repository pushed as 65 (loose) objects.
    plan = hk.plan(stats(loose=65, loose_kib=256 * 1024))
    assert plan.repack is hk.Repack.GEOMETRIC


def test_too_many_packs_call_for_a_full_repack() -> None:
    assert hk.plan(stats(in_pack=100, packs=33)).repack is hk.Repack.FULL
    assert hk.plan(stats(in_pack=100, packs=32)).repack is hk.Repack.NONE


def test_several_packs_without_a_bitmap_are_merged() -> None:
    no_bitmap = hk.RepoStats(hk.ObjectCounts(in_pack=100, packs=2), has_commit_graph=True)
    assert hk.plan(no_bitmap).repack is hk.Repack.GEOMETRIC


def test_missing_commit_graph_is_written_alone() -> None:
    repo = hk.RepoStats(hk.ObjectCounts(in_pack=100, packs=1), has_bitmap=True)
    assert hk.plan(repo) == hk.Plan(commit_graph=True)


def test_loose_refs_and_old_loose_objects() -> None:
    repo = hk.RepoStats(
        hk.ObjectCounts(loose=3, in_pack=100, packs=1),
        has_bitmap=True,
        has_commit_graph=True,
        loose_refs=64,
        stale_loose_objects=2,
    )
    assert hk.plan(repo) == hk.Plan(pack_refs=True, prune=True)
    fresh = hk.RepoStats(repo.objects, has_bitmap=True, has_commit_graph=True, loose_refs=63)
    assert not hk.plan(fresh).needed  # young loose objects are never pruned


def test_limits_are_the_operators() -> None:
    limits = hk.Limits(loose_objects=10)
    assert hk.plan(stats(loose=10), limits).repack is hk.Repack.GEOMETRIC


def test_forced_plan_repacks_fully_unless_already_one_bitmapped_pack() -> None:
    assert hk.forced_plan(stats(loose=1, in_pack=10, packs=1)).repack is hk.Repack.FULL
    assert hk.forced_plan(stats(in_pack=10, packs=1)).repack is hk.Repack.NONE
    assert hk.forced_plan(hk.RepoStats(hk.ObjectCounts())) == hk.Plan()


def test_full_repack_keeps_unreachable_objects() -> None:
    # A concurrent push's objects are unreachable until its refs move: never drop them.
    argv = hk.repack_argv(hk.Repack.FULL)
    assert "--cruft" in argv and "-A" not in argv and "-a" in argv
    assert "--geometric=2" in hk.repack_argv(hk.Repack.GEOMETRIC)
    with pytest.raises(ValueError):
        hk.repack_argv(hk.Repack.NONE)


def test_describe() -> None:
    assert hk.Plan().describe() == "nothing"
    plan = hk.Plan(repack=hk.Repack.FULL, commit_graph=True, prune=True)
    assert plan.describe() == "repack=full,commit_graph,prune"
