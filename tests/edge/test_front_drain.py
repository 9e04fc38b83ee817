"""A drain as the HTTP front sees it (plumbing/drain.py): idle connections close at
once, a request already begun is answered with `connection: close`."""

from __future__ import annotations

import trio
import trio.testing

from edge.http.front import serve_connection
from edge.proto.exchange import Exchange
from tests.edge.test_front_exchange import HEALTH, _state, statuses


async def _read_all(stream: trio.abc.Stream) -> bytes:
    answer = bytearray()
    with trio.fail_after(5):
        while chunk := await stream.receive_some(65536):
            answer += chunk
    return bytes(answer)


async def test_an_idle_keep_alive_connection_closes_when_the_drain_begins() -> None:
    state = _state()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, state, server, "127.0.0.1", "http")
        await client.send_all(HEALTH)
        first = bytes(await client.receive_some(65536))
        assert statuses(first, [b"GET"]) == [(200, b"ok\n", False)]  # kept alive
        state.drain.begin()
        assert await _read_all(client) == b""  # closed, without waiting for keepalive_timeout


async def test_a_request_begun_before_the_drain_is_answered_and_says_close() -> None:
    state = _state()
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, state, server, "127.0.0.1", "http")
        await client.send_all(HEALTH[:10])
        await trio.testing.wait_all_tasks_blocked()
        state.drain.begin()
        await client.send_all(HEALTH[10:])
        answer = await _read_all(client)
    assert statuses(answer, [b"GET"]) == [(200, b"ok\n", True)]


async def test_a_request_in_flight_when_the_drain_begins_says_close() -> None:
    # The admin API waits for its body: the drain begins in the middle of it.
    state = _state()
    body = b'{"name": "zed"}'
    head = (
        b"POST /api/admin/users HTTP/1.1\r\nHost: edge\r\nauthorization: Bearer admin-token\r\n"
        b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, state, server, "127.0.0.1", "http")
        await client.send_all(head + body[:5])
        await trio.testing.wait_all_tasks_blocked()
        assert state.requests.active == 1
        state.drain.begin()
        await client.send_all(body[5:])
        answer = await _read_all(client)
    [(_status, _body, said_close)] = statuses(answer, [b"POST"])
    assert said_close
    assert state.requests.active == 0


def test_close_after_makes_the_answer_say_close() -> None:
    exchange = Exchange(HEALTH)
    exchange.close_after()
    assert b"connection: close" in exchange.answer(200, b"ok\n").lower()
    assert not exchange.client_reusable
    assert exchange.drain_budget == 0
