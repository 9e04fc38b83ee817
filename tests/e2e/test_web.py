"""The web frontend behind the edge: a real upstream (tests/e2e/web_upstream.py)
behind a real edge, reached over HTTPS (docs/web.md)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import httpx

from devnet.network import Devnet, EdgeHandle
from tests.e2e.conftest import create_repo, tls
from tests.e2e.web_upstream import unused_port

# CI keeps the download smaller; the bound on the edge's memory is the same.
DOWNLOAD = (32 if os.environ.get("CI") == "true" else 100) * 2**20
RSS_GROWTH_LIMIT = 32 * 2**20


def _get(net: Devnet, edge: EdgeHandle, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(f"{edge.https_url}{path}", verify=tls(net), timeout=30, **kwargs)


def _echoed(response: httpx.Response) -> dict[str, Any]:
    """What the upstream saw: its JSON echo, with the headers as a dict (last wins)."""
    assert response.status_code == 200, response.text
    echo: dict[str, Any] = response.json()
    echo["headers"] = {name.lower(): value for name, value in echo["headers"]}
    return echo


def test_non_git_requests_reach_the_frontend_with_the_client_target(web_net: Devnet) -> None:
    echo = _echoed(_get(web_net, web_net.edge, "/explore?page=2", headers={"Accept": "text/html"}))
    assert echo["method"] == "GET"
    assert echo["target"] == "/explore?page=2"
    headers = echo["headers"]
    assert headers["x-forwarded-proto"] == "https"
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["host"] == web_net.edge.https_url.removeprefix("https://")
    # Nothing named a repository: no hints.
    assert not any(name.startswith("x-gitedge-") for name in headers)


def test_request_bodies_stream_up(web_net: Devnet) -> None:
    body = b"y" * (3 * 2**20)
    response = httpx.post(
        f"{web_net.edge.https_url}/graphql", content=body, verify=tls(web_net), timeout=30
    )
    assert _echoed(response)["received"] == len(body)


def test_the_edge_api_and_its_own_paths_are_never_shadowed(web_net: Devnet) -> None:
    edge = web_net.edge
    assert _get(web_net, edge, "/healthz").text == "ok\n"
    assert "cache_revision" in _get(web_net, edge, "/readyz").json()
    # The edge's 404s, not the frontend's echo (which would be a 200).
    for path in ("/api", "/api/unknown", "/_gitedge/anything", "/_gitedge"):
        response = _get(web_net, edge, path)
        assert response.status_code == 404, path
        assert response.text == "not found\n", path


def test_repository_paths_carry_hints_and_client_hints_are_stripped(web_net: Devnet) -> None:
    assert create_repo(web_net, "alice/webhints").status_code == 201
    node = web_net.nodes["fra-1"]
    forged = {
        "X-Gitedge-Node": "evil",
        "X-Gitedge-User": "root",
        "X-Gitedge-Secret": "guess",
        "X-Gitedge-Replicas": "volume=v;node=evil;region=x",
    }
    headers = _echoed(_get(web_net, web_net.edge, "/alice/webhints/issues/1", headers=forged))[
        "headers"
    ]
    assert headers["x-gitedge-repo"] == "alice/webhints"
    assert headers["x-gitedge-region"] == "fra"
    assert headers["x-gitedge-node"] == "fra-1"
    assert headers["x-gitedge-volume"] == node.volume_id
    for name in ("x-gitedge-user", "x-gitedge-secret", "x-gitedge-replicas"):
        assert name not in headers, name
    # A repository the edge does not know: no hints, and the forged ones still gone.
    other = _echoed(_get(web_net, web_net.edge, "/alice/nosuchrepo", headers=forged))["headers"]
    assert not any(name.startswith("x-gitedge-") for name in other)


def test_edge_credentials_name_the_user_and_others_do_not(web_net: Devnet) -> None:
    token = web_net.user_token("alice")
    signed_in = _echoed(_get(web_net, web_net.edge, "/settings", auth=("alice", token)))
    assert signed_in["headers"]["x-gitedge-user"] == "alice"
    # The frontend's own credentials pass through; they name no edge user.
    wrong = _echoed(_get(web_net, web_net.edge, "/settings", auth=("alice", "ge_wrong")))
    assert "x-gitedge-user" not in wrong["headers"]
    assert wrong["headers"]["authorization"].startswith("Basic ")


def _memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def test_a_large_download_streams_with_the_edge_memory_bounded(web_net: Devnet) -> None:
    pid = web_net.edge.process.popen.pid
    before = _memory_kib(pid)
    peak_rss = before["VmRSS"]
    received = 0
    with httpx.stream(
        "GET",
        f"{web_net.edge.https_url}/big?bytes={DOWNLOAD}",
        verify=tls(web_net),
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-length"] == str(DOWNLOAD)
        for n, chunk in enumerate(response.iter_raw()):
            received += len(chunk)
            if n % 64 == 0:
                peak_rss = max(peak_rss, _memory_kib(pid)["VmRSS"])
    after = _memory_kib(pid)
    assert received == DOWNLOAD
    growth = max(peak_rss, after["VmHWM"]) - max(before["VmRSS"], before["VmHWM"])
    assert growth * 1024 < RSS_GROWTH_LIMIT, (before, after, peak_rss)


def test_upstream_refusing_connections_is_503_in_the_form_asked_for(web_net: Devnet) -> None:
    edge = web_net.start_edge("fra", ssh=False, web_upstream=f"http://127.0.0.1:{unused_port()}")
    try:
        page = _get(web_net, edge, "/", headers={"Accept": "text/html,*/*;q=0.8"})
        assert page.status_code == 503
        assert page.headers["content-type"].startswith("text/html")
        assert "<h1>503</h1>" in page.text
        assert page.headers["retry-after"] == "5"
        api = _get(web_net, edge, "/graphql", headers={"Accept": "application/json"})
        assert api.status_code == 503
        assert api.json() == {
            "error": "the web frontend is unavailable, try again later",
            "status": 503,
        }
        # The edge itself still answers.
        assert _get(web_net, edge, "/healthz").status_code == 200
    finally:
        edge.process.stop()


def test_upstream_that_never_answers_is_502_after_the_response_timeout(web_net: Devnet) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete in the backlog; nothing is ever read
        port = silent.getsockname()[1]
        edge = web_net.start_edge(
            "fra",
            ssh=False,
            web_upstream=f"http://127.0.0.1:{port}",
            web_options="response_timeout = 1.0",
        )
        try:
            response = _get(web_net, edge, "/slow", headers={"Accept": "application/json"})
            assert response.status_code == 502
            assert response.json()["error"] == "bad response from the web frontend"
        finally:
            edge.process.stop()
