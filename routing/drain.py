"""Draining a node: `gitedge node drain NODE`.

The drain flag is a durable key (`drains/<node-id>`, routing/schema.py) that
every edge mirrors; placement honours it (RoutingCache.placeable_nodes), so
no edge places a new repository or replica on the node from then on. Then each
replicated repository with a copy there gets one more replica elsewhere
(routing/replica_changes.add_replica) and, once that replica has caught up,
loses the drained one (remove_replica): the set is never smaller than it was.
Unreplicated repositories stay where they are (`repo move` moves one, and the
report lists them). Repositories are taken one at a time: a drain competes
with pushes for the nodes' disks, not with itself.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from routing.cache import RoutingCache
from routing.errors import ChangedMeanwhile, NotFound, StoreUnavailable
from routing.etcd import EtcdClient, EtcdError
from routing.inventory import copies_on_node
from routing.model import DrainRecord, NodeId, Region, RepoName, RepoRecord, VolumeId
from routing.placement import PlacementError, choose_added_replica
from routing.replica_changes import (
    ReplicaChangeRefused,
    ReplicaNodes,
    add_replica,
    remove_replica,
)
from routing.schema import encode_drain

log = logging.getLogger(__name__)


class UnknownNode(Exception):
    """No live node and no volume record has this id."""


@dataclass
class DrainReport:
    node_id: NodeId
    moved: list[dict[str, str]] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    unreplicated: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "drained": True,
            "moved": self.moved,
            "failed": self.failed,
            "unreplicated": self.unreplicated,
        }


def known_node(cache: RoutingCache, node_id: NodeId) -> bool:
    return node_id in cache.nodes or any(v.node_id == node_id for v in cache.volumes.values())


async def set_drain(etcd: EtcdClient, cache: RoutingCache, node_id: NodeId, by: str) -> None:
    if not known_node(cache, node_id):
        raise UnknownNode(node_id)
    drain = DrainRecord(node_id, time.time(), by)
    try:
        await etcd.put(cache.keys.drain(node_id), encode_drain(drain))
    except EtcdError as exc:
        raise StoreUnavailable(f"drain {node_id}: {exc}") from exc
    cache.put_drain(drain)  # ahead of its watch event: this edge's next create honours it
    log.info("node %s drained by %s", node_id, by)


async def clear_drain(etcd: EtcdClient, cache: RoutingCache, node_id: NodeId) -> bool:
    """Placement may use the node again; False if it was not drained."""
    try:
        deleted = await etcd.delete(cache.keys.drain(node_id))
    except EtcdError as exc:
        raise StoreUnavailable(f"undrain {node_id}: {exc}") from exc
    cache.drop_drain(node_id)
    return deleted > 0


def replacement_region(cache: RoutingCache, record: RepoRecord, leaving: VolumeId) -> Region:
    """Where the replica that replaces `leaving` goes: its own region if a placeable
    node there holds no copy yet (reads stay near), else a region the set does not
    cover yet, else any; PlacementError if none can take it."""
    volumes = cache.volumes
    own = volumes[leaving].region if leaving in volumes else None
    held = {volumes[v].region for v in record.replica_volumes if v in volumes}
    regions = sorted({v.region for v in volumes.values()}, key=lambda r: (r != own, r in held, r))
    for region in regions:
        try:
            choose_added_replica(
                region,
                record.replica_volumes,
                volumes.values(),
                cache.placeable_nodes,
                cache.repo_counts,
            )
        except PlacementError:
            continue
        return region
    raise PlacementError(f"{record.name}: no live volume outside the drained node(s) for a replica")


async def move_replicas_off(
    etcd: EtcdClient, cache: RoutingCache, nodes: ReplicaNodes, node_id: NodeId
) -> DrainReport:
    """Move every replicated repository's copy off `node_id` (which must be drained)."""
    report = DrainReport(node_id)
    for name, volume_id, replicated in copies_on_node(
        list(cache.repos.values()), cache.volumes, node_id
    ):
        if not replicated:
            report.unreplicated.append(name.path)
            continue
        try:
            moved_to = await _move_one(etcd, cache, nodes, name, volume_id)
        except (
            PlacementError,
            ReplicaChangeRefused,
            ChangedMeanwhile,
            NotFound,
            StoreUnavailable,
        ) as exc:
            log.warning("drain %s: %s stays: %s", node_id, name, exc)
            report.failed.append({"repo": name.path, "volume": volume_id, "reason": str(exc)})
        else:
            report.moved.append({"repo": name.path, "from": volume_id, "to": moved_to})
    return report


async def _move_one(
    etcd: EtcdClient, cache: RoutingCache, nodes: ReplicaNodes, name: RepoName, leaving: VolumeId
) -> VolumeId:
    record = await cache.record(name)
    region = replacement_region(cache, record, leaving)
    added = await add_replica(etcd, cache, nodes, name, region)
    if not added.in_sync:
        raise ReplicaChangeRefused(
            f"the new replica {added.volume} has not caught up yet; {leaving} stays in the set"
        )
    await remove_replica(etcd, cache, nodes, name, leaving)
    log.info("drain: %s moved from %s to %s", name, leaving, added.volume)
    return added.volume
