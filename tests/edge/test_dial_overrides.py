"""[nodes.dial]: the edge dials a node at a configured address instead of the advertised one."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import trio

from edge.config import ConfigError, NodeDial, load_edge_config
from edge.errors import NodeUnavailable
from edge.http.pool import NodePool

BASE = (
    '[edge]\nregion = "fra"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
    '[http]\nlisten = "127.0.0.1:0"\n[nodes]\nadmin_secret = "s"\n'
)


def _load(tmp_path: Path, extra: str) -> dict[str, NodeDial]:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + extra)
    return load_edge_config(path).dial_overrides()


def _error(tmp_path: Path, extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, extra)
    return str(info.value)


def test_no_table_means_no_overrides(tmp_path: Path) -> None:
    assert _load(tmp_path, "") == {}


def test_http_overrides_per_node(tmp_path: Path) -> None:
    dial = _load(
        tmp_path,
        '[nodes.dial]\n"syd-1" = { http = "127.0.0.1:7001" }\n"lax-1" = { http = "[::1]:80" }\n',
    )
    assert dial == {
        "syd-1": NodeDial(http=("127.0.0.1", 7001)),
        "lax-1": NodeDial(http=("::1", 80)),
    }


def test_an_ssh_override_is_refused_now_that_nodes_have_no_ssh(tmp_path: Path) -> None:
    message = _error(
        tmp_path, '[nodes.dial]\n"syd-1" = { http = "127.0.0.1:7001", ssh = "127.0.0.1:7002" }\n'
    )
    assert "[syd-1]: ssh: removed: SSH sessions reach nodes over http" in message, message


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ('"syd-1" = { http = "nohost" }', "http"),
        ('"syd-1" = { http = "127.0.0.1:0" }', "http"),
        ('"syd-1" = { htp = "127.0.0.1:1" }', "htp"),
        ('"syd-1" = {}', "syd-1"),
        ('"syd-1" = "127.0.0.1:1"', "syd-1"),
        ('"-x" = { http = "127.0.0.1:1" }', "-x"),
    ],
)
def test_bad_entries_name_the_key(tmp_path: Path, entry: str, named: str) -> None:
    message = _error(tmp_path, f"[nodes.dial]\n{entry}\n")
    assert "edge.toml" in message and "[dial]" in message and named in message, message


async def test_pool_dials_the_override_not_the_advertised_url() -> None:
    async def answer(stream: trio.SocketStream) -> None:
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        pool = NodePool(3.0, 30.0, 4, dial={"syd-1": ("127.0.0.1", port)})
        # The advertised URL points nowhere; only the override can connect.
        conn = await pool.acquire("http://127.0.0.1:1", node_id="syd-1")
        assert conn.address == ("127.0.0.1", port)
        await conn.stream.aclose()
        with pytest.raises(NodeUnavailable):
            await pool.acquire("http://127.0.0.1:1", node_id="lax-1")
        nursery.cancel_scope.cancel()
