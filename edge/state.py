"""What one running edge holds: config, etcd client, routing cache, node pool."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from edge.api.node_admin import NodeAdmin
from edge.config import EdgeConfig
from edge.http.pool import NodePool
from edge.limits import Limits
from plumbing.connlimit import ConnLimiter, Refusal
from plumbing.drain import Drain, RequestTracker
from routing.cache import RoutingCache
from routing.etcd import EtcdClient


class StatsSource(Protocol):
    """A front that reports its own counters (the SSH front)."""

    def stats_dict(self) -> Mapping[str, object]: ...


@dataclass
class EdgeState:
    config: EdgeConfig
    etcd: EtcdClient
    cache: RoutingCache
    pool: NodePool
    node_admin: NodeAdmin
    requests: RequestTracker = field(default_factory=RequestTracker)
    """HTTP requests and SSH sessions in flight (shutdown drains both)."""
    drain: Drain = field(default_factory=Drain)
    """Begun by SIGTERM (edge/app.py): listeners stop, idle connections close."""
    ssh_front: StatsSource | None = None
    web_pool: NodePool | None = None
    """Keep-alive connections to the web frontend (`[web]`); None: no frontend."""
    connection_limits: dict[str, ConnLimiter] = field(default_factory=dict)
    """The HTTP(S) fronts' connection counts, by front ("https", "http")."""
    limits: Limits = field(init=False)
    """Git operation, failed-auth and API-write limits, shared by both fronts."""

    def __post_init__(self) -> None:
        self.limits = Limits(
            self.config.ops,
            ipv6_prefix=self.config.address_ipv6_prefix,
            exempt=self.config.is_trusted_proxy,
        )

    def stats(self) -> dict[str, object]:
        """Counters for operators and benchmarks: warm requests, HTTPS or SSH, should
        move none of `node_connects` or `lookup_etcd_reads`."""
        return {
            "requests_active": self.requests.active,
            "draining": self.drain.begun,
            "node_connects": self.pool.stats.connects,
            "node_reuses": self.pool.stats.reuses,
            "node_stale_dropped": self.pool.stats.stale_dropped,
            "etcd_requests": self.etcd.requests_made,
            "lookup_etcd_reads": self.cache.stats.etcd_reads,
            "cache_synced": self.cache.synced,
            "cache_revision": self.cache.revision,
            "cache_resets": self.cache.stats.resets,
            "repos_cached": len(self.cache.repos),
            "creates_unsettled": len(self.cache.unsettled),
            **{
                f"{front}_{name}": value
                for front, limiter in self.connection_limits.items()
                for name, value in (
                    ("connections", limiter.total),
                    ("refused_listener_full", limiter.refused[Refusal.LISTENER_FULL]),
                    ("refused_address_full", limiter.refused[Refusal.ADDRESS_FULL]),
                )
            },
            # SSH front (when configured): connections, sessions, and their share of
            # the node pool above (warm sessions move only ssh_pool_reuses).
            **(self.ssh_front.stats_dict() if self.ssh_front else {}),
            **self.limits.stats_dict(),
        }
