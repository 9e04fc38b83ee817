"""Replay (docs/web.md): a frontend's `Gitedge-Replay` answer makes the edge re-send
the request to another region's upstream. Two real upstreams (tests/e2e/web_upstream.py),
one per region, behind a real edge in fra."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from devnet.network import Devnet, EdgeHandle, start_devnet
from tests.e2e.conftest import tls
from tests.e2e.web_upstream import WebUpstream

MAX_BODY = 4096


@pytest.fixture(scope="module")
def replay_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Devnet, EdgeHandle]]:
    with (
        WebUpstream("fra") as fra,
        WebUpstream("lax") as lax,
        start_devnet(tmp_path_factory.mktemp("replay"), ("fra",), lease_ttl=3) as net,
    ):
        edge = net.start_edge(
            "fra",
            ssh=False,
            web_upstream=fra.url,
            web_options=f"replay_max_body = {MAX_BODY}\n[web.upstreams]\nlax = {lax.url!r}",
        )
        yield net, edge


def _send(
    replay_net: tuple[Devnet, EdgeHandle], method: str, path: str, **kwargs: Any
) -> httpx.Response:
    net, edge = replay_net
    return httpx.request(method, f"{edge.https_url}{path}", verify=tls(net), timeout=30, **kwargs)


def test_a_get_is_replayed_to_the_region_asked_for(replay_net: tuple[Devnet, EdgeHandle]) -> None:
    plain = _send(replay_net, "GET", "/explore")
    assert plain.json()["upstream"] == "fra"
    response = _send(replay_net, "GET", "/explore?x=1", headers={"x-replay-from-fra": "region=lax"})
    assert response.status_code == 200, response.text
    echo = response.json()
    assert (echo["upstream"], echo["method"], echo["target"]) == ("lax", "GET", "/explore?x=1")
    assert "gitedge-replay" not in response.headers
    # `node=<id>`: the upstream of that node's region (fra-1 is in fra).
    by_node = _send(replay_net, "GET", "/n", headers={"x-replay-from-fra": "node=fra-1"})
    assert by_node.status_code == 200, by_node.text


def test_a_post_is_replayed_with_its_body(replay_net: tuple[Devnet, EdgeHandle]) -> None:
    body = bytes(range(256)) * 8  # 2 KiB, under the limit
    response = _send(
        replay_net, "POST", "/graphql", content=body, headers={"x-replay-from-fra": "region=lax"}
    )
    echo = response.json()
    assert echo["upstream"] == "lax"
    assert (echo["received"], echo["sha256"]) == (len(body), hashlib.sha256(body).hexdigest())
    # Chunked too: the framing goes up as the client sent it.
    chunked = _send(
        replay_net,
        "POST",
        "/graphql",
        content=iter([body[:1000], body[1000:]]),
        headers={"x-replay-from-fra": "region=lax"},
    )
    assert chunked.json()["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_body_over_the_limit_cannot_be_replayed(replay_net: tuple[Devnet, EdgeHandle]) -> None:
    body = b"z" * (4 * MAX_BODY)
    asked = _send(
        replay_net, "POST", "/upload", content=body, headers={"x-replay-from-fra": "region=lax"}
    )
    assert asked.status_code == 413
    # Without a replay, a large body streams to the region's own upstream as before.
    plain = _send(replay_net, "POST", "/upload", content=body)
    assert (plain.json()["upstream"], plain.json()["received"]) == ("fra", len(body))


def test_a_second_replay_is_not_followed(replay_net: tuple[Devnet, EdgeHandle]) -> None:
    headers = {"x-replay-from-fra": "region=lax", "x-replay-from-lax": "region=fra"}
    response = _send(replay_net, "GET", "/loop", headers=headers)
    assert response.status_code == 200
    assert response.json()["upstream"] == "lax"
    assert "gitedge-replay" not in response.headers


def test_an_unknown_region_is_502(replay_net: tuple[Devnet, EdgeHandle]) -> None:
    for value in ("region=nowhere", "node=no-such-node", "garbage"):
        response = _send(replay_net, "GET", "/x", headers={"x-replay-from-fra": value})
        assert response.status_code == 502, value
        assert "unknown region" in response.text
        assert "gitedge-replay" not in response.headers
