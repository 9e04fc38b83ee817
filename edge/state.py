"""What one running edge holds: config, etcd client, routing cache, node pool."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from edge.api.node_admin import NodeAdmin
from edge.config import EdgeConfig
from edge.http.pool import NodePool
from edge.limits import Limits
from edge.metrics import EdgeCollector, GitOps, StatsSource
from edge.replica_metrics import ReplicationCollector
from edge.web_metrics import WebOps
from plumbing.connlimit import ConnLimiter, Refusal
from plumbing.drain import Drain, RequestTracker
from routing.cache import RoutingCache
from routing.etcd import EtcdClient


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
    registry: CollectorRegistry = field(init=False)
    """What `/metrics` shows (edge/metrics.py): the counters below, read at scrape time."""
    git_ops: GitOps = field(init=False)
    web_ops: WebOps = field(init=False)

    def __post_init__(self) -> None:
        self.limits = Limits(
            self.config.ops,
            ipv6_prefix=self.config.address_ipv6_prefix,
            exempt=self.config.is_trusted_proxy,
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.git_ops = GitOps(self.registry, self.config.region)
        self.web_ops = WebOps(self.registry)
        self.registry.register(EdgeCollector(self))
        self.registry.register(ReplicationCollector(self.cache))

    def stats(self) -> dict[str, object]:
        """Counters for operators and benchmarks: warm requests, HTTPS or SSH, should
        move none of `node_connects` or `lookup_etcd_reads`.

        The same counters `/metrics` reads (edge/metrics.py), under their older names."""
        return {
            "requests_active": self.requests.active,
            "draining": self.drain.begun,
            "node_connects": self.pool.stats.connects,
            "node_reuses": self.pool.stats.reuses,
            "node_stale_dropped": self.pool.stats.stale_dropped,
            "etcd_requests": self.etcd.requests_made,
            "etcd_request_errors": self.etcd.request_errors,
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
            **self.git_ops.totals(),
            **(self.web_ops.totals() if self.config.web else {}),
        }
