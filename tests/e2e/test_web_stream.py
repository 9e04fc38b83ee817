"""Server-sent events and long polls through the edge (docs/web.md, Streaming
responses): a real upstream's event stream (tests/e2e/web_upstream.py `/events`)
reaches the client event by event; `response_timeout` ends a silent stream and
`total_timeout` a busy one, or a long poll not answered in time."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from devnet.network import Devnet, EdgeHandle
from tests.e2e.conftest import tls
from tests.e2e.test_metrics import moved, scrape_url
from tests.e2e.web_upstream import WebUpstream

IDLE, TOTAL = 1.0, 4.0


@pytest.fixture(scope="module")
def timed_edge(web_net: Devnet, upstream: WebUpstream) -> Iterator[EdgeHandle]:
    """An edge with both of a response's timeouts short."""
    edge = web_net.start_edge(
        "fra",
        ssh=False,
        web_upstream=upstream.url,
        web_options=f"response_timeout = {IDLE}\ntotal_timeout = {TOTAL}",
    )
    try:
        yield edge
    finally:
        edge.process.stop()


def _events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line.removeprefix("data: ")


def _stream(net: Devnet, edge: EdgeHandle, path: str) -> AbstractContextManager[httpx.Response]:
    # A read waits 5 s at most: an edge holding the first event back fails the test.
    timeout = httpx.Timeout(10, read=5)
    return httpx.stream("GET", f"{edge.https_url}{path}", verify=tls(net), timeout=timeout)


def test_each_event_reaches_the_client_before_the_next_is_sent(
    web_net: Devnet, upstream: WebUpstream
) -> None:
    upstream.gate.clear()
    with _stream(web_net, web_net.edge, "/events?count=3&gate=1") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        events = _events(response)
        # The upstream holds the second event until the test opens the gate, which
        # it does only once the first is here: nothing may wait for more bytes.
        assert next(events) == "1"
        upstream.gate.set()
        assert list(events) == ["2", "3"]


def test_a_silent_stream_is_ended_after_the_response_timeout(
    web_net: Devnet, timed_edge: EdgeHandle
) -> None:
    started = time.monotonic()
    with _stream(web_net, timed_edge, "/events?count=2&every=30") as response:
        events = _events(response)
        assert next(events) == "1"
        # The edge closes the connection inside the chunked body: the end is missing.
        with pytest.raises(httpx.RemoteProtocolError):
            next(events)
    # Well before TOTAL: this was the idle timeout.
    assert time.monotonic() - started < TOTAL - 0.5


def test_a_busy_stream_is_ended_at_the_total_timeout(
    web_net: Devnet, timed_edge: EdgeHandle
) -> None:
    before = scrape_url(timed_edge.metrics_url)
    started = time.monotonic()
    received: list[str] = []
    # An event every 0.2 s: never IDLE apart, yet cut off TOTAL after the request.
    path = "/events?count=200&every=0.2"
    with pytest.raises(httpx.RemoteProtocolError), _stream(web_net, timed_edge, path) as stream:
        received.extend(_events(stream))
    elapsed = time.monotonic() - started
    assert TOTAL <= elapsed < TOTAL + 10, elapsed
    assert 10 <= len(received) < 200, received
    after = scrape_url(timed_edge.metrics_url)
    assert moved(before, after, "gitedge_web_total_timeouts_total", kind="response") == 1


def test_a_long_poll_not_answered_within_the_total_timeout_is_502(
    web_net: Devnet, upstream: WebUpstream
) -> None:
    edge = web_net.start_edge(
        "fra",
        ssh=False,
        web_upstream=upstream.url,
        web_options="response_timeout = 30.0\ntotal_timeout = 1.0",
    )
    try:
        url = f"{edge.https_url}/poll"
        quick = httpx.get(url, params={"wait": "0.1"}, verify=tls(web_net), timeout=10)
        assert quick.status_code == 200
        assert quick.json()["target"] == "/poll?wait=0.1"
        started = time.monotonic()
        slow = httpx.get(
            url,
            params={"wait": "20"},
            headers={"Accept": "application/json"},
            verify=tls(web_net),
            timeout=10,
        )
        assert time.monotonic() - started < 5
        assert slow.status_code == 502
        assert slow.json()["error"] == "bad response from the web frontend"
    finally:
        edge.process.stop()
