"""The edge's numbers for Prometheus (`/metrics` on the admin listener) and /_gitedge/stats.

Two kinds, one registry per edge:

- git operations (count, bytes each way, duration, in flight) are recorded as
  they end, by `GitOps.record`, which also writes the operation's log line;
  requests for the web frontend likewise, by `WebOps.record` (edge/web_metrics.py);
- everything else (connections, limits, the node pool, etcd, the routing cache)
  is a counter some module keeps already. `EdgeCollector` reads those live
  objects at scrape time, and `/_gitedge/stats` reads the same ones: one source
  of numbers, two views. Names follow gitlab-shell's `gitlab_shell_sshd_*` and
  Gitaly's conventions: `gitedge_` prefix, `_total` counters, seconds and bytes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge.errors import EdgeError
from edge.http.pool import NodePool
from edge.limits import Limits
from plumbing.connlimit import ConnLimiter, Refusal
from plumbing.drain import Drain, RequestTracker
from plumbing.observe import log_git_operation
from plumbing.observe import protocol_version as protocol_version  # the fronts' import
from routing.cache import RoutingCache
from routing.etcd import EtcdClient

oplog = logging.getLogger("edge.gitops")

# Clones of large repositories take minutes; ls-remote takes milliseconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)
OK, REFUSED, FAILED = "ok", "refused", "failed"


@dataclass
class GitOp:
    """One git operation (an HTTP request of a service, or an SSH session) as it ends."""

    front: str
    """"https", "http" or "ssh"."""
    service: str
    client_ip: str
    user: str | None = None
    repo: str = "-"
    protocol: str = "0"
    """The git protocol version the client asked for (GIT_PROTOCOL `version=2`)."""
    region: str = "-"
    """The region of the node that served it; "-" when none was reached."""
    node: str = "-"
    bytes_in: int = 0
    """From the client (request bodies, pushed packs)."""
    bytes_out: int = 0
    """To the client."""
    result: str = FAILED
    """"ok", "refused" (access, routing, limits: nothing ran) or "failed"."""
    status: str = "-"
    """The HTTP status or the SSH exit status."""


class GitOps:
    """Counts and logs git operations; `track()` around one."""

    def __init__(self, registry: CollectorRegistry, region: str) -> None:
        self._region = region
        labels = ("front", "service", "region", "result")
        self.operations = Counter(
            "gitedge_git_operations",
            "Git operations (HTTP service requests, SSH sessions) that ended.",
            labels,
            registry=registry,
        )
        self.bytes_received = Counter(
            "gitedge_git_received_bytes",
            "Bytes of git operations from clients.",
            ("front", "service"),
            registry=registry,
        )
        self.bytes_sent = Counter(
            "gitedge_git_sent_bytes",
            "Bytes of git operations to clients.",
            ("front", "service"),
            registry=registry,
        )
        self.duration = Histogram(
            "gitedge_git_operation_duration_seconds",
            "Wall time of git operations, first byte to last.",
            ("front", "service", "result"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "gitedge_git_operations_in_flight",
            "Git operations running now.",
            ("front",),
            registry=registry,
        )

    @contextmanager
    def track(self, op: GitOp) -> Iterator[GitOp]:
        """Counts `op` in flight, then records it as it ends; the caller fills it in.

        An EdgeError leaving the block (access, routing, limits) is a refusal;
        any other exception a failure; a normal exit keeps the caller's result.
        """
        started = time.monotonic()
        gauge = self.in_flight.labels(op.front)
        gauge.inc()
        try:
            yield op
        except EdgeError as exc:
            op.result, op.status = REFUSED, str(exc.http_status)
            raise
        except BaseException:
            op.result = FAILED
            raise
        finally:
            gauge.dec()
            self.record(op, time.monotonic() - started)

    def record(self, op: GitOp, seconds: float) -> None:
        self.operations.labels(op.front, op.service, op.region, op.result).inc()
        self.bytes_received.labels(op.front, op.service).inc(op.bytes_in)
        self.bytes_sent.labels(op.front, op.service).inc(op.bytes_out)
        self.duration.labels(op.front, op.service, op.result).observe(seconds)
        fields = {
            "user": op.user,
            "repo": op.repo,
            "service": op.service,
            "protocol": op.protocol,
            "front": op.front,
            "client": op.client_ip,
            "region": op.region,
            "edge_region": self._region,
            "node": op.node,
            "bytes_in": op.bytes_in,
            "bytes_out": op.bytes_out,
            "duration_s": round(seconds, 6),
            "result": op.result,
            "status": op.status,
        }
        # The text log already has an access line per operation (edge.access).
        log_git_operation(oplog, fields, in_text_log=False)

    def totals(self) -> dict[str, float]:
        """Operations by result, for /_gitedge/stats: read from the counters above."""
        totals: dict[str, float] = {}
        for metric in self.operations.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    key = f"git_operations_{sample.labels['result']}"
                    totals[key] = totals.get(key, 0) + sample.value
        return totals


class StatsSource(Protocol):
    """A front that reports its own counters (the SSH front)."""

    def stats_dict(self) -> Mapping[str, object]: ...


class LiveCounters(Protocol):
    """What the collector reads: the parts of a running edge (edge/state.py's EdgeState)."""

    @property
    def etcd(self) -> EtcdClient: ...
    @property
    def cache(self) -> RoutingCache: ...
    @property
    def pool(self) -> NodePool: ...
    @property
    def limits(self) -> Limits: ...
    @property
    def requests(self) -> RequestTracker: ...
    @property
    def drain(self) -> Drain: ...
    @property
    def connection_limits(self) -> Mapping[str, ConnLimiter]: ...
    @property
    def ssh_front(self) -> StatsSource | None: ...


_LIMITS = {
    # LimitStats field -> the limit's name in gitedge_limit_rejections_total{limit}
    "ops_refused_rate": "git_rate",
    "ops_refused_busy": "git_concurrency",
    "auth_refused": "auth_failures",
    "api_writes_refused": "api_write_rate",
}
_REFUSALS = {Refusal.LISTENER_FULL: "max_connections", Refusal.ADDRESS_FULL: "per_address"}


class EdgeCollector(Collector):
    """Reads `state`'s live counters at scrape time (no copy to keep in step)."""

    def __init__(self, state: LiveCounters) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state
        yield from _limit_metrics(state)
        yield from _connection_metrics(state)
        yield from _ssh_metrics(state)
        pool = CounterMetricFamily(
            "gitedge_node_pool_connections",
            "Connections to nodes taken from the pool: new (dialled) or reused (warm).",
            labels=("kind",),
        )
        pool.add_metric(["new"], state.pool.stats.connects)
        pool.add_metric(["reused"], state.pool.stats.reuses)
        yield pool
        yield _counter(
            "gitedge_node_pool_stale_dropped",
            "Pooled node connections found closed and dropped.",
            state.pool.stats.stale_dropped,
        )
        yield _counter("gitedge_etcd_requests", "HTTP requests to etcd.", state.etcd.requests_made)
        yield _counter(
            "gitedge_etcd_request_errors",
            "etcd requests that failed or were refused (per endpoint tried).",
            state.etcd.request_errors,
        )
        cache = state.cache
        yield _gauge(
            "gitedge_routing_cache_synced",
            "1 when the routing cache mirrors etcd.",
            int(cache.synced),
        )
        yield _gauge(
            "gitedge_routing_cache_revision",
            "The etcd revision the routing cache has applied.",
            cache.revision,
        )
        yield _counter("gitedge_routing_cache_resets", "Full reloads.", cache.stats.resets)
        yield _counter(
            "gitedge_routing_cache_etcd_reads",
            "Lookups that missed the cache and read etcd.",
            cache.stats.etcd_reads,
        )
        yield _gauge("gitedge_routing_cache_repos", "Repositories cached.", len(cache.repos))
        yield _gauge(
            "gitedge_requests_in_flight",
            "HTTP requests and SSH sessions being served.",
            state.requests.active,
        )
        yield _gauge("gitedge_draining", "1 once a drain has begun.", int(state.drain.begun))


def _limit_metrics(state: LiveCounters) -> Iterator[Metric]:
    rejections = CounterMetricFamily(
        "gitedge_limit_rejections",
        "Git operations, logins and API writes refused by a limit ([limits]).",
        labels=("limit",),
    )
    stats = state.limits.stats
    for field_name, limit in _LIMITS.items():
        rejections.add_metric([limit], getattr(stats, field_name))
    yield rejections
    yield _gauge("gitedge_limits_active", "Git operations holding slots.", state.limits.active)


def _connection_metrics(state: LiveCounters) -> Iterator[Metric]:
    refused = CounterMetricFamily(
        "gitedge_connections_refused",
        "Client connections refused by a connection limit.",
        labels=("front", "limit"),
    )
    total = GaugeMetricFamily(
        "gitedge_connections_open", "Client connections open.", labels=("front",)
    )
    for front, limiter in state.connection_limits.items():
        total.add_metric([front], limiter.total)
        for refusal, limit in _REFUSALS.items():
            refused.add_metric([front, limit], limiter.refused[refusal])
    ssh = _ssh_stats(state)
    if ssh is not None:
        total.add_metric(["ssh"], ssh["ssh_connections_active"])
        refused.add_metric(["ssh", "max_connections"], ssh["ssh_refused_listener_full"])
        refused.add_metric(["ssh", "per_address"], ssh["ssh_refused_address_full"])
        refused.add_metric(["ssh", "max_startups"], ssh["ssh_refused_max_startups"])
    yield total
    yield refused


def _ssh_metrics(state: LiveCounters) -> Iterator[Metric]:
    ssh = _ssh_stats(state)
    if ssh is None:
        return
    yield _counter("gitedge_ssh_connections", "SSH connections admitted.", ssh["ssh_connections"])
    yield _counter(
        "gitedge_ssh_handshakes",
        "SSH connections that completed key exchange and authentication.",
        ssh["ssh_authenticated"],
    )
    yield _counter(
        "gitedge_ssh_auth_failures",
        "SSH public keys rejected (unknown to gitedge).",
        ssh["ssh_auth_rejected"],
    )
    yield _counter("gitedge_ssh_sessions", "SSH sessions opened.", ssh["ssh_sessions"])
    yield _gauge("gitedge_ssh_sessions_active", "SSH sessions open.", ssh["ssh_sessions_active"])


def _ssh_stats(state: LiveCounters) -> dict[str, int] | None:
    if state.ssh_front is None:
        return None
    return {k: int(v) for k, v in state.ssh_front.stats_dict().items() if isinstance(v, int)}


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
