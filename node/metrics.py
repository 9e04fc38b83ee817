"""The node's numbers for Prometheus: the git processes it runs (`/metrics`, `[admin]`).

One process per smart-HTTP request (info/refs or an RPC) or per SSH session an
edge carries; Gitaly's `gitaly_command_*` and the gitlab-shell sshd metrics are
the anchors. A result is "ok" (exit 0), "failed" (non-zero exit, or killed
before it exited) or "aborted" (the exchange broke off: client gone, timeout).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


@dataclass
class GitProcess:
    """Filled in by the caller: git's exit status, None while unknown (killed)."""

    returncode: int | None = None


class GitProcessMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=False)
        self.processes = Counter(
            "gitedge_node_git_processes",
            "git processes that ended, by service, kind (info_refs, rpc, ssh, transfer), result.",
            ("service", "kind", "result"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "gitedge_node_git_process_duration_seconds",
            "Wall time of git processes, spawn to reap.",
            ("service", "kind"),
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.running = Gauge(
            "gitedge_node_git_processes_running",
            "git processes running now.",
            ("service",),
            registry=self.registry,
        )

    @contextmanager
    def track(self, service: str, kind: str) -> Iterator[GitProcess]:
        process = GitProcess()
        started = time.monotonic()
        running = self.running.labels(service)
        running.inc()
        result = "aborted"
        try:
            yield process
            result = "ok" if process.returncode == 0 else "failed"
        finally:
            running.dec()
            self.processes.labels(service, kind, result).inc()
            self.duration.labels(service, kind).observe(time.monotonic() - started)
