"""What one running edge holds: config, etcd client, routing cache, node pool."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import trio

from edge.api.node_admin import NodeAdmin
from edge.config import EdgeConfig
from edge.http.pool import NodePool
from edge.limits import Limits
from routing.cache import RoutingCache
from routing.etcd import EtcdClient


class StatsSource(Protocol):
    """A front that reports its own counters (the SSH front)."""

    def stats_dict(self) -> Mapping[str, object]: ...


class RequestTracker:
    """Counts requests in flight so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.active = 0
        self._idle = trio.Event()
        self._idle.set()

    @contextmanager
    def track(self) -> Iterator[None]:
        if self.active == 0:
            self._idle = trio.Event()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if self.active == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclass
class EdgeState:
    config: EdgeConfig
    etcd: EtcdClient
    cache: RoutingCache
    pool: NodePool
    node_admin: NodeAdmin
    requests: RequestTracker = field(default_factory=RequestTracker)
    """HTTP requests and SSH sessions in flight (shutdown drains both)."""
    ssh_front: StatsSource | None = None
    limits: Limits = field(init=False)
    """Git operation, failed-auth and API-write limits, shared by both fronts."""

    def __post_init__(self) -> None:
        self.limits = Limits(self.config.ops)

    def stats(self) -> dict[str, object]:
        """Counters for operators and benchmarks: warm requests, HTTPS or SSH, should
        move none of `node_connects` or `lookup_etcd_reads`."""
        return {
            "requests_active": self.requests.active,
            "node_connects": self.pool.stats.connects,
            "node_reuses": self.pool.stats.reuses,
            "node_stale_dropped": self.pool.stats.stale_dropped,
            "etcd_requests": self.etcd.requests_made,
            "lookup_etcd_reads": self.cache.stats.etcd_reads,
            "cache_synced": self.cache.synced,
            "cache_revision": self.cache.revision,
            "cache_resets": self.cache.stats.resets,
            "repos_cached": len(self.cache.repos),
            # SSH front (when configured): connections, sessions, and their share of
            # the node pool above (warm sessions move only ssh_pool_reuses).
            **(self.ssh_front.stats_dict() if self.ssh_front else {}),
            **self.limits.stats_dict(),
        }
