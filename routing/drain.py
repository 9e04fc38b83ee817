"""Draining a node: `gitedge node drain NODE`.

The drain flag is a durable key (`drains/<node-id>`, routing/schema.py) that
every edge mirrors; placement honours it (RoutingCache.placeable_nodes), so
no edge places a new repository or replica on the node from then on. Then
every copy the node holds moves off, one repository at a time (a drain
competes with pushes for the nodes' disks, not with itself), to a live volume
of the same region if another node there can take it, else of a region the
repository's set does not cover yet, else any (`replacement_region`):

- a replicated repository gets one more replica there
  (routing/replica_changes.add_replica) and, once that one has caught up,
  loses the drained one (remove_replica): the set is never smaller than it was;
- an unreplicated one is moved as `repo move` moves it (replicated W=2 on both
  copies while the new one catches up, then back to one copy, the new one).

A new copy that does not catch up in time never costs the old one: a
replicated repository keeps the drained replica (and the new one, which
catches up later); an unreplicated one has its move undone (undo_move), back
to its one copy on the drained node, as before. Either way the report lists
it under `failed` with the reason, and the CLI exits 1; draining again
retries what is left.
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
    CATCH_UP_TIMEOUT,
    ChangeResult,
    ReplicaChangeRefused,
    ReplicaNodes,
    add_replica,
    finish_move,
    remove_replica,
    undo_move,
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
    """Copies still on the node: repo, volume and the reason."""

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "drained": True,
            "complete": not self.failed,
            "moved": self.moved,
            "failed": self.failed,
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


async def move_copies_off(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ReplicaNodes,
    node_id: NodeId,
    *,
    catch_up_timeout: float = CATCH_UP_TIMEOUT,
) -> DrainReport:
    """Move every repository's copy off `node_id` (which must be drained)."""
    report = DrainReport(node_id)
    for name, volume_id, replicated in copies_on_node(
        list(cache.repos.values()), cache.volumes, node_id
    ):
        move = _move_replica if replicated else _move_only_copy
        try:
            moved_to = await move(etcd, cache, nodes, name, volume_id, catch_up_timeout)
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


async def _add_replacement(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ReplicaNodes,
    name: RepoName,
    leaving: VolumeId,
    catch_up_timeout: float,
) -> ChangeResult:
    """A new copy of `name` where replacement_region says, given its time to catch up."""
    region = replacement_region(cache, await cache.record(name), leaving)
    return await add_replica(etcd, cache, nodes, name, region, catch_up_timeout=catch_up_timeout)


async def _move_replica(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ReplicaNodes,
    name: RepoName,
    leaving: VolumeId,
    catch_up_timeout: float,
) -> VolumeId:
    added = await _add_replacement(etcd, cache, nodes, name, leaving, catch_up_timeout)
    if not added.in_sync:
        raise ReplicaChangeRefused(
            f"the new replica {added.volume} did not catch up within {catch_up_timeout:.0f}s;"
            f" {leaving} stays in the set (the new one catches up later)"
        )
    await remove_replica(etcd, cache, nodes, name, leaving)
    log.info("drain: %s moved from %s to %s", name, leaving, added.volume)
    return added.volume


async def _move_only_copy(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ReplicaNodes,
    name: RepoName,
    leaving: VolumeId,
    catch_up_timeout: float,
) -> VolumeId:
    """`repo move`, to the region replacement_region picks (its own, if it can)."""
    added = await _add_replacement(etcd, cache, nodes, name, leaving, catch_up_timeout)
    if added.in_sync:
        try:
            await finish_move(etcd, cache, nodes, name, added.volume, catch_up_timeout)
        except ReplicaChangeRefused as exc:
            log.warning("drain: %s: %s", name, exc)
        else:
            log.info("drain: %s moved from %s to %s", name, leaving, added.volume)
            return added.volume
    try:
        await undo_move(etcd, cache, nodes, name, added.volume)
    except (ReplicaChangeRefused, ChangedMeanwhile, NotFound, StoreUnavailable) as exc:
        raise ReplicaChangeRefused(
            f"the new copy {added.volume} did not catch up within {catch_up_timeout:.0f}s"
            f" and undoing the move failed ({exc}): it stays replicated on {leaving} and"
            f" {added.volume} (W=2) until `repo move` finishes it"
        ) from None
    raise ReplicaChangeRefused(
        f"the new copy {added.volume} did not catch up within {catch_up_timeout:.0f}s;"
        f" the move is undone: {name} stays on {leaving} alone, as before"
    )
