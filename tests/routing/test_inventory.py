"""The operator's listings and the drain filter of placement (pure)."""

from __future__ import annotations

import time

import pytest

from routing.inventory import copies_on_node, node_rows, repo_rows, volume_rows
from routing.model import (
    DrainRecord,
    NodeId,
    NodeRecord,
    Region,
    RepoName,
    RepoRecord,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
)
from routing.placement import PlacementError, choose_volume, placeable_nodes
from routing.schema import decode_drain, encode_drain

FRA, LAX = Region("fra"), Region("lax")
V1, V2, V3 = VolumeId("v-1"), VolumeId("v-2"), VolumeId("v-3")
N1, N2, N3 = NodeId("fra-1"), NodeId("fra-2"), NodeId("lax-1")
VOLUMES = [VolumeRecord(V1, FRA, N1), VolumeRecord(V2, FRA, N2), VolumeRecord(V3, LAX, N3)]


def node(node_id: NodeId, region: Region, volume: VolumeId, free: int) -> NodeRecord:
    return NodeRecord(node_id, region, "http://x", (VolumeInfo(volume, free),))


# fra-2 is down: its lease expired, its volume record stays.
LIVE = {N1: node(N1, FRA, V1, 5000), N3: node(N3, LAX, V3, 7000)}


def repo(name: str, *volumes: VolumeId) -> RepoRecord:
    replicas = volumes if len(volumes) > 1 else ()
    region = next(v.region for v in VOLUMES if v.volume_id == volumes[0])
    return RepoRecord(
        RepoName.parse(name), volumes[0], region, 0.0, replicas=replicas,
        sync_replicas=1 if replicas else 0,
    )  # fmt: skip


def test_a_down_node_shows_through_its_volume_records_without_free_space() -> None:
    rows = {r.node_id: r for r in node_rows(VOLUMES, LIVE, {V1: 2, V2: 1}, {N3})}
    assert rows[N2].live is False and rows[N2].free_bytes is None and rows[N2].repos == 1
    assert rows[N1].live and rows[N1].free_bytes == 5000 and rows[N1].repos == 2
    assert rows[N3].drained and not rows[N1].drained
    volumes = {r.volume_id: r for r in volume_rows(VOLUMES, LIVE, {}, ())}
    assert volumes[V2].live is False and volumes[V3].free_bytes == 7000


def test_repo_ls_filters_by_any_copy_region_and_node() -> None:
    repos = [repo("a/one", V1), repo("a/two", V1, V3), repo("a/three", V2)]
    by_id = {v.volume_id: v for v in VOLUMES}
    assert [r["repo"] for r in repo_rows(repos, by_id, region=LAX)] == ["a/two"]
    assert [r["repo"] for r in repo_rows(repos, by_id, node=N1)] == ["a/one", "a/two"]
    assert [r["repo"] for r in repo_rows(repos, by_id, FRA, N2)] == ["a/three"]
    assert repo_rows(repos, by_id, region=Region("syd")) == []
    held = copies_on_node(repos, by_id, N3)
    assert held == [(RepoName.parse("a/two"), V3, True)]


def test_placement_skips_a_drained_node_and_says_so_when_none_is_left() -> None:
    both = {**LIVE, N2: node(N2, FRA, V2, 9000)}
    assert choose_volume(FRA, VOLUMES, both, {}).volume_id == V2  # most free space
    assert choose_volume(FRA, VOLUMES, placeable_nodes(both, {N2}), {}).volume_id == V1
    with pytest.raises(PlacementError, match="no live volume in region 'lax'"):
        choose_volume(LAX, VOLUMES, placeable_nodes(both, {N3}), {})


def test_a_drain_record_round_trips() -> None:
    drain = DrainRecord(N1, time.time(), "admin")
    assert decode_drain(encode_drain(drain)) == drain
