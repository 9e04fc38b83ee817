"""The operator's routes (admin token): inventory and node drain. Sans-IO.

GET    /api/admin/nodes                     -> Inventory("nodes")
GET    /api/admin/volumes                   -> Inventory("volumes")
GET    /api/admin/repos[?region=R&node=N]   -> Inventory("repos", R, N)
POST   /api/admin/nodes/<node-id>/drain[?catch_up_timeout=S]
                                            -> DrainNode(node-id, drain=True, S)
DELETE /api/admin/nodes/<node-id>/drain     -> DrainNode(node-id, drain=False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from gitproto.routes import RouteError, require
from routing.model import InvalidRegion, parse_region

InventoryKind = Literal["nodes", "volumes", "repos"]
_KINDS: tuple[InventoryKind, ...] = ("nodes", "volumes", "repos")
# Node ids as nodes register them (node/config.py): one safe path component.
_NODE_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True)
class Inventory:
    kind: InventoryKind
    region: str | None = None
    node: str | None = None


@dataclass(frozen=True)
class DrainNode:
    node_id: str
    drain: bool
    catch_up_timeout: float | None = None
    """Seconds each new copy may take to catch up (None: routing's default)."""


MAX_CATCH_UP_TIMEOUT = 3600.0


def admin_route(method: bytes, path: str, query: str) -> Inventory | DrainNode | None:
    """An operator route, or None: not one of these paths."""
    if not path.startswith("/api/admin/"):
        return None
    parts = path.removeprefix("/api/admin/").split("/")
    if len(parts) == 1 and parts[0] in _KINDS:
        require(method, b"GET")
        kind = next(k for k in _KINDS if k == parts[0])
        if kind != "repos":
            return Inventory(kind)
        return _repo_filters(query)
    if len(parts) == 3 and parts[0] == "nodes" and parts[2] == "drain":
        require(method, b"POST", b"DELETE")
        return DrainNode(_node_id(parts[1]), method == b"POST", _catch_up_timeout(query))
    return None


def _node_id(raw: str) -> str:
    if not _NODE_ID.fullmatch(raw) or ".." in raw:
        raise RouteError(400, "bad node id")
    return raw


def _catch_up_timeout(query: str) -> float | None:
    timeout = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "catch_up_timeout":
            raise RouteError(400, f"unknown parameter {name!r}: catch_up_timeout")
        try:
            timeout = float(value)
        except ValueError:
            timeout = -1.0
        if not 0 < timeout <= MAX_CATCH_UP_TIMEOUT:
            raise RouteError(
                400, f"catch_up_timeout must be seconds in (0, {MAX_CATCH_UP_TIMEOUT:.0f}]"
            )
    return timeout


def _repo_filters(query: str) -> Inventory:
    region: str | None = None
    node: str | None = None
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "region":
            try:
                region = parse_region(value)
            except InvalidRegion as exc:
                raise RouteError(400, str(exc)) from None
        elif name == "node":
            node = _node_id(value)
        else:
            raise RouteError(400, f"unknown filter {name!r}: region, node")
    return Inventory("repos", region, node)
