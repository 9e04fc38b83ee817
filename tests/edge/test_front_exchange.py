"""The front's requests in turn on one connection, over trio memory streams.

The routes here need no etcd (health, and the admin API up to reading its
body), so the front runs with a real config and an unconnected cache; the
same behaviours are checked against a real edge, node and etcd in
tests/e2e/test_exchange_regressions.py.
"""

from __future__ import annotations

from typing import cast

import h11
import pytest
import trio
import trio.testing

from edge.api.node_admin import NodeAdmin
from edge.config import EdgeConfig, Listener
from edge.http.front import serve_connection
from edge.http.pool import NodePool
from edge.proto.exchange import DRAIN_LIMIT
from edge.state import EdgeState
from routing.cache import RoutingCache
from routing.etcd import EtcdClient
from routing.model import Region
from routing.schema import Keys

HEADER_TIMEOUT = 10.0
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n"
LAST = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n"
ADMIN = b"authorization: Bearer admin-token"


def _state() -> EdgeState:
    config = EdgeConfig(
        region=Region("fra"),
        etcd_endpoints=("http://127.0.0.1:1",),
        http=(Listener("127.0.0.1", 0),),
        admin_token="admin-token",
        header_timeout=HEADER_TIMEOUT,
    )
    etcd = cast(EtcdClient, None)
    return EdgeState(
        config, etcd, RoutingCache(Keys(), etcd), NodePool(1.0, 1.0, 1), cast(NodeAdmin, None)
    )


async def converse(data: bytes, *, close: bool = False) -> bytes:
    """Send `data`, then read until the front closes; `close`: half-close first."""
    client, server = trio.testing.memory_stream_pair()
    answer = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, _state(), server, "127.0.0.1", "http")
        await client.send_all(data)
        if close:
            await client.send_stream.aclose()
        with trio.fail_after(60):
            while chunk := await client.receive_some(65536):
                answer += chunk
    return bytes(answer)


def statuses(data: bytes, methods: list[bytes]) -> list[tuple[int, bytes, bool]]:
    """(status, body, said close) of each response, framed by h11 for the given methods."""
    found = []
    for method in methods:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "edge")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        head = conn.next_event()
        assert isinstance(head, h11.Response), head
        body = bytearray()
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        found.append((head.status_code, bytes(body), (b"connection", b"close") in head.headers))
        data = conn.trailing_data[0]
    assert data == b"", data
    return found


async def test_head_answers_are_heads_on_a_keep_alive_connection() -> None:
    answer = await converse(b"HEAD /healthz HTTP/1.1\r\nHost: edge\r\n\r\n" + LAST)
    assert statuses(answer, [b"HEAD", b"GET"]) == [(200, b"", False), (200, b"ok\n", True)]


async def test_head_error_answer_is_a_head() -> None:
    answer = await converse(b"HEAD /nowhere HTTP/1.1\r\nHost: edge\r\n\r\n" + LAST)
    assert statuses(answer, [b"HEAD", b"GET"]) == [(404, b"", False), (200, b"ok\n", True)]


async def test_a_body_that_looks_like_a_request_is_drained_not_served() -> None:
    smuggled = b"GET /_gitedge/stats HTTP/1.1\r\nHost: edge\r\n\r\n"
    outer = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
    answer = await converse(outer + smuggled + LAST)
    # The stats page (trusted peer: it would be served) never is.
    assert statuses(answer, [b"GET", b"GET"]) == [(200, b"ok\n", False), (200, b"ok\n", True)]


async def test_a_chunked_body_nobody_reads_is_drained() -> None:
    outer = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await converse(outer + b"5\r\nhello\r\n0\r\n\r\n" + LAST)
    assert statuses(answer, [b"GET", b"GET"]) == [(200, b"ok\n", False), (200, b"ok\n", True)]


async def test_a_large_body_nobody_reads_closes_the_connection() -> None:
    body = b"x" * (DRAIN_LIMIT + 1)
    outer = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nContent-Length: %d\r\n\r\n" % len(body)
    answer = await converse(outer + body + LAST)
    assert statuses(answer, [b"GET"]) == [(200, b"ok\n", True)]


async def test_a_body_the_client_holds_back_for_100_continue_closes() -> None:
    outer = (
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
    )
    answer = await converse(outer)
    assert statuses(answer, [b"GET"]) == [(200, b"ok\n", True)]


async def test_a_body_that_stops_coming_is_drained_until_the_deadline_then_closed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outer = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nContent-Length: 10\r\n\r\nabc"
    started = trio.current_time()
    answer = await converse(outer)
    assert statuses(answer, [b"GET"]) == [(200, b"ok\n", True)]
    assert trio.current_time() - started == pytest.approx(HEADER_TIMEOUT)


@pytest.mark.parametrize(
    "body",
    [b"5\nhello\r\n0\r\n\r\n", b" 5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\r\n0\r\n\r\n"],
)
async def test_malformed_api_body_is_400_and_closes(body: bytes) -> None:
    head = (
        b"POST /api/admin/users HTTP/1.1\r\nHost: edge\r\n%s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % ADMIN
    )
    answer = await converse(head + body + LAST)
    assert statuses(answer, [b"POST"]) == [(400, b"malformed request body\n", True)]


async def test_oversized_api_body_read_in_full_is_413_and_the_connection_lives_on() -> None:
    # 70 KiB arrives in one read: all of it was read, so nothing is left to misparse.
    body = b"x" * (70 * 1024)
    head = b"POST /api/admin/users HTTP/1.1\r\nHost: edge\r\n%s\r\nContent-Length: %d\r\n\r\n" % (
        ADMIN,
        len(body),
    )
    answer = await converse(head + body + LAST)
    assert statuses(answer, [b"POST", b"GET"]) == [
        (413, b"request body too large\n", False),
        (200, b"ok\n", True),
    ]


async def test_oversized_api_body_not_read_in_full_is_413_and_closes() -> None:
    body = b"x" * (1024 * 1024)
    head = b"POST /api/admin/users HTTP/1.1\r\nHost: edge\r\n%s\r\nContent-Length: %d\r\n\r\n" % (
        ADMIN,
        len(body),
    )
    answer = await converse(head + body + LAST)
    assert statuses(answer, [b"POST"]) == [(413, b"request body too large\n", True)]


async def test_api_body_that_stalls_is_408_at_once(autojump_clock: trio.testing.MockClock) -> None:
    head = (
        b"POST /api/admin/users HTTP/1.1\r\nHost: edge\r\n%s\r\nContent-Length: 50\r\n\r\n{" % ADMIN
    )
    started = trio.current_time()
    answer = await converse(head)
    assert statuses(answer, [b"POST"]) == [(408, b"request body timed out\n", True)]
    # One body timeout, then the answer: no drain of a body that stopped coming.
    assert trio.current_time() - started == pytest.approx(HEADER_TIMEOUT)


async def test_api_body_cut_short_by_the_client_is_not_a_500() -> None:
    head = (
        b"POST /api/admin/users HTTP/1.1\r\nHost: edge\r\n%s\r\nContent-Length: 50\r\n\r\n{" % ADMIN
    )
    answer = await converse(head, close=True)
    assert statuses(answer, [b"POST"]) == [(400, b"malformed request body\n", True)]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\nHost: edge\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\nX: y\r\n\r\n",
    ],
)
async def test_head_with_a_bare_lf_is_400(head: bytes) -> None:
    answer = await converse(head)
    status, _, closed = statuses(answer, [b"GET"])[0]
    assert (status, closed) == (400, True)


async def test_http_1_0_answer_closes() -> None:
    answer = await converse(b"GET /healthz HTTP/1.0\r\n\r\n" + HEALTH)
    assert statuses(answer, [b"GET"]) == [(200, b"ok\n", True)]
