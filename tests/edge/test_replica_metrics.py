"""edge/replica_metrics.py: replica lag summed per volume, bounded by volumes.

The gauges from a real network (a replica held behind, then caught up) are in
tests/e2e/test_repl_metrics.py.
"""

from __future__ import annotations

from edge.replica_metrics import replica_lag
from routing.model import NodeId, NodeRecord, Region, VolumeId
from routing.replicas import ReplicaStatus

FRA, LAX = VolumeId("v-fra"), VolumeId("v-lax")


def _node(node_id: str) -> NodeRecord:
    return NodeRecord(NodeId(node_id), Region(node_id[:3]), f"http://{node_id}", ())


def _status(
    volume: VolumeId, applied: int | None, generation: int, up: bool = True
) -> ReplicaStatus:
    node = _node(f"{volume[2:]}-1") if up else None
    return ReplicaStatus(volume, Region(volume[2:]), node, applied, generation)


def test_each_volume_counts_its_replicas_by_state_and_the_worst_lag() -> None:
    repos = [
        [_status(FRA, 3, 3), _status(LAX, 1, 3)],  # lax catching up, 2 behind
        [_status(FRA, 5, 5), _status(LAX, 1, 5, up=False)],  # lax down, 4 behind
        [_status(FRA, None, 2), _status(LAX, 1, 2, up=False)],  # none in sync
    ]
    lag, unreadable = replica_lag(repos, [FRA, LAX, VolumeId("v-syd")])
    assert lag[FRA].states == {"in-sync": 2, "catching-up": 1, "down": 0}
    assert lag[FRA].behind_max == 2  # a replica with no applied key is behind all of it
    assert lag[LAX].states == {"in-sync": 0, "catching-up": 1, "down": 2}
    assert lag[LAX].behind_max == 4  # down or not, it is behind
    # A volume holding no replica still has its series, at zero.
    assert lag[VolumeId("v-syd")].states == {"in-sync": 0, "catching-up": 0, "down": 0}
    assert lag[VolumeId("v-syd")].behind_max == 0
    assert unreadable == 1


def test_in_sync_everywhere_is_zero_lag() -> None:
    lag, unreadable = replica_lag([[_status(FRA, 7, 7), _status(LAX, 7, 7)]], [FRA, LAX])
    assert all(v.behind_max == 0 and v.states["in-sync"] == 1 for v in lag.values())
    assert unreadable == 0
