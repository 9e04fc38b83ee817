"""node/metrics.py: a git process is counted once, with the result its exit says.

Real git processes behind the node's HTTP server are counted in
tests/e2e/test_metrics.py.
"""

from __future__ import annotations

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from node.metrics import GitProcessMetrics


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
