"""choose_volume: where a new repository goes. Pure, so every rule is checked directly."""

from __future__ import annotations

import itertools

import pytest

from routing.model import NodeId, NodeRecord, Region, VolumeId, VolumeInfo, VolumeRecord
from routing.placement import PlacementError, choose_volume, live_volumes

IAD, ORD, SYD = Region("iad"), Region("ord"), Region("syd")


def node(node_id: str, region: Region, **free: int) -> NodeRecord:
    """A live node advertising volumes `name=free_bytes`."""
    return NodeRecord(
        NodeId(node_id),
        region,
        f"http://{node_id}:8080",
        tuple(VolumeInfo(VolumeId(v), n) for v, n in free.items()),
    )


def volume(volume_id: str, region: Region, node_id: str) -> VolumeRecord:
    return VolumeRecord(VolumeId(volume_id), region, NodeId(node_id))


def nodes(*records: NodeRecord) -> dict[NodeId, NodeRecord]:
    return {n.node_id: n for n in records}


def counts(**n: int) -> dict[VolumeId, int]:
    return {VolumeId(k): v for k, v in n.items()}


def _fails(
    region: Region,
    vols: list[VolumeRecord],
    live: dict[NodeId, NodeRecord],
    fallback: Region | None = None,
) -> str:
    with pytest.raises(PlacementError) as info:
        choose_volume(region, vols, live, {}, fallback)
    return str(info.value)


# -- ordering --------------------------------------------------------------------


def test_fewest_repos_wins_over_free_space() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", IAD, "n1")]
    live = nodes(node("n1", IAD, v1=10**12, v2=10))
    assert choose_volume(IAD, vols, live, counts(v1=5, v2=4)).volume_id == "v2"
    assert choose_volume(IAD, vols, live, counts(v1=4, v2=5)).volume_id == "v1"


def test_volume_missing_from_counts_has_zero_repos() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", IAD, "n1")]
    live = nodes(node("n1", IAD, v1=10**12, v2=10))
    assert choose_volume(IAD, vols, live, counts(v1=1)).volume_id == "v2"


def test_equal_counts_most_free_bytes_wins() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", IAD, "n2"), volume("v3", IAD, "n2")]
    live = nodes(node("n1", IAD, v1=100), node("n2", IAD, v2=300, v3=200))
    assert choose_volume(IAD, vols, live, counts(v1=2, v2=2, v3=2)).volume_id == "v2"


def test_free_bytes_come_from_the_node_not_the_volume_record() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", IAD, "n2")]
    before = nodes(node("n1", IAD, v1=100), node("n2", IAD, v2=200))
    after = nodes(node("n1", IAD, v1=300), node("n2", IAD, v2=200))
    assert choose_volume(IAD, vols, before, {}).volume_id == "v2"
    assert choose_volume(IAD, vols, after, {}).volume_id == "v1"


def test_equal_counts_and_space_lowest_id_wins() -> None:
    vols = [volume("vb", IAD, "n1"), volume("va", IAD, "n1"), volume("vc", IAD, "n1")]
    live = nodes(node("n1", IAD, va=5, vb=5, vc=5))
    assert choose_volume(IAD, vols, live, {}).volume_id == "va"


def test_answer_does_not_depend_on_input_order() -> None:
    vols = [volume(f"v{i}", IAD, f"n{i % 2}") for i in range(4)]
    live = nodes(node("n0", IAD, v0=7, v2=7), node("n1", IAD, v1=9, v3=7))
    repo_counts = counts(v0=1, v1=1, v2=1, v3=1)
    answers = {
        choose_volume(IAD, order, live, repo_counts).volume_id
        for order in itertools.permutations(vols)
    }
    assert answers == {"v1"}


def test_returns_the_volume_record_itself() -> None:
    record = volume("v1", IAD, "n1")
    assert choose_volume(IAD, [record], nodes(node("n1", IAD, v1=1)), {}) is record


def test_volumes_may_be_any_iterable() -> None:
    vols = (v for v in [volume("v1", IAD, "n1"), volume("v2", IAD, "n1")])
    live = nodes(node("n1", IAD, v1=1, v2=2))
    assert choose_volume(IAD, vols, live, {}).volume_id == "v2"


# -- liveness --------------------------------------------------------------------


def test_volume_of_a_dead_node_is_excluded() -> None:
    vols = [volume("v1", IAD, "dead"), volume("v2", IAD, "n2")]
    live = nodes(node("n2", IAD, v2=1))
    # v1 has fewer repos and would win if its node were alive.
    assert choose_volume(IAD, vols, live, counts(v1=0, v2=100)).volume_id == "v2"


def test_volume_its_node_no_longer_lists_is_excluded() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", IAD, "n1")]
    live = nodes(node("n1", IAD, v2=1))
    assert choose_volume(IAD, vols, live, counts(v2=100)).volume_id == "v2"


def test_volume_listed_by_a_different_node_than_its_home_is_excluded() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", IAD, "n2")]
    live = nodes(node("n1", IAD), node("n2", IAD, v1=10**12, v2=1))
    assert choose_volume(IAD, vols, live, counts(v2=100)).volume_id == "v2"


def test_volume_whose_node_moved_region_is_excluded() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", IAD, "n2")]
    live = nodes(node("n1", ORD, v1=10**12), node("n2", IAD, v2=1))
    assert choose_volume(IAD, vols, live, counts(v2=100)).volume_id == "v2"


def test_live_node_advertising_an_unrecorded_volume_is_not_used() -> None:
    vols = [volume("v1", IAD, "n1")]
    live = nodes(node("n1", IAD, v1=1, stray=10**12))
    assert choose_volume(IAD, vols, live, {}).volume_id == "v1"


def test_live_volumes() -> None:
    vols = [
        volume("v1", IAD, "n1"),
        volume("v2", IAD, "n1"),  # not listed by n1
        volume("v3", IAD, "gone"),  # node dead
        volume("v4", ORD, "n1"),  # n1 is in iad
        volume("v5", ORD, "n2"),
    ]
    live = nodes(node("n1", IAD, v1=11, v4=44), node("n2", ORD, v5=55))
    assert live_volumes(vols, live) == {"v1": 11, "v5": 55}


# -- regions and fallback --------------------------------------------------------


def test_only_the_requested_region_is_used() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", ORD, "n2")]
    live = nodes(node("n1", IAD, v1=1), node("n2", ORD, v2=10**12))
    assert choose_volume(IAD, vols, live, counts(v1=100)).region == "iad"
    assert choose_volume(ORD, vols, live, counts(v1=0, v2=100)).region == "ord"


def test_unknown_region_and_region_without_live_volume_say_different_things() -> None:
    vols = [volume("v1", IAD, "dead")]
    unknown = _fails(SYD, vols, {})
    down = _fails(IAD, vols, {})
    assert unknown != down
    assert "unknown region 'syd'" in unknown
    assert "no live volume in region 'iad'" in down


def test_no_volumes_at_all() -> None:
    assert "unknown region 'iad'" in _fails(IAD, [], {})


def test_fallback_is_used_when_the_region_has_no_live_volume() -> None:
    vols = [volume("v1", IAD, "dead"), volume("v2", ORD, "n2")]
    live = nodes(node("n2", ORD, v2=1))
    chosen = choose_volume(IAD, vols, live, {}, fallback=ORD)
    assert (chosen.volume_id, chosen.region) == ("v2", "ord")


def test_fallback_is_used_when_the_region_is_unknown() -> None:
    vols = [volume("v2", ORD, "n2")]
    live = nodes(node("n2", ORD, v2=1))
    assert choose_volume(SYD, vols, live, {}, fallback=ORD).volume_id == "v2"


def test_fallback_is_not_used_while_the_region_has_a_live_volume() -> None:
    vols = [volume("v1", IAD, "n1"), volume("v2", ORD, "n2")]
    live = nodes(node("n1", IAD, v1=1), node("n2", ORD, v2=10**12))
    # Even a full, crowded home volume beats an empty fallback one.
    assert choose_volume(IAD, vols, live, counts(v1=10**6), fallback=ORD).volume_id == "v1"


def test_fallback_also_empty_names_both_reasons() -> None:
    vols = [volume("v1", IAD, "dead")]
    message = _fails(IAD, vols, {}, fallback=SYD)
    assert "no live volume in region 'iad'" in message
    assert "unknown region 'syd'" in message


def test_fallback_also_down_names_both_regions() -> None:
    vols = [volume("v1", IAD, "dead"), volume("v2", ORD, "dead")]
    message = _fails(IAD, vols, {}, fallback=ORD)
    assert "no live volume in region 'iad'" in message
    assert "no live volume in region 'ord'" in message


def test_fallback_equal_to_the_region_is_reported_once() -> None:
    vols = [volume("v1", IAD, "dead")]
    assert _fails(IAD, vols, {}, fallback=IAD) == "no live volume in region 'iad'"


def test_placement_error_message_has_no_internal_ids() -> None:
    # The message goes to the client: regions only, not node or volume ids.
    vols = [volume("vol-secret", IAD, "node-secret")]
    message = _fails(IAD, vols, {}, fallback=ORD)
    assert "secret" not in message
