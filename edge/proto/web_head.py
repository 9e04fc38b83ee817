"""Requests for the web frontend: which paths are its, the head sent upstream,
the repository hints, and the edge's own error pages. Sans-IO (docs/web.md).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass

from edge.proto.http_head import RequestHead
from routing.model import InvalidRepoName, RepoName

Header = tuple[bytes, bytes]

EDGE_PREFIXES = ("/api", "/_gitedge")
"""Paths the edge answers itself, whatever the frontend serves: never proxied."""

HINT_PREFIX = b"x-gitedge-"
"""Every request header with this prefix is the edge's to set: a client's is dropped."""

# Hop-by-hop fields (RFC 9110 7.6.1), plus `expect`: the edge answers
# `100-continue` itself before it reads the body (edge/http/proxy.py).
_DROPPED = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"forwarded",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }
)

# RFC 9110 9.2.2: a request with one of these methods may be sent again.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


def is_edge_path(path: str) -> bool:
    """`/api`, `/api/...`, `/_gitedge`, `/_gitedge/...`: the edge's, even where unrouted."""
    return any(path == prefix or path.startswith(prefix + "/") for prefix in EDGE_PREFIXES)


def is_upgrade(head: RequestHead) -> bool:
    """The request asks to switch protocols (RFC 9110 7.8): an `Upgrade` field that
    its `Connection` names. Such a request is relayed with both (edge/http/tunnel.py)."""
    tokens = {
        token.strip().lower()
        for name, value in head.headers
        if name == b"connection"
        for token in value.split(b",")
    }
    return b"upgrade" in tokens and head.header(b"upgrade") is not None


def repo_of_path(path: str) -> RepoName | None:
    """The repository a web path is under (`/<owner>/<name>` or `/<owner>/<name>/...`),
    if its first two segments are a valid name; None otherwise."""
    parts = path.split("/", 3)
    if len(parts) < 3 or not parts[1] or not parts[2]:
        return None
    try:
        return RepoName.parse(f"{parts[1]}/{parts[2]}")
    except InvalidRepoName:
        return None


@dataclass(frozen=True)
class ReplicaHint:
    volume: str
    node: str
    region: str


@dataclass(frozen=True)
class RepoHint:
    """Where a repository lives, as the routing cache says now."""

    repo: str
    region: str
    volume: str
    node: str | None
    """None: no live node serves the home volume right now."""
    replicas: tuple[ReplicaHint, ...] = ()
    """The in-sync replicas of a replicated repository (empty: unreplicated)."""

    def headers(self) -> list[Header]:
        lines = [
            (b"x-gitedge-repo", self.repo.encode()),
            (b"x-gitedge-region", self.region.encode()),
            (b"x-gitedge-volume", self.volume.encode()),
        ]
        if self.node is not None:
            lines.append((b"x-gitedge-node", self.node.encode()))
        if self.replicas:
            # A list of parameter sets, as RFC 7239's Forwarded writes them.
            value = ", ".join(
                f"volume={r.volume};node={r.node};region={r.region}" for r in self.replicas
            )
            lines.append((b"x-gitedge-replicas", value.encode()))
        return lines


def upstream_head(
    head: RequestHead,
    *,
    peer_ip: str,
    scheme: str,
    trusted_proxy: bool,
    added: Sequence[Header] = (),
) -> bytes:
    """The request head sent to the web upstream.

    The client's headers pass but for hop-by-hop ones, those its `Connection`
    names, and any `x-gitedge-*` (the edge's to set: `added`). The target and
    `Host` are the client's, as frontends build their links from them.
    `X-Forwarded-For` is the peer, after the client's value only from a trusted proxy.
    An upgrade request (`is_upgrade`) keeps its `Connection: upgrade` and `Upgrade`.
    """
    named = {
        token.strip().lower()
        for name, value in head.headers
        if name == b"connection"
        for token in value.split(b",")
    }
    lines = [b"%s %s HTTP/1.1" % (head.method, head.target)]
    forwarded_for = peer_ip.encode()
    for name, value in head.headers:
        if name == b"x-forwarded-for":
            if trusted_proxy:
                forwarded_for = value + b", " + forwarded_for
        elif name not in _DROPPED and name not in named and not name.startswith(HINT_PREFIX):
            lines.append(name + b": " + value)
    lines += [name + b": " + value for name, value in added]
    if is_upgrade(head):
        lines += [b"connection: upgrade", b"upgrade: " + (head.header(b"upgrade") or b"")]
    lines += [
        b"x-forwarded-for: " + forwarded_for,
        b"x-forwarded-proto: " + scheme.encode(),
        b"x-forwarded-host: " + (head.header(b"host") or b""),
        b"",
        b"",
    ]
    return b"\r\n".join(lines)


def prefers_json(accept: bytes | None) -> bool:
    """Whether an error page should be JSON: the client names a JSON type and no
    HTML one before it (browsers ask for text/html first; API clients for JSON)."""
    if not accept:
        return False
    for item in accept.lower().split(b","):
        media = item.split(b";")[0].strip()
        if media in (b"text/html", b"application/xhtml+xml"):
            return False
        if media == b"application/json" or media.endswith(b"+json"):
            return True
    return False


def error_page(status: int, message: str, accept: bytes | None) -> tuple[bytes, bytes]:
    """(content type, body) of the edge's answer when the frontend cannot answer."""
    if prefers_json(accept):
        body = json.dumps({"error": message, "status": status}, sort_keys=True) + "\n"
        return b"application/json", body.encode()
    text = html.escape(message)
    page = (
        f"<!doctype html>\n<html><head><meta charset=utf-8><title>{status}</title></head>"
        f"<body><h1>{status}</h1><p>{text}</p></body></html>\n"
    )
    return b"text/html; charset=utf-8", page.encode()
