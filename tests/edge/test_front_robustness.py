"""A bug while serving one request costs that connection a 500, never the edge."""

from __future__ import annotations

from typing import cast

import pytest
import trio
import trio.testing

from edge.api.node_admin import NodeAdmin
from edge.config import EdgeConfig, Listener
from edge.http.front import serve_connection
from edge.http.pool import NodePool
from edge.state import EdgeState
from routing.cache import RoutingCache
from routing.etcd import EtcdClient
from routing.model import Region, RepoName, RepoRecord
from routing.schema import Keys


class _BrokenCache(RoutingCache):
    """A cache whose lookups hit a bug (stands in for any unexpected exception)."""

    async def record(self, name: RepoName) -> RepoRecord:
        raise RuntimeError("boom")


def _state() -> EdgeState:
    config = EdgeConfig(
        region=Region("fra"),
        etcd_endpoints=("http://127.0.0.1:1",),
        http=(Listener("127.0.0.1", 0),),
    )
    etcd = cast(EtcdClient, None)
    return EdgeState(
        config,
        etcd,
        _BrokenCache(Keys(), etcd),
        NodePool(1.0, 1.0, 1),
        cast(NodeAdmin, None),
    )


async def _exchange(request: bytes) -> bytes:
    client, server = trio.testing.memory_stream_pair()
    state = _state()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, state, server, "127.0.0.1", "http")
        await client.send_all(request)
        answer = b""
        with trio.fail_after(5):
            while chunk := await client.receive_some(65536):
                answer += chunk
    return answer


async def test_unexpected_error_is_a_500_and_the_connection_closes() -> None:
    answer = await _exchange(b"GET /api/repos/alice/x HTTP/1.1\r\nhost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 500 ")
    assert b"internal error" in answer
    assert b"boom" not in answer  # the detail goes to the log only


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /alice/x.git/HEAD HTTP/1.1\r\nhost: x\r\n\r\n",
    ],
)
async def test_other_requests_unaffected(request_bytes: bytes) -> None:
    answer = await _exchange(request_bytes + b"GET /api/repos/a/b HTTP/1.1\r\nhost: x\r\n\r\n")
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.split(b" ")[1] in (b"200", b"404")
    assert b"HTTP/1.1 500 " in rest
