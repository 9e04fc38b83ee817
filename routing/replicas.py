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

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from routing.model import NodeId, NodeRecord, Region, RepoRecord, VolumeId, VolumeRecord
from routing.regions import RttTable

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


def choose_read_replica(
    statuses: list[ReplicaStatus], region: Region, rtt: RttTable | None = None
) -> ReplicaStatus | None:
    """The in-sync replica nearest `region`; None when no replica is in sync.

    In `region` itself, else the nearest by the RTT table, else the home (the
    record lists it first), else the first listed. Deterministic: the same
    statuses give the same replica, so the requests of one smart-HTTP exchange
    go to one replica while nothing changes (docs/replication.md, "Read path").
    """
    table = rtt or RttTable()
    in_sync = [(index, s) for index, s in enumerate(statuses) if s.state == IN_SYNC]
    if not in_sync:
        return None

    def distance(item: tuple[int, ReplicaStatus]) -> tuple[float, int]:
        index, status = item
        far = math.inf if status.region is None else table.rtt_ms(region, status.region)
        return far, index  # unknown links tie at inf: then record order, home first

    return min(in_sync, key=distance)[1]


def regions_needed(sync_replicas: int, set_regions: Collection[Region]) -> int:
    """How many regions a push's W copies must span: 2 where the set spans 2 or
    more (and W >= 2), else what the set has. A region lost must not take every
    acknowledged copy with it (issue 8: "in at least 2 regions")."""
    return min(2, sync_replicas, len(set(set_regions)))


def durable_enough(
    primary: Region, acked: Collection[Region], sync_replicas: int, set_regions: Collection[Region]
) -> bool:
    """Whether the primary plus the peers that acked (their regions, one per ack)
    make the W copies a push needs, in enough regions."""
    copies = 1 + len(acked)
    spanned = len({primary, *acked})
    return copies >= sync_replicas and spanned >= regions_needed(sync_replicas, set_regions)
