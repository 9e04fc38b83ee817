"""Replication lag for `/metrics`: how far each volume's replicas are behind.

The edge mirrors every `repl/` key (the consensus generation of each
repository and each replica's applied one) through its etcd watch, the same
view reads are routed by (routing/replicas.py). `ReplicationCollector` counts
it at scrape time, per volume: nothing is copied or kept in step.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from routing.cache import RoutingCache
from routing.model import VolumeId
from routing.replicas import CATCHING_UP, DOWN, IN_SYNC, ReplicaStatus

REPLICA_STATES = (IN_SYNC, CATCHING_UP, DOWN)


@dataclass
class VolumeLag:
    """The replicas one volume holds, as the routing cache sees them now."""

    states: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REPLICA_STATES, 0))
    behind_max: int = 0
    """The most generations any of them is behind its repository's consensus."""


def replica_lag(
    repos: Iterable[list[ReplicaStatus]], volumes: Iterable[VolumeId]
) -> tuple[dict[VolumeId, VolumeLag], int]:
    """Per volume (every one of `volumes`, and any a replica names): its replicas by
    state and the most generations one is behind; and how many repositories have
    no replica in sync (reads wait, then fail; pushes are refused). Pure."""
    lag = {volume: VolumeLag() for volume in volumes}
    unreadable = 0
    for statuses in repos:
        if not any(status.state == IN_SYNC for status in statuses):
            unreadable += 1
        for status in statuses:
            volume = lag.setdefault(status.volume_id, VolumeLag())
            volume.states[status.state] += 1
            volume.behind_max = max(volume.behind_max, status.behind)
    return lag, unreadable


class ReplicationCollector(Collector):
    """Replication lag per volume, from the mirrored `repl/` keys, at scrape time.

    Praefect's `gitaly_praefect_read_only_repositories` and its per-storage
    gauges are the anchors. Labels are volumes, never repositories: a series
    per repository would grow with the service. Per repository, `gitedge repo
    where` shows each replica's state and lag; how long a replica has lagged
    is its node's `gitedge_node_replica_oldest_catch_up_seconds`.
    """

    def __init__(self, cache: RoutingCache) -> None:
        self._cache = cache

    def collect(self) -> Iterable[Metric]:
        cache = self._cache
        replicated = [record for record in cache.repos.values() if record.replicated]
        lag, unreadable = replica_lag(
            (cache.replica_statuses(record) for record in replicated), cache.volumes
        )
        labels = ("volume", "node", "region")
        replicas = GaugeMetricFamily(
            "gitedge_replicas",
            "Replicas of replicated repositories on each volume, by state"
            " (in-sync, catching-up: its node is up but it is behind, down: no live node).",
            labels=(*labels, "state"),
        )
        behind = GaugeMetricFamily(
            "gitedge_replica_generations_behind_max",
            "The most generations a replica on this volume is behind its consensus (0: none).",
            labels=labels,
        )
        for volume_id, volume_lag in sorted(lag.items()):
            volume = cache.volumes.get(volume_id)
            where = [volume_id, volume.node_id if volume else "-", volume.region if volume else "-"]
            for state, count in volume_lag.states.items():
                replicas.add_metric([*where, state], count)
            behind.add_metric(where, volume_lag.behind_max)
        yield replicas
        yield behind
        yield GaugeMetricFamily(
            "gitedge_replicated_repositories", "Repositories with replicas.", value=len(replicated)
        )
        yield GaugeMetricFamily(
            "gitedge_repositories_without_sync_replica",
            "Replicated repositories with no replica in sync: reads wait, then fail.",
            value=unreadable,
        )
