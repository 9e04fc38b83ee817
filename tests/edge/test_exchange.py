"""Exchange: one request's state, fed whole, byte by byte, in random splits, and with
the bytes of the next request (or the node's next bytes) after it, which it must leave.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import h11
import pytest

from edge.proto.body import BodyError
from edge.proto.exchange import CONTINUE, DRAIN_LIMIT, BodyProgress, Exchange, refusal
from edge.proto.http_head import HeadError, HeadReader, parse_response_head

NEXT_REQUEST = b"GET /api/repos/alice/priv HTTP/1.1\r\nHost: edge\r\nAuthorization: Basic x\r\n\r\n"


def splittings(data: bytes, trials: int = 30) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for seed in range(trials):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 10))))
        yield [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]


def run_request(pieces: list[bytes]) -> tuple[Exchange, bytes, bytes, list[BodyProgress]]:
    """Read a head and its body from `pieces` as the front and a body reader would.

    Returns the exchange, the body bytes it took, what was left over, and the
    progress seen after each piece of body.
    """
    reader = HeadReader()
    exchange: Exchange | None = None
    body = bytearray()
    rest = bytearray()
    progress: list[BodyProgress] = []
    for piece in pieces:
        if exchange is None:
            found = reader.feed(piece)
            if found is None:
                continue
            raw, piece = found
            exchange = Exchange(raw)
            progress.append(exchange.request_progress)
        if exchange.request_body.done:
            rest += piece
            continue
        used = exchange.request_body.feed(piece)
        body += piece[:used]
        rest += piece[used:]
        progress.append(exchange.request_progress)
    assert exchange is not None
    return exchange, bytes(body), bytes(rest), progress


REQUESTS = {
    "get": (b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n", b""),
    "get-with-a-body": (
        b"GET /api/repos/alice/pub HTTP/1.1\r\nHost: edge\r\nContent-Length: %d\r\n\r\n"
        % len(NEXT_REQUEST),
        NEXT_REQUEST,  # a body that looks like a request is still a body
    ),
    "post-length": (
        b"POST /api/repos HTTP/1.1\r\nHost: edge\r\nContent-Length: 19\r\n\r\n",
        b'{"name": "alice/x"}',
    ),
    "post-chunked": (
        b"POST /a/b.git/git-receive-pack HTTP/1.1\r\nHost: edge\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n",
    ),
}


@pytest.mark.parametrize(("head", "body"), REQUESTS.values(), ids=REQUESTS.keys())
def test_request_in_every_split_leaves_the_next_request_alone(head: bytes, body: bytes) -> None:
    for pieces in splittings(head + body + NEXT_REQUEST):
        exchange, taken, rest, progress = run_request(pieces)
        assert taken == body
        assert rest == NEXT_REQUEST
        assert exchange.request_progress is BodyProgress.READ
        assert exchange.request_body.done
        # Progress only moves forward: unread, partly read, read.
        order = [BodyProgress.UNREAD, BodyProgress.PARTIAL, BodyProgress.READ]
        assert progress == sorted(progress, key=order.index)
        if not body:
            assert progress[0] is BodyProgress.READ


def test_progress_unread_partial_read() -> None:
    exchange = Exchange(REQUESTS["post-length"][0])
    seen = [exchange.request_progress]
    exchange.request_body.feed(b'{"name"')
    seen.append(exchange.request_progress)
    exchange.request_body.feed(b': "alice/x"}')
    seen.append(exchange.request_progress)
    assert seen == [BodyProgress.UNREAD, BodyProgress.PARTIAL, BodyProgress.READ]


def test_progress_broken() -> None:
    exchange = Exchange(REQUESTS["post-chunked"][0])
    with pytest.raises(BodyError) as info:
        exchange.request_body.feed(b"5\nhello\r\n")
    assert info.value.http_status == 400
    assert exchange.request_progress is BodyProgress.BROKEN
    assert exchange.drain_budget == 0
    assert b"connection: close" in exchange.answer(400, b"malformed request body\n")
    assert not exchange.client_reusable


def test_bad_head_is_a_head_error() -> None:
    with pytest.raises(HeadError) as info:
        Exchange(b"GET / HTTP/1.1\r\n\r\n")  # no Host
    assert info.value.http_status == 400


# -- the edge's own answers --------------------------------------------------------


def _h11_read(answer: bytes, method: bytes) -> tuple[h11.Response, bytes, bytes]:
    """The answer as a client reads it: head, body, and any bytes after it."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "edge")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(answer)
    head = conn.next_event()
    assert isinstance(head, h11.Response)
    body = bytearray()
    while not isinstance(event := conn.next_event(), h11.EndOfMessage):
        assert isinstance(event, h11.Data), event
        body += event.data
    return head, bytes(body), conn.trailing_data[0]


def test_answer_to_get_has_its_body_and_keeps_the_connection() -> None:
    exchange = Exchange(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
    answer = exchange.answer(200, b"ok\n")
    head, body, after = _h11_read(answer, b"GET")
    assert (head.status_code, body, after) == (200, b"ok\n", b"")
    assert (b"connection", b"close") not in head.headers
    assert exchange.response_started and exchange.response_complete
    assert exchange.client_reusable
    assert not exchange.node_reusable  # there was no node


def test_answer_to_head_is_the_head_alone_with_the_gets_length() -> None:
    exchange = Exchange(b"HEAD /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
    answer = exchange.answer(200, b"ok\n")
    assert answer.endswith(b"\r\n\r\n")
    assert b"ok" not in answer
    head, body, after = _h11_read(answer + NEXT_REQUEST, b"HEAD")
    assert (head.status_code, body) == (200, b"")
    assert (b"content-length", b"3") in head.headers  # RFC 9110 9.3.2: as GET would
    assert after == NEXT_REQUEST
    assert exchange.client_reusable


def test_error_answer_to_head_is_the_head_alone() -> None:
    exchange = Exchange(b"HEAD /api/repos/a/b HTTP/1.1\r\nHost: edge\r\n\r\n")
    answer = exchange.answer(404, b"repository not found\n")
    assert answer.endswith(b"\r\n\r\n")
    assert exchange.client_reusable


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n\r\n",  # body unread
        b"GET / HTTP/1.1\r\nHost: edge\r\nTransfer-Encoding: chunked\r\n\r\n",
    ],
    ids=["close", "http-1.0", "unread-length-body", "unread-chunked-body"],
)
def test_answer_closes_when_the_connection_cannot_go_on(head: bytes) -> None:
    exchange = Exchange(head)
    answer = exchange.answer(200, b"{}\n", b"application/json")
    response, _, _ = _h11_read(answer, b"GET")
    assert (b"connection", b"close") in response.headers
    assert not exchange.client_reusable


def test_answer_after_a_failure_closes() -> None:
    exchange = Exchange(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
    exchange.fail("a bug")
    assert b"connection: close" in exchange.answer(500, b"internal error\n")
    assert not exchange.client_reusable
    assert exchange.failure == "a bug"


def test_one_answer_per_exchange() -> None:
    exchange = Exchange(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n")
    exchange.answer(200, b"")
    with pytest.raises(AssertionError):
        exchange.answer(200, b"")


def test_refusal_always_closes() -> None:
    head, body, _ = _h11_read(refusal(431, "request header fields too large"), b"GET")
    assert head.status_code == 431
    assert (b"connection", b"close") in head.headers
    assert body == b"request header fields too large\n"


# -- draining what nobody read -----------------------------------------------------


def test_drain_budget_for_a_small_length_body_is_its_length() -> None:
    exchange = Exchange(b"GET / HTTP/1.1\r\nHost: edge\r\nContent-Length: 158\r\n\r\n")
    assert exchange.drain_budget == 158
    exchange.request_body.feed(b"x" * 100)
    assert exchange.drain_budget == 58
    exchange.request_body.feed(b"x" * 58)
    assert exchange.drain_budget == 0
    assert exchange.client_reusable is False  # no answer yet
    exchange.answer(200, b"")
    assert exchange.client_reusable


def test_drain_budget_for_a_large_length_body_is_none() -> None:
    exchange = Exchange(
        b"POST / HTTP/1.1\r\nHost: edge\r\nContent-Length: %d\r\n\r\n" % (DRAIN_LIMIT + 1)
    )
    assert exchange.drain_budget == 0


def test_drain_budget_for_a_chunked_body_is_the_limit_left() -> None:
    exchange = Exchange(REQUESTS["post-chunked"][0])
    assert exchange.drain_budget == DRAIN_LIMIT
    exchange.request_body.feed(b"5\r\nhello\r\n")
    assert exchange.drain_budget == DRAIN_LIMIT - 10


def test_no_drain_when_the_connection_closes_anyway() -> None:
    exchange = Exchange(
        b"POST / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\nContent-Length: 3\r\n\r\n"
    )
    assert exchange.drain_budget == 0


# -- 100 Continue ------------------------------------------------------------------

EXPECT = b"POST / HTTP/1.1\r\nHost: edge\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"


def test_continue_is_sent_once_and_then_the_body_may_be_drained() -> None:
    exchange = Exchange(EXPECT)
    assert exchange.drain_budget == 0  # the client waits for us: draining would hang
    assert exchange.continue_head() == CONTINUE
    assert exchange.continue_head() is None
    assert exchange.drain_budget == 3


def test_no_continue_after_an_answer_and_the_answer_closes() -> None:
    exchange = Exchange(EXPECT)
    assert b"connection: close" in exchange.answer(401, b"")
    assert exchange.continue_head() is None


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: edge\r\nExpect: 100-continue\r\n\r\n",  # no body
        b"POST / HTTP/1.1\r\nHost: edge\r\nContent-Length: 3\r\n\r\n",
    ],
    ids=["http-1.0", "no-body", "no-expect"],
)
def test_no_continue(head: bytes) -> None:
    assert Exchange(head).continue_head() is None


# -- a node's response -------------------------------------------------------------

CHUNKED_RESPONSE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: x/y\r\n\r\n"
CHUNKED_RESPONSE_BODY = b"4\r\npack\r\n0\r\n\r\n"
NODE_NEXT = b"HTTP/1.1 200 OK\r\n"  # bytes a node must not have sent: the pool drops it


def _proxied(request: bytes, response: bytes) -> tuple[Exchange, bytes]:
    exchange = Exchange(request)
    if not exchange.request_body.done:
        exchange.request_body.feed(b"x" * exchange.head.content_length)
    return exchange, exchange.receive_response_head(parse_response_head(response))


def test_response_body_in_every_split_leaves_what_follows() -> None:
    for pieces in splittings(CHUNKED_RESPONSE_BODY + NODE_NEXT):
        exchange, _ = _proxied(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", CHUNKED_RESPONSE)
        framer = exchange.response_body
        assert framer is not None
        taken, rest = bytearray(), bytearray()
        for piece in pieces:
            used = framer.feed(piece) if not framer.done else 0
            taken += piece[:used]
            rest += piece[used:]
        assert (bytes(taken), bytes(rest)) == (CHUNKED_RESPONSE_BODY, NODE_NEXT)
        assert exchange.client_reusable and exchange.node_reusable


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
    ],
    ids=["length", "chunked", "unframed"],
)
def test_response_to_head_has_no_body_whatever_it_says(response: bytes) -> None:
    exchange, head = _proxied(b"HEAD / HTTP/1.1\r\nHost: edge\r\n\r\n", response)
    assert exchange.response_complete
    assert exchange.response_body is not None
    assert exchange.response_body.feed(NODE_NEXT) == 0
    assert exchange.client_reusable
    assert exchange.node_reusable
    assert b"connection: close" not in head


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n",
    ],
)
def test_204_and_304_have_no_body(response: bytes) -> None:
    exchange, _ = _proxied(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", response)
    assert exchange.response_complete
    assert exchange.node_reusable


def test_close_delimited_response_closes_both_connections() -> None:
    exchange, head = _proxied(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n")
    assert b"connection: close" in head  # said up front: the body ends at our close
    framer = exchange.response_body
    assert framer is not None and framer.close_delimited
    framer.feed(b"anything")
    framer.eof()
    assert exchange.response_complete
    assert not exchange.client_reusable
    assert not exchange.node_reusable


def test_node_saying_close_keeps_the_client_connection() -> None:
    exchange, head = _proxied(
        b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert b"connection" not in head  # hop-by-hop: the node's connection, not the client's
    assert exchange.client_reusable
    assert not exchange.node_reusable


def test_client_saying_close_keeps_the_node_connection() -> None:
    exchange, head = _proxied(
        b"GET / HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    )
    assert b"connection: close" in head
    assert not exchange.client_reusable
    assert exchange.node_reusable


def test_hop_by_hop_headers_and_those_connection_names_are_dropped() -> None:
    _, head = _proxied(
        b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: X-Node-Secret\r\n"
        b"X-Node-Secret: s\r\nKeep-Alive: timeout=5\r\nContent-Type: a/b\r\n\r\n",
    )
    assert head == b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\ncontent-type: a/b\r\n\r\n"


def test_node_answering_before_the_request_body_ended_reuses_nothing() -> None:
    exchange = Exchange(b"POST / HTTP/1.1\r\nHost: edge\r\nContent-Length: 10\r\n\r\n")
    exchange.request_body.feed(b"abc")
    head = exchange.receive_response_head(
        parse_response_head(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
    )
    assert b"connection: close" in head  # the rest of the body is still on its way
    assert exchange.response_complete
    assert not exchange.client_reusable
    assert not exchange.node_reusable


def test_a_failed_relay_reuses_nothing() -> None:
    exchange, _ = _proxied(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", CHUNKED_RESPONSE)
    assert exchange.response_body is not None
    exchange.response_body.feed(b"4\r\npa")
    exchange.fail("node reset")
    assert not exchange.client_reusable
    assert not exchange.node_reusable


def test_incomplete_response_reuses_nothing() -> None:
    exchange, _ = _proxied(b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n", CHUNKED_RESPONSE)
    assert not exchange.client_reusable
    assert not exchange.node_reusable


# -- the API's view of a body ------------------------------------------------------


def test_decoded_body_of_a_chunked_request() -> None:
    head, body = REQUESTS["post-chunked"]
    exchange = Exchange(head)
    exchange.request_body.feed(body)
    assert exchange.decoded_request_body(body) == b"hello world"


def test_decoded_body_of_a_length_request_is_itself() -> None:
    head, body = REQUESTS["post-length"]
    assert Exchange(head).decoded_request_body(body) == body


def test_decoded_body_refused_by_h11_is_a_body_error() -> None:
    # BWS before ';' is RFC grammar that h11 refuses; the framer now refuses it
    # too (so no such body is relayed), and a decode of it is a 400 all the same.
    head = REQUESTS["post-chunked"][0]
    exchange = Exchange(head)
    body = b"2 ;x\r\n{}\r\n0\r\n\r\n"
    with pytest.raises(BodyError) as fed:
        exchange.request_body.feed(body)
    assert fed.value.http_status == 400
    with pytest.raises(BodyError) as info:
        exchange.decoded_request_body(body)
    assert info.value.http_status == 400


def test_a_101_becomes_a_tunnel_that_neither_connection_survives() -> None:
    exchange = Exchange(
        b"GET /socket HTTP/1.1\r\nHost: edge\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    response = parse_response_head(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Keep-Alive: timeout=5\r\nSec-WebSocket-Accept: abc\r\n\r\n",
        upgrade=True,
    )
    head = exchange.receive_upgrade(response)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    lines = head.split(b"\r\n")
    assert b"sec-websocket-accept: abc" in lines
    assert b"connection: upgrade" in lines
    assert b"upgrade: websocket" in lines
    assert not any(line.startswith(b"keep-alive") for line in lines)
    assert exchange.status == 101
    assert not exchange.client_reusable
    assert not exchange.node_reusable
