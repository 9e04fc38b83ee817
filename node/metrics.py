"""The node's numbers for Prometheus (`/metrics`, `[admin]`): the git processes it
runs, and how far its replicas lag (`ReplicaMetrics`); and its log line per git
operation (`GitOpLog`).

One process per smart-HTTP request (info/refs or an RPC) or per SSH session an
edge carries; Gitaly's `gitaly_command_*` and the gitlab-shell sshd metrics are
the anchors. A result is "ok" (exit 0), "failed" (non-zero exit, or killed
before it exited) or "aborted" (the exchange broke off: client gone, timeout).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from plumbing.observe import log_git_operation

oplog = logging.getLogger("node.gitops")

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
            if (op := _current_op.get()) is not None:
                op.git_ran, op.git_exit = True, process.returncode
            running.dec()
            self.processes.labels(service, kind, result).inc()
            self.duration.labels(service, kind).observe(time.monotonic() - started)


@dataclass
class NodeGitOp:
    """One git request an edge (or a peer node) made, as it ends: what `GitOpLog` logs."""

    service: str
    repo: str
    kind: str
    """As in the process metrics: info_refs, rpc, ssh, transfer."""
    user: str | None
    """The user the edge vouched for (`gitedge-user`); None for anonymous and peers."""
    protocol: str
    client: str | None
    """The client's address as the edge saw it: the last `X-Forwarded-For` entry."""
    peer: str
    """The edge (or peer node) this request came from."""
    git_ran: bool = False
    git_exit: int | None = None
    """git's exit status; None if it was killed, or none ran."""


_current_op: ContextVar[NodeGitOp | None] = ContextVar("node_git_op", default=None)
"""The operation this request task serves: `GitProcessMetrics.track` records git's
exit in it, wherever the request's handler runs git (smart HTTP or an SSH session)."""


class GitOpLog:
    """One log line per git request the node serves, in text and JSON alike.

    The record is the edge's (plumbing/observe.py `log_git_operation`). `result`:
    "ok" (git exited 0, or the node answered < 400 itself), "failed" (git exited
    non-zero or was killed), "refused" (the node answered without git: 404,
    415, an SSH session to a repository it lacks), "aborted" (the exchange broke
    off: the edge went away, a timeout, git could not start).
    """

    @contextmanager
    def track(self, conn: ExchangeCounters, op: NodeGitOp) -> Iterator[NodeGitOp]:
        started = time.monotonic()
        sent = conn.sent
        token = _current_op.set(op)
        result = "aborted"
        try:
            yield op
            result = _result(op, conn.status)
        finally:
            _current_op.reset(token)
            fields = {
                "user": op.user,
                "repo": op.repo,
                "service": op.service,
                "protocol": op.protocol,
                "kind": op.kind,
                "client": op.client,
                "peer": op.peer,
                "bytes_in": conn.request_received,
                "bytes_out": conn.sent - sent,
                "duration_s": round(time.monotonic() - started, 6),
                "result": result,
                "status": conn.status,
                "exit": "-" if op.git_exit is None else op.git_exit,
            }
            log_git_operation(oplog, fields, in_text_log=True)


class ExchangeCounters(Protocol):
    """What `GitOpLog` reads of a connection (node/http_conn.py's HttpConn)."""

    @property
    def request_received(self) -> int: ...
    @property
    def sent(self) -> int: ...
    @property
    def status(self) -> int: ...


def _result(op: NodeGitOp, status: int) -> str:
    if op.git_ran:
        return "ok" if op.git_exit == 0 else "failed"
    # No git ran: the node answered itself. An SSH session always runs git when it can.
    return "ok" if status < 400 and op.kind != "ssh" else "refused"


class ReplicaMetrics:
    """How far this node's replicas lag: their catch-ups (`Replicator.apply`) as they run.

    Praefect's anchors: `gitaly_praefect_replication_latency` (how long a
    replication job takes) and `gitaly_praefect_replication_delay` (how long it
    waited). Here a repository is *pending* from the start of an apply until one
    succeeds: a catch-up that keeps failing (no in-sync replica to fetch from,
    etcd away) stays pending through its retries, and its age is the replica's
    lag in seconds. Labels are bounded (the volume, the result): a per-repository
    series would grow with the number of repositories.
    """

    def __init__(
        self, registry: CollectorRegistry, volume: str, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.volume = volume
        self._clock = clock
        self._pending: dict[str, float] = {}
        self.applies = Counter(
            "gitedge_node_replica_applies",
            "Applies (catch-ups to the consensus) of this node's replicas that ended, by result.",
            ("volume", "result"),
            registry=registry,
        )
        self.duration = Histogram(
            "gitedge_node_replica_apply_duration_seconds",
            "Wall time of one apply: fold the log, fetch missing objects, update refs, publish.",
            ("volume",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.catch_up = Histogram(
            "gitedge_node_replica_catch_up_seconds",
            "From the first apply of a repository that was pending to the one that succeeded.",
            ("volume",),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        for result in ("ok", "failed"):
            self.applies.labels(volume, result)  # both series from the start: rates need them
        registry.register(_PendingCollector(self))

    @contextmanager
    def applying(self, repo: str, *, not_lag: tuple[type[Exception], ...] = ()) -> Iterator[None]:
        """Around one apply of `repo`: it is pending until one exits normally. An
        exception counts as a failure and leaves it pending (Cancelled leaves it
        pending uncounted), except one of `not_lag`: this copy needs no catch-up."""
        started = self._clock()
        self._pending.setdefault(repo, started)
        try:
            yield
        except not_lag:
            self.forget(repo)
            raise
        except Exception:
            self.applies.labels(self.volume, "failed").inc()
            raise
        finally:
            self.duration.labels(self.volume).observe(self._clock() - started)
        self.applies.labels(self.volume, "ok").inc()
        self.catch_up.labels(self.volume).observe(self._clock() - self._pending.pop(repo, started))

    def forget(self, repo: str) -> None:
        """`repo` needs no catch-up here any more (its copy is gone, or not a replica)."""
        self._pending.pop(repo, None)

    def pending(self) -> tuple[int, float]:
        """How many repositories are pending, and the oldest one's age in seconds (0: none)."""
        if not self._pending:
            return 0, 0.0
        return len(self._pending), max(0.0, self._clock() - min(self._pending.values()))


class _PendingCollector(Collector):
    """The pending gauges, computed at scrape time from the start times."""

    def __init__(self, metrics: ReplicaMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        count, oldest = self._metrics.pending()
        volume = self._metrics.volume
        pending = GaugeMetricFamily(
            "gitedge_node_replica_catch_ups_pending",
            "Repositories whose catch-up began and has not succeeded yet (retries included).",
            labels=("volume",),
        )
        pending.add_metric([volume], count)
        age = GaugeMetricFamily(
            "gitedge_node_replica_oldest_catch_up_seconds",
            "Age of the oldest pending catch-up: this replica's lag in time (0: none pending).",
            labels=("volume",),
        )
        age.add_metric([volume], oldest)
        return [pending, age]
