"""The sans-IO half of the web path: which paths are the frontend's, the head sent
upstream (hop-by-hop and client x-gitedge-* dropped), hints, and error pages."""

from __future__ import annotations

import h11
import pytest

from edge.proto.http_head import parse_request_head
from edge.proto.web_head import (
    ReplicaHint,
    RepoHint,
    error_page,
    is_edge_path,
    is_upgrade,
    prefers_json,
    repo_of_path,
    upstream_head,
)
from routing.model import RepoName


@pytest.mark.parametrize(
    ("path", "edge"),
    [
        ("/api", True),
        ("/api/repos", True),
        ("/_gitedge", True),
        ("/_gitedge/stats", True),
        ("/apix", False),
        ("/_gitedgex/a", False),
        ("/", False),
        ("/alice/hello", False),
    ],
)
def test_edge_paths(path: str, edge: bool) -> None:
    assert is_edge_path(path) is edge


@pytest.mark.parametrize(
    ("path", "repo"),
    [
        ("/alice/hello", RepoName("alice", "hello")),
        ("/alice/hello/", RepoName("alice", "hello")),
        ("/alice/hello/issues/1", RepoName("alice", "hello")),
        ("/alice", None),
        ("/", None),
        ("//hello", None),
        ("/alice/..", None),
        ("/-x/hello", None),
    ],
)
def test_repo_of_path(path: str, repo: RepoName | None) -> None:
    assert repo_of_path(path) == repo


def _head(raw: bytes) -> bytes:
    head = parse_request_head(raw)
    return upstream_head(
        head,
        peer_ip="192.0.2.9",
        scheme="https",
        trusted_proxy=False,
        added=[(b"x-gitedge-user", b"alice")],
    )


def test_upstream_head_drops_hop_by_hop_and_client_hints() -> None:
    raw = (
        b"POST /graphql?q=1 HTTP/1.1\r\nhost: example.org\r\nconnection: keep-alive, x-secret\r\n"
        b"x-secret: 1\r\nupgrade: websocket\r\nexpect: 100-continue\r\nte: trailers\r\n"
        b"x-gitedge-user: root\r\nX-Gitedge-Node: evil\r\nx-forwarded-for: 6.6.6.6\r\n"
        b"cookie: a=b\r\ncontent-length: 3\r\n\r\n"
    )
    out = _head(raw)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(out)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    assert request.target == b"/graphql?q=1"
    headers = [(k, v) for k, v in request.headers]
    assert (b"host", b"example.org") in headers
    assert (b"cookie", b"a=b") in headers
    assert (b"content-length", b"3") in headers
    assert (b"x-gitedge-user", b"alice") in headers
    # Not from a trusted proxy: the client's X-Forwarded-For is not believed.
    assert (b"x-forwarded-for", b"192.0.2.9") in headers
    names = [k for k, _ in headers]
    for gone in (b"connection", b"x-secret", b"upgrade", b"expect", b"te", b"x-gitedge-node"):
        assert gone not in names
    assert names.count(b"x-gitedge-user") == 1


def test_hint_headers() -> None:
    hint = RepoHint(
        "alice/hello",
        "fra",
        "v-1",
        "fra-1",
        (ReplicaHint("v-1", "fra-1", "fra"), ReplicaHint("v-2", "lax-1", "lax")),
    )
    assert dict(hint.headers()) == {
        b"x-gitedge-repo": b"alice/hello",
        b"x-gitedge-region": b"fra",
        b"x-gitedge-volume": b"v-1",
        b"x-gitedge-node": b"fra-1",
        b"x-gitedge-replicas": (
            b"volume=v-1;node=fra-1;region=fra, volume=v-2;node=lax-1;region=lax"
        ),
    }
    assert b"x-gitedge-node" not in dict(RepoHint("a/b", "fra", "v-1", None).headers())


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        (None, False),
        (b"*/*", False),
        (b"application/json", True),
        (b"application/graphql-response+json, application/json", True),
        (b"text/html,application/xhtml+xml,application/json;q=0.9", False),
    ],
)
def test_error_page_form(accept: bytes | None, json: bool) -> None:
    assert prefers_json(accept) is json
    content_type, body = error_page(503, "down <now>", accept)
    assert content_type.startswith(b"application/json" if json else b"text/html")
    if not json:
        assert b"down &lt;now&gt;" in body


def test_an_upgrade_request_keeps_connection_upgrade_and_upgrade() -> None:
    raw = (
        b"GET /live/websocket HTTP/1.1\r\nhost: example.org\r\nconnection: keep-alive, Upgrade\r\n"
        b"upgrade: websocket\r\nsec-websocket-key: k\r\nsec-websocket-version: 13\r\n\r\n"
    )
    assert is_upgrade(parse_request_head(raw))
    lines = _head(raw).split(b"\r\n")
    assert b"connection: upgrade" in lines
    assert b"upgrade: websocket" in lines
    assert b"sec-websocket-key: k" in lines
    assert not any(line.startswith(b"connection: keep-alive") for line in lines)
    # Upgrade without Connection naming it (or the reverse) is no upgrade: both dropped.
    for fields in (b"upgrade: websocket\r\n", b"connection: upgrade\r\n"):
        plain = b"GET / HTTP/1.1\r\nhost: example.org\r\n" + fields + b"\r\n"
        assert not is_upgrade(parse_request_head(plain))
        assert not any(
            line.startswith((b"upgrade", b"connection")) for line in _head(plain).split(b"\r\n")
        )
