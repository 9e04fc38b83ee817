"""Which replicas of a repository are in sync, and which one serves a read. Pure.

A replica is in sync when its node is live (its leased record lists the
volume) and its published applied generation equals the consensus
generation. A repository without a state key is at generation 0 (no push yet);
its replicas were published at 0 by the create txn. A replica with no applied
key at all (one being added, `replicas add`) is never in sync, whatever the
generation, until its node has caught it up and published. Reads never go to
a replica behind the consensus (docs/replication.md, "Read path").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from routing.model import NodeId, NodeRecord, Region, RepoRecord, VolumeId, VolumeRecord

IN_SYNC, CATCHING_UP, DOWN = "in-sync", "catching-up", "down"


@dataclass(frozen=True)
class ReplicaStatus:
    volume_id: VolumeId
    region: Region | None
    node: NodeRecord | None  # None: no live node serves the volume
    applied: int | None  # None: it has published no applied generation yet
    generation: int  # the consensus generation it is compared with

    @property
    def state(self) -> str:
        if self.node is None:
            return DOWN
        return IN_SYNC if self.applied == self.generation else CATCHING_UP

    @property
    def behind(self) -> int:
        return max(0, self.generation - (self.applied or 0))

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume_id,
            "region": self.region,
            "node": self.node.node_id if self.node else None,
            "state": self.state,
            "applied": self.applied,
            "behind": self.behind,
        }


def replica_statuses(
    record: RepoRecord,
    generation: int,
    applied: Mapping[VolumeId, int],
    volumes: Mapping[VolumeId, VolumeRecord],
    nodes: Mapping[NodeId, NodeRecord],
) -> list[ReplicaStatus]:
    statuses = []
    for volume_id in record.replica_volumes:
        volume = volumes.get(volume_id)
        node = nodes.get(volume.node_id) if volume else None
        if node is not None and not any(v.volume_id == volume_id for v in node.volumes):
            node = None
        statuses.append(
            ReplicaStatus(
                volume_id,
                volume.region if volume else None,
                node,
                applied.get(volume_id),
                generation,
            )
        )
    return statuses


def choose_read_replica(statuses: list[ReplicaStatus], region: Region) -> ReplicaStatus | None:
    """The in-sync replica nearest `region`: in it, else the home, else the first listed.

    Distance is region equality for now; the RTT table is designed, not built.
    """
    in_sync = [s for s in statuses if s.state == IN_SYNC]
    for status in in_sync:
        if status.region == region:
            return status
    return in_sync[0] if in_sync else None
