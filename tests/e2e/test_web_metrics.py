"""The web counters on `/metrics` (docs/metrics.md) move by exactly what real
requests through a real edge did, and `/_gitedge/stats` shows the same numbers.

Two real upstreams (fra, lax) and a dead one (sea) behind one edge, and a
websockets echo behind another, for the tunnel counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from devnet.network import Devnet, EdgeHandle, start_devnet
from tests.e2e.conftest import poll, tls
from tests.e2e.test_metrics import Sample, moved, scrape_url
from tests.e2e.web_upstream import WebSocketEcho, WebUpstream, unused_port

MAX_BODY = 4096


@dataclass
class WebNet:
    net: Devnet
    edge: EdgeHandle
    """Upstreams fra (the default), lax, and sea (nobody listens)."""
    fra: str
    lax: str
    sea: str
    ws_edge: EdgeHandle
    """Its upstream is the websockets echo."""
    ws: str


@pytest.fixture(scope="module")
def web_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebNet]:
    sea = f"http://127.0.0.1:{unused_port()}"
    with (
        WebUpstream("fra") as fra,
        WebUpstream("lax") as lax,
        WebSocketEcho() as ws,
        start_devnet(tmp_path_factory.mktemp("webmetrics"), ("fra",), lease_ttl=3) as net,
    ):
        upstreams = f"[web.upstreams]\nlax = {lax.url!r}\nsea = {sea!r}"
        edge = net.start_edge(
            "fra",
            ssh=False,
            web_upstream=fra.url,
            web_options=f"replay_max_body = {MAX_BODY}\n{upstreams}",
        )
        ws_edge = net.start_edge("fra", ssh=False, web_upstream=ws.url)
        yield WebNet(net, edge, fra.url, lax.url, sea, ws_edge, ws.url)


def _wire_size(response: httpx.Response) -> int:
    """The bytes of a response as the edge sent them (no transfer or content coding)."""
    reason: bytes = response.extensions["reason_phrase"]
    status_line = len(b"HTTP/1.1 %d %s\r\n" % (response.status_code, reason))
    fields = sum(len(name) + len(value) + 4 for name, value in response.headers.raw)
    assert "transfer-encoding" not in response.headers
    return status_line + fields + 2 + len(response.content)


def _stats(net: Devnet, edge: EdgeHandle) -> dict[str, float]:
    answer = httpx.get(f"{edge.https_url}/_gitedge/stats", verify=tls(net), timeout=10)
    assert answer.status_code == 200
    return {k: v for k, v in answer.json().items() if k.startswith("web_")}


def _sum(samples: dict[Sample, float], name: str) -> float:
    return sum(value for (n, _), value in samples.items() if n == name)


def test_web_requests_move_the_counters_by_what_was_done(web_net: WebNet) -> None:
    edge = web_net.edge
    before = scrape_url(edge.metrics_url)
    body, big_body = b"q" * 10_000, b"z" * (MAX_BODY + 1)
    replay_from = "x-replay-from-fra"
    with httpx.Client(base_url=edge.https_url, verify=tls(web_net.net), timeout=30) as client:
        answers = [
            client.get("/explore"),
            client.post("/graphql", content=body),
            client.get("/big?bytes=300000"),
            client.get("/explore", headers={replay_from: "region=lax"}),  # replayed
            client.get("/explore", headers={replay_from: "region=nowhere"}),  # 502
            client.get("/explore", headers={replay_from: "region=sea"}),  # replayed, sea down: 503
            client.post("/graphql", content=big_body, headers={replay_from: "region=lax"}),  # 413
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 502, 503, 413]
    after = scrape_url(edge.metrics_url)

    def requests(region: str, upstream: str, status_class: str) -> float:
        return moved(
            before,
            after,
            "gitedge_web_requests_total",
            region=region,
            upstream=upstream,
            status_class=status_class,
        )

    fra, lax, sea = web_net.fra, web_net.lax, web_net.sea
    assert requests("fra", fra, "2xx") == 3
    assert requests("lax", lax, "2xx") == 1
    assert requests("fra", fra, "5xx") == 1  # the unknown place: the frontend's mistake
    assert requests("sea", sea, "5xx") == 1
    assert requests("fra", fra, "4xx") == 1
    assert moved(before, after, "gitedge_web_requests_total") == len(answers)
    # Only the dead upstream is an upstream failure.
    failures = "gitedge_web_upstream_failures_total"
    assert moved(before, after, failures, region="sea", upstream=sea, status="503") == 1
    assert moved(before, after, failures) == 1
    replays = "gitedge_web_replays_total"
    assert moved(before, after, replays, result="replayed") == 2
    assert moved(before, after, replays, result="unknown_place") == 1
    assert moved(before, after, replays, result="too_large") == 1
    # Bodies from the client, counted once though the small one could be replayed.
    received = "gitedge_web_received_bytes_total"
    assert moved(before, after, received, region="fra") == len(body) + len(big_body)
    assert moved(before, after, received) == len(body) + len(big_body)
    sent = "gitedge_web_sent_bytes_total"
    assert moved(before, after, sent) == sum(_wire_size(a) for a in answers)
    assert moved(before, after, sent, region="lax") == _wire_size(answers[3])

    # /_gitedge/stats is a view of the same counters (nothing ran in between).
    stats = _stats(web_net.net, edge)
    after = scrape_url(edge.metrics_url)
    for key, name in [
        ("web_requests", "gitedge_web_requests_total"),
        ("web_upstream_failures", failures),
        ("web_replays", replays),
        ("web_received_bytes", received),
        ("web_sent_bytes", sent),
        ("web_tunnels", "gitedge_web_tunnels_total"),
        ("web_tunnels_open", "gitedge_web_tunnels_open"),
        ("web_total_timeouts", "gitedge_web_total_timeouts_total"),
    ]:
        assert stats[key] == _sum(after, name), key
    # The stats request itself is the edge's own: no web request counted.
    assert stats["web_requests"] == _sum(before, "gitedge_web_requests_total") + len(answers)


def test_a_tunnel_is_counted_open_while_it_lasts(web_net: WebNet) -> None:
    edge = web_net.ws_edge
    before = scrape_url(edge.metrics_url)
    message = "m" * 1000
    url = edge.https_url.replace("https://", "wss://", 1) + "/socket"
    # Uncompressed, so that the frames' sizes are known.
    with connect(url, ssl=tls(web_net.net), compression=None, close_timeout=5) as ws:
        ws.send(message)
        assert ws.recv(timeout=10) == message
        during = scrape_url(edge.metrics_url)
        assert moved(before, during, "gitedge_web_tunnels_open") == 1
        tunnels = "gitedge_web_tunnels_total"
        assert moved(before, during, tunnels, region="fra", upstream=web_net.ws) == 1
        assert moved(before, during, "gitedge_web_requests_total") == 0  # not ended yet
        ws.send("bye")  # the upstream closes: the tunnel ends
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)

    def closed() -> dict[Sample, float] | None:
        now = scrape_url(edge.metrics_url)
        return now if moved(before, now, "gitedge_web_tunnels_open") == 0 else None

    after = poll(10, closed, "the tunnel to be counted closed")
    assert moved(before, after, "gitedge_web_requests_total", status_class="1xx") == 1
    # The message's frame each way (masked from the client), plus a few small frames
    # and the 101's head; nothing else went through.
    received = moved(before, after, "gitedge_web_received_bytes_total")
    assert 1008 <= received < 1100, received
    sent = moved(before, after, "gitedge_web_sent_bytes_total")
    assert 1004 + 100 <= sent < 1700, sent
