"""node/metrics.py: a git process is counted once, with the result its exit says;
a replica's catch-up is pending from its first attempt until one succeeds.

Real git processes behind the node's HTTP server are counted in
tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import GitProcessMetrics, ReplicaMetrics


def _value(metrics: GitProcessMetrics, name: str, **labels: str) -> float:
    text = generate_latest(metrics.registry).decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


@pytest.mark.parametrize(("returncode", "result"), [(0, "ok"), (128, "failed"), (None, "failed")])
def test_exit_status_decides_the_result(returncode: int | None, result: str) -> None:
    metrics = GitProcessMetrics()
    with metrics.track("git-upload-pack", "rpc") as process:
        assert _value(metrics, "gitedge_node_git_processes_running") == 1
        process.returncode = returncode
    total = "gitedge_node_git_processes_total"
    assert _value(metrics, total, service="git-upload-pack", kind="rpc", result=result) == 1
    assert _value(metrics, total) == 1
    assert _value(metrics, "gitedge_node_git_process_duration_seconds_count") == 1
    assert _value(metrics, "gitedge_node_git_processes_running") == 0


def test_an_exchange_that_breaks_off_is_aborted() -> None:
    metrics = GitProcessMetrics()
    with pytest.raises(OSError), metrics.track("git-receive-pack", "ssh"):
        raise OSError("client gone")
    assert _value(metrics, "gitedge_node_git_processes_total", result="aborted") == 1
    assert _value(metrics, "gitedge_node_git_processes_running") == 0


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _replica_value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    text = generate_latest(registry).decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_a_failing_catch_up_stays_pending_and_ages_until_one_succeeds() -> None:
    registry, clock = CollectorRegistry(), _Clock()
    metrics = ReplicaMetrics(registry, "v-1", clock)
    pending, oldest = (
        "gitedge_node_replica_catch_ups_pending",
        "gitedge_node_replica_oldest_catch_up_seconds",
    )
    assert _replica_value(registry, pending, volume="v-1") == 0
    assert _replica_value(registry, oldest) == 0
    with pytest.raises(OSError), metrics.applying("alice/a"):
        clock.now += 1
        raise OSError("no in-sync replica to fetch from")
    clock.now += 4
    assert _replica_value(registry, pending) == 1
    assert _replica_value(registry, oldest) == 5  # since the first attempt began
    applies = "gitedge_node_replica_applies_total"
    assert _replica_value(registry, applies, volume="v-1", result="failed") == 1
    with metrics.applying("alice/a"):
        clock.now += 2
    assert _replica_value(registry, pending) == 0
    assert _replica_value(registry, oldest) == 0
    assert _replica_value(registry, applies, result="ok") == 1
    assert _replica_value(registry, "gitedge_node_replica_catch_up_seconds_sum") == 7
    assert _replica_value(registry, "gitedge_node_replica_apply_duration_seconds_count") == 2


def test_a_copy_that_is_no_replica_is_forgotten_and_not_a_failure() -> None:
    class NotOurs(Exception):
        pass

    registry = CollectorRegistry()
    metrics = ReplicaMetrics(registry, "v-1")
    with pytest.raises(NotOurs), metrics.applying("alice/gone", not_lag=(NotOurs,)):
        raise NotOurs
    assert _replica_value(registry, "gitedge_node_replica_catch_ups_pending") == 0
    assert _replica_value(registry, "gitedge_node_replica_applies_total", result="failed") == 0
