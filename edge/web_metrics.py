"""The web frontend's numbers (edge/http/web.py), in the edge's registry (edge/metrics.py).

Requests are counted as they end, by the region and upstream that served them
and the class of the status the client got; bytes each way as the git
counters count them; and the edge's own answers for the upstream (502/503),
replays, tunnels and total timeouts. `/_gitedge/stats` sums the same counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

from edge.errors import EdgeError
from edge.proto.body import BodyError


@dataclass
class WebRequest:
    """One request relayed to the web frontend (edge/http/web.py), as it ends."""

    region: str
    """The region whose upstream it went to (a replay's target, once replayed)."""
    upstream: str
    status: int = 0
    """The status the client got; 0: none (the connection ended first)."""
    bytes_in: int = 0
    """From the client: the request body, and what it sent into a tunnel."""
    bytes_out: int = 0
    """To the client: the response, head included, and what a tunnel carried."""
    upstream_failed: bool = False
    """The edge answered (502/503) because the upstream failed."""
    replay: str | None = None
    """What became of a `Gitedge-Replay` answer: "replayed", "too_large", "unknown_place"."""
    tunnelled: bool = False
    """The upstream answered 101: the connections became a tunnel."""
    total_timeout: bool = False
    """The edge ended it at `[web] total_timeout` or `upgrade_total_timeout`."""


def status_class(status: int) -> str:
    """ "2xx" for 200 and so on; "aborted" when the client got no status line."""
    return f"{status // 100}xx" if status else "aborted"


class WebOps:
    """Counts requests for the web frontend and its tunnels; `track()` around one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        where = ("region", "upstream")
        self.requests = Counter(
            "gitedge_web_requests",
            "Requests for the web frontend that ended, by upstream and status class.",
            (*where, "status_class"),
            registry=registry,
        )
        self.bytes_received = Counter(
            "gitedge_web_received_bytes",
            "Bytes of web requests from clients (bodies, tunnelled bytes).",
            where,
            registry=registry,
        )
        self.bytes_sent = Counter(
            "gitedge_web_sent_bytes",
            "Bytes of web responses to clients (heads, bodies, tunnelled bytes).",
            where,
            registry=registry,
        )
        self.upstream_failures = Counter(
            "gitedge_web_upstream_failures",
            "Web requests the edge answered itself because the upstream failed (502, 503).",
            (*where, "status"),
            registry=registry,
        )
        self.replays = Counter(
            "gitedge_web_replays",
            "Gitedge-Replay answers: replayed, too_large (413), unknown_place (502).",
            ("result",),
            registry=registry,
        )
        self.tunnels = Counter(
            "gitedge_web_tunnels", "Upgraded connections (101) tunnelled.", where, registry=registry
        )
        self.tunnels_open = Gauge(
            "gitedge_web_tunnels_open", "Upgraded connections tunnelled now.", registry=registry
        )
        self.total_timeouts = Counter(
            "gitedge_web_total_timeouts",
            "Web responses and tunnels ended at [web] total_timeout / upgrade_total_timeout.",
            ("kind",),
            registry=registry,
        )

    @contextmanager
    def track(self, request: WebRequest) -> Iterator[WebRequest]:
        """Records `request` as it ends; the caller fills it in. An error leaving the
        block that the front answers (a broken request body) gives its status."""
        try:
            yield request
        except (EdgeError, BodyError) as exc:
            request.status = exc.http_status
            raise
        finally:
            if request.tunnelled:
                self.tunnels_open.dec()
            self.record(request)

    def tunnel_opened(self, request: WebRequest) -> None:
        """`request` became a tunnel: counted open until `track()` ends."""
        request.tunnelled = True
        self.tunnels.labels(request.region, request.upstream).inc()
        self.tunnels_open.inc()

    def record(self, request: WebRequest) -> None:
        where = (request.region, request.upstream)
        self.requests.labels(*where, status_class(request.status)).inc()
        self.bytes_received.labels(*where).inc(request.bytes_in)
        self.bytes_sent.labels(*where).inc(request.bytes_out)
        if request.upstream_failed:
            self.upstream_failures.labels(*where, str(request.status)).inc()
        if request.replay is not None:
            self.replays.labels(request.replay).inc()
        if request.total_timeout:
            self.total_timeouts.labels("tunnel" if request.tunnelled else "response").inc()

    def totals(self) -> dict[str, float]:
        """For /_gitedge/stats: each counter above summed over its labels."""
        counters = {
            "web_requests": self.requests,
            "web_received_bytes": self.bytes_received,
            "web_sent_bytes": self.bytes_sent,
            "web_upstream_failures": self.upstream_failures,
            "web_replays": self.replays,
            "web_tunnels": self.tunnels,
            "web_total_timeouts": self.total_timeouts,
        }
        totals = {key: _sum(counter) for key, counter in counters.items()}
        totals["web_tunnels_open"] = _sum(self.tunnels_open)
        return totals


def _sum(metric: Counter | Gauge) -> float:
    return sum(
        sample.value
        for family in metric.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    )
