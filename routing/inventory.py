"""What `gitedge nodes`, `gitedge volumes` and `gitedge repo ls` show. Pure.

Built from the routing cache's tables: a node is live while its leased record
exists; a volume is live while its node's record lists it (as placement sees
it, routing/placement.live_volumes). A node that is down still shows, through
the durable volume records that name it.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from routing.model import NodeId, NodeRecord, Region, RepoName, RepoRecord, VolumeId, VolumeRecord
from routing.placement import live_volumes


@dataclass(frozen=True)
class VolumeRow:
    volume_id: VolumeId
    region: Region
    node_id: NodeId
    live: bool
    free_bytes: int | None
    """As the node last advertised it; None while the node is down."""
    repos: int
    drained: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume_id,
            "region": self.region,
            "node": self.node_id,
            "live": self.live,
            "free_bytes": self.free_bytes,
            "repos": self.repos,
            "drained": self.drained,
        }


@dataclass(frozen=True)
class NodeRow:
    node_id: NodeId
    region: Region
    live: bool
    drained: bool
    volumes: tuple[VolumeId, ...]
    repos: int
    free_bytes: int | None
    """The sum over its live volumes; None while the node is down."""

    def to_json(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "region": self.region,
            "live": self.live,
            "drained": self.drained,
            "volumes": list(self.volumes),
            "repos": self.repos,
            "free_bytes": self.free_bytes,
        }


def volume_rows(
    volumes: Iterable[VolumeRecord],
    nodes: Mapping[NodeId, NodeRecord],
    repo_counts: Mapping[VolumeId, int],
    drained: Container[NodeId],
) -> list[VolumeRow]:
    """Every volume with a durable record, by region then id."""
    volumes = list(volumes)
    live = live_volumes(volumes, nodes)
    rows = [
        VolumeRow(
            v.volume_id,
            v.region,
            v.node_id,
            v.volume_id in live,
            live.get(v.volume_id),
            repo_counts.get(v.volume_id, 0),
            v.node_id in drained,
        )
        for v in volumes
    ]
    return sorted(rows, key=lambda r: (r.region, r.volume_id))


def node_rows(
    volumes: Iterable[VolumeRecord],
    nodes: Mapping[NodeId, NodeRecord],
    repo_counts: Mapping[VolumeId, int],
    drained: Container[NodeId],
) -> list[NodeRow]:
    """Every live node, and every node a volume record names (down, if not live)."""
    by_node: dict[NodeId, list[VolumeRow]] = {}
    for row in volume_rows(volumes, nodes, repo_counts, drained):
        by_node.setdefault(row.node_id, []).append(row)
    rows: list[NodeRow] = []
    for node_id in sorted(set(by_node) | set(nodes)):
        held = by_node.get(node_id, [])
        node = nodes.get(node_id)
        region = node.region if node else held[0].region
        free = [r.free_bytes for r in held if r.free_bytes is not None]
        rows.append(
            NodeRow(
                node_id,
                region,
                node is not None,
                node_id in drained,
                tuple(r.volume_id for r in held),
                sum(r.repos for r in held),
                sum(free) if node is not None else None,
            )
        )
    return sorted(rows, key=lambda r: (r.region, r.node_id))


def repo_rows(
    repos: Iterable[RepoRecord],
    volumes: Mapping[VolumeId, VolumeRecord],
    region: Region | None = None,
    node: NodeId | None = None,
) -> list[dict[str, Any]]:
    """Repositories with a copy in `region` and on `node` (each filter optional), by name."""
    rows = []
    for record in sorted(repos, key=lambda r: r.name):
        copies = [volumes.get(v) for v in record.replica_volumes]
        if region is not None and not any(c and c.region == region for c in copies):
            continue
        if node is not None and not any(c and c.node_id == node for c in copies):
            continue
        row: dict[str, Any] = {
            "repo": record.name.path,
            "region": record.region,
            "volume": record.volume_id,
            "node": copies[0].node_id if copies[0] else None,
            "public": record.public,
        }
        if record.replicated:
            row["replicas"] = [
                {"volume": v, "region": c.region if c else None, "node": c.node_id if c else None}
                for v, c in zip(record.replica_volumes, copies, strict=True)
            ]
            row["sync_replicas"] = record.sync_replicas
        rows.append(row)
    return rows


def copies_on_node(
    repos: Iterable[RepoRecord], volumes: Mapping[VolumeId, VolumeRecord], node: NodeId
) -> list[tuple[RepoName, VolumeId, bool]]:
    """(repository, its volume on `node`, replicated?) for every copy `node` holds."""
    held = []
    for record in sorted(repos, key=lambda r: r.name):
        for volume_id in record.replica_volumes:
            volume = volumes.get(volume_id)
            if volume is not None and volume.node_id == node:
                held.append((record.name, volume_id, record.replicated))
    return held
