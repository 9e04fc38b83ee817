"""Placement: which live volume a new repository goes on. Pure.

A volume is live when its node's leased record exists and still lists it.
Among the live volumes of the region: fewest repositories first, then most
free space, then the volume id (so equal inputs give equal answers).
A drained node (`gitedge node drain`) takes nothing new: callers pass
`placeable_nodes(...)`, not every live node.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence

from routing.model import NodeId, NodeRecord, Region, VolumeId, VolumeRecord


class PlacementError(Exception):
    """No volume for the request; the message is safe to show the client."""


def placeable_nodes(
    nodes: Mapping[NodeId, NodeRecord], drained: Container[NodeId]
) -> dict[NodeId, NodeRecord]:
    """The live nodes that may take a new repository or replica: not drained."""
    return {node_id: node for node_id, node in nodes.items() if node_id not in drained}


def live_volumes(
    volumes: Iterable[VolumeRecord], nodes: Mapping[NodeId, NodeRecord]
) -> dict[VolumeId, int]:
    """Live volume ids and their free bytes, as their nodes advertise them."""
    live: dict[VolumeId, int] = {}
    for volume in volumes:
        node = nodes.get(volume.node_id)
        if node is None or node.region != volume.region:
            continue
        for info in node.volumes:
            if info.volume_id == volume.volume_id:
                live[volume.volume_id] = info.free_bytes
    return live


def choose_volume(
    region: Region,
    volumes: Iterable[VolumeRecord],
    nodes: Mapping[NodeId, NodeRecord],
    repo_counts: Mapping[VolumeId, int],
    fallback: Region | None = None,
) -> VolumeRecord:
    """The volume to place a new repository on, in `region` or else `fallback`."""
    volumes = list(volumes)
    live = live_volumes(volumes, nodes)
    tried: list[Region] = []
    reasons: list[str] = []
    for want in (region, fallback):
        if want is None or want in tried:
            continue
        tried.append(want)
        in_region = [v for v in volumes if v.region == want]
        candidates = [v for v in in_region if v.volume_id in live]
        if candidates:
            return min(
                candidates,
                key=lambda v: (repo_counts.get(v.volume_id, 0), -live[v.volume_id], v.volume_id),
            )
        reasons.append(
            f"no live volume in region {want!r}" if in_region else f"unknown region {want!r}"
        )
    raise PlacementError("; ".join(reasons))


def choose_replicas(
    region: Region,
    factor: int,
    volumes: Iterable[VolumeRecord],
    nodes: Mapping[NodeId, NodeRecord],
    repo_counts: Mapping[VolumeId, int],
    fallback: Region | None = None,
    regions: Sequence[Region] = (),
) -> list[VolumeRecord]:
    """`factor` live volumes on distinct nodes, the home (as `choose_volume`) first.

    `regions` names where the next replicas must go, in order (the creator's
    choice; PlacementError if one has no live volume on a node not used yet).
    The rest go to regions not used yet first (a region down must not take
    two replicas with it), then to other nodes of used regions; two replicas
    on one node would survive nothing, so that is never chosen.
    """
    volumes = list(volumes)
    home = choose_volume(region, volumes, nodes, repo_counts, fallback)
    if len(regions) > factor - 1:
        raise PlacementError(f"{len(regions)} replica regions named for {factor - 1} replicas")
    if factor <= 1:
        return [home]
    live = live_volumes(volumes, nodes)
    chosen = [home]
    for wanted in regions:
        used_nodes = {v.node_id for v in chosen}
        here = [
            v
            for v in volumes
            if v.region == wanted and v.volume_id in live and v.node_id not in used_nodes
        ]
        if not here:
            raise PlacementError(f"no live volume for a replica in region {wanted!r}")
        chosen.append(min(here, key=lambda v: (repo_counts.get(v.volume_id, 0), v.volume_id)))
    while len(chosen) < factor:
        used_regions = {v.region for v in chosen}
        used_nodes = {v.node_id for v in chosen}
        candidates = [v for v in volumes if v.volume_id in live and v.node_id not in used_nodes]
        if not candidates:
            raise PlacementError(
                f"{factor} replicas need {factor} live nodes; only {len(chosen)} available"
            )
        chosen.append(
            min(
                candidates,
                key=lambda v: (
                    v.region in used_regions,
                    repo_counts.get(v.volume_id, 0),
                    -live[v.volume_id],
                    v.volume_id,
                ),
            )
        )
    return chosen


def choose_added_replica(
    region: Region,
    replica_volumes: Iterable[VolumeId],
    volumes: Iterable[VolumeRecord],
    nodes: Mapping[NodeId, NodeRecord],
    repo_counts: Mapping[VolumeId, int],
) -> VolumeRecord:
    """A live volume in `region` for one more replica, on a node holding none yet.

    A node holds at most one replica of a repository (two on one node survive
    nothing more than one); among the candidates, the order of `choose_volume`.
    """
    volumes = list(volumes)
    by_id = {v.volume_id: v for v in volumes}
    held = set(replica_volumes)
    used_nodes = {by_id[v].node_id for v in held if v in by_id}
    live = live_volumes(volumes, nodes)
    in_region = [v for v in volumes if v.region == region]
    if not in_region:
        raise PlacementError(f"unknown region {region!r}")
    candidates = [
        v
        for v in in_region
        if v.volume_id in live and v.volume_id not in held and v.node_id not in used_nodes
    ]
    if not candidates:
        raise PlacementError(
            f"no live volume in region {region!r} on a node that holds no replica yet"
        )
    return min(
        candidates,
        key=lambda v: (repo_counts.get(v.volume_id, 0), -live[v.volume_id], v.volume_id),
    )
