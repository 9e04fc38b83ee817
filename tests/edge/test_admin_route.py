"""The operator's routes and the CLI's tables (pure)."""

from __future__ import annotations

import pytest

from edge.cli_tables import format_table, human_bytes
from edge.proto.admin_route import DrainNode, Inventory
from edge.proto.http_route import parse_route
from gitproto.routes import RouteError


def test_operator_routes() -> None:
    assert parse_route(b"GET", b"/api/admin/nodes") == Inventory("nodes")
    assert parse_route(b"GET", b"/api/admin/volumes") == Inventory("volumes")
    assert parse_route(b"GET", b"/api/admin/repos?region=fra&node=fra-1") == Inventory(
        "repos", "fra", "fra-1"
    )
    assert parse_route(b"POST", b"/api/admin/nodes/lax-1/drain") == DrainNode("lax-1", True)
    assert parse_route(b"DELETE", b"/api/admin/nodes/lax-1/drain") == DrainNode("lax-1", False)
    timed = parse_route(b"POST", b"/api/admin/nodes/lax-1/drain?catch_up_timeout=2.5")
    assert timed == DrainNode("lax-1", True, 2.5)


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [
        (b"POST", b"/api/admin/nodes", 405),
        (b"GET", b"/api/admin/nodes/lax-1/drain", 405),
        (b"POST", b"/api/admin/nodes/..x/drain", 400),
        (b"POST", b"/api/admin/nodes/-rf/drain", 400),
        (b"GET", b"/api/admin/repos?region=FRA", 400),
        (b"GET", b"/api/admin/repos?owner=alice", 400),
        (b"POST", b"/api/admin/nodes/lax-1/drain?catch_up_timeout=0", 400),
        (b"POST", b"/api/admin/nodes/lax-1/drain?catch_up_timeout=nan", 400),
        (b"POST", b"/api/admin/nodes/lax-1/drain?catch_up_timeout=7200", 400),
        (b"POST", b"/api/admin/nodes/lax-1/drain?wait=1", 400),
    ],
)
def test_bad_operator_requests(method: bytes, target: bytes, status: int) -> None:
    with pytest.raises(RouteError) as raised:
        parse_route(method, target)
    assert raised.value.http_status == status


def test_tables_show_state_and_human_sizes() -> None:
    answer = {
        "nodes": [
            {"node": "lax-1", "region": "lax", "live": True, "drained": True, "repos": 3,
             "free_bytes": 3 * 1024**3, "volumes": ["v-1"]},
            {"node": "fra-2", "region": "fra", "live": False, "drained": False, "repos": 0,
             "free_bytes": None, "volumes": []},
        ]
    }  # fmt: skip
    lines = format_table("nodes", answer)
    assert "live,drained" in lines[1] and "3.0 GiB" in lines[1]
    assert "DOWN" in lines[2] and lines[2].split()[4] == "-"
    assert human_bytes(512) == "512 B"
