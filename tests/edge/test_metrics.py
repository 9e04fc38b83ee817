"""edge/metrics.py: git operations as they end, and the collector over live counters.

The collector is read through prometheus-client's own exposition and parser,
as a scraper would; the counters it reads are the real objects an edge holds
(`EdgeState`), moved by hand here. Scrapes of a running edge are in
tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import logging
from typing import cast

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from edge.api.node_admin import NodeAdmin
from edge.config import EdgeConfig, Listener
from edge.errors import RateLimited, RepoNotFound
from edge.http.pool import NodePool
from edge.metrics import FAILED, OK, REFUSED, GitOp, GitOps, protocol_version
from edge.state import EdgeState
from plumbing.connlimit import ConnLimiter, Refusal
from routing.cache import RoutingCache
from routing.etcd import EtcdClient
from routing.model import Region
from routing.schema import Keys

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: CollectorRegistry) -> Samples:
    text = generate_latest(registry).decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def _state() -> EdgeState:
    config = EdgeConfig(
        region=Region("fra"), etcd_endpoints=("http://127.0.0.1:1",), http=(Listener("::1", 0),)
    )
    etcd = EtcdClient("http://127.0.0.1:9")  # never reached: only its counters are read
    return EdgeState(
        config, etcd, RoutingCache(Keys(), etcd), NodePool(1.0, 1.0, 1), cast(NodeAdmin, None)
    )


def test_an_operation_is_counted_once_with_its_bytes_and_duration() -> None:
    registry = CollectorRegistry()
    ops = GitOps(registry, "fra")
    op = GitOp("https", "git-upload-pack", "192.0.2.1", region="lax")
    with ops.track(op):
        assert value(samples(registry), "gitedge_git_operations_in_flight", front="https") == 1
        op.bytes_in, op.bytes_out, op.result = 100, 5000, OK
    found = samples(registry)
    labels = dict(front="https", service="git-upload-pack")
    assert value(found, "gitedge_git_operations_total", **labels, region="lax", result=OK) == 1
    assert value(found, "gitedge_git_received_bytes_total", **labels) == 100
    assert value(found, "gitedge_git_sent_bytes_total", **labels) == 5000
    duration = "gitedge_git_operation_duration_seconds_count"
    assert value(found, duration, **labels, result=OK) == 1
    assert value(found, "gitedge_git_operations_in_flight", front="https") == 0


@pytest.mark.parametrize(
    ("error", "result"),
    [
        (RepoNotFound("alice/x"), REFUSED),
        (RateLimited("git", 3.0, "d"), REFUSED),
        (OSError(), FAILED),
    ],
)
def test_an_exception_decides_the_result(error: Exception, result: str) -> None:
    registry = CollectorRegistry()
    ops = GitOps(registry, "fra")
    op = GitOp("ssh", "git-receive-pack", "192.0.2.1", result=OK)
    with pytest.raises(type(error)), ops.track(op):
        raise error
    found = samples(registry)
    labels = dict(front="ssh", service="git-receive-pack", region="-")
    assert value(found, "gitedge_git_operations_total", **labels, result=result) == 1
    assert value(found, "gitedge_git_operations_in_flight", front="ssh") == 0


def test_the_operation_log_record_carries_escaped_fields(caplog: pytest.LogCaptureFixture) -> None:
    ops = GitOps(CollectorRegistry(), "fra")
    op = GitOp("https", "git-upload-pack", "192.0.2.1", user="al\nice", repo="a/b\x1b[31m")
    with caplog.at_level(logging.INFO, logger="edge.gitops"), ops.track(op):
        op.result = OK
    (record,) = caplog.records
    fields = record.__dict__["fields"]
    assert fields["user"] == "al\\x0aice" and fields["repo"] == "a/b\\x1b[31m"
    assert fields["client"] == "192.0.2.1" and fields["edge_region"] == "fra"
    assert fields["result"] == OK and fields["event"] == "git_operation"


@pytest.mark.parametrize(
    ("header", "version"),
    [
        (None, "0"),
        (b"version=2", "2"),
        ("version=1", "1"),
        (b"x=1:version=2", "2"),
        (b"version=9", "0"),
    ],
)
def test_protocol_version(header: str | bytes | None, version: str) -> None:
    assert protocol_version(header) == version


def test_collector_reads_the_live_counters_that_stats_shows() -> None:
    state = _state()
    limiter = ConnLimiter(10, 5)
    limiter.refused[Refusal.ADDRESS_FULL] += 2
    state.connection_limits["https"] = limiter
    state.pool.stats.connects, state.pool.stats.reuses = 3, 7
    state.limits.stats.ops_refused_busy = 4
    state.limits.stats.auth_refused = 1
    state.etcd.requests_made, state.etcd.request_errors = 12, 2
    found = samples(state.registry)
    pool = "gitedge_node_pool_connections_total"
    assert value(found, pool, kind="new") == 3 and value(found, pool, kind="reused") == 7
    rejections = "gitedge_limit_rejections_total"
    assert value(found, rejections, limit="git_concurrency") == 4
    assert value(found, rejections, limit="auth_failures") == 1
    assert value(found, rejections, limit="git_rate") == 0
    refused = "gitedge_connections_refused_total"
    assert value(found, refused, front="https", limit="per_address") == 2
    assert value(found, "gitedge_etcd_requests_total") == 12
    assert value(found, "gitedge_etcd_request_errors_total") == 2
    assert value(found, "gitedge_routing_cache_synced") == 0
    # /_gitedge/stats: the same objects, so the same numbers, scrape after scrape.
    stats = state.stats()
    assert stats["node_connects"] == 3 and stats["node_reuses"] == 7
    assert stats["etcd_request_errors"] == 2 and stats["limits_ops_refused_busy"] == 4
    state.pool.stats.reuses += 1
    assert value(samples(state.registry), pool, kind="reused") == state.stats()["node_reuses"] == 8


def test_stats_counts_git_operations_from_the_registry() -> None:
    state = _state()
    for result in (OK, OK, REFUSED):
        state.git_ops.record(GitOp("http", "git-upload-pack", "::1", result=result), 0.01)
    stats = state.stats()
    assert stats["git_operations_ok"] == 2 and stats["git_operations_refused"] == 1
    assert "git_operations_failed" not in stats
