"""proxy_git over trio memory streams: a scripted node on one side, a client on the other.

The node is a small script per connection (it reads the request with h11, as
the reference node does, then answers, misbehaves or closes); the pool hands
out in-memory connections to it. What is checked is what a client or a node
would notice: the bytes each receives, the status or error the front would
answer with, and which connections are kept.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import pytest
import trio
import trio.testing

from edge.errors import BadGateway, NodeUnavailable
from edge.http.pool import NodeConn, NodePool
from edge.http.proxy import ClientInfo, ProxyResult, Timeouts, proxy_git
from edge.http.stream import BodyTimeout, BufferedStream
from edge.proto.body import BodyError
from edge.proto.exchange import Exchange
from gitproto.protocol import Service
from gitproto.routes import InfoRefs, Rpc
from routing.model import NodeId, Region, RepoLocation, RepoName, VolumeId

REPO = RepoName.parse("alice/pub")
LOCATION = RepoLocation(REPO, Region("fra"), VolumeId("v-1"), NodeId("fra-1"), "http://node:1")
INFO = ClientInfo("192.0.2.7", "https", trusted_proxy=False)
TIMEOUTS = Timeouts(response=30, body_idle=30)

INFO_REFS = (
    b"GET /alice/pub.git/info/refs?service=git-upload-pack HTTP/1.1\r\n"
    b"Host: edge.example\r\nGit-Protocol: version=2\r\nCookie: secret\r\n\r\n"
)
UPLOAD_HEAD = (
    b"POST /alice/pub.git/git-upload-pack HTTP/1.1\r\nHost: edge.example\r\n"
    b"Content-Type: application/x-git-upload-pack-request\r\nTransfer-Encoding: chunked\r\n\r\n"
)
UPLOAD_BODY = b"4\r\n0000\r\n8;x=1\r\n0009done\r\n0\r\n\r\n"
ADVERTISEMENT = b"HTTP/1.1 200 OK\r\nContent-Type: x/y\r\nTransfer-Encoding: chunked\r\n\r\n"
ADVERTISEMENT_BODY = b"8\r\n0000pack\r\n0\r\n\r\n"

Script = Callable[["Node", trio.abc.Stream], Awaitable[None]]


@dataclass
class Node:
    """What one scripted node connection received."""

    received: bytearray = field(default_factory=bytearray)
    requests: list[h11.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    cut_short: bool = False
    """The edge closed in the middle of the request (as it must after a bad body)."""

    async def read_request(self, stream: trio.abc.Stream, *, body: bool = True) -> None:
        conn = h11.Connection(h11.SERVER)
        data = bytearray()
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                self.cut_short = True
                return
            if event is h11.NEED_DATA:
                chunk = bytes(await stream.receive_some(65536))
                self.received += chunk
                conn.receive_data(chunk)
                continue
            if isinstance(event, h11.Request):
                self.requests.append(event)
                if not body:
                    return
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.bodies.append(bytes(data))
                return

    async def until_closed(self, stream: trio.abc.Stream) -> None:
        with trio.move_on_after(30):
            while chunk := await stream.receive_some(65536):
                self.received += chunk


def answers(*response: bytes) -> Script:
    async def script(node: Node, stream: trio.abc.Stream) -> None:
        await node.read_request(stream)
        if node.cut_short:
            return
        for part in response:
            await stream.send_all(part)
        await node.until_closed(stream)

    return script


def answers_then_closes(*response: bytes) -> Script:
    async def script(node: Node, stream: trio.abc.Stream) -> None:
        await node.read_request(stream)
        if node.cut_short:
            return
        for part in response:
            await stream.send_all(part)
        await stream.aclose()

    return script


def answers_early(*response: bytes) -> Script:
    """Answers once it has the head, without reading the body."""

    async def script(node: Node, stream: trio.abc.Stream) -> None:
        await node.read_request(stream, body=False)
        for part in response:
            await stream.send_all(part)
        await node.until_closed(stream)

    return script


async def closes_at_once(node: Node, stream: trio.abc.Stream) -> None:
    await stream.aclose()


async def reads_then_closes(node: Node, stream: trio.abc.Stream) -> None:
    await node.read_request(stream)
    await stream.aclose()


class MemoryPool(NodePool):
    """Hands out in-memory connections, each served by the next script.

    `reused_first`: the first connection is one the pool had kept (it may have
    raced the node's idle close), as `acquire` marks a pooled connection.
    """

    def __init__(self, nursery: trio.Nursery, scripts: list[Script], reused_first: bool) -> None:
        super().__init__(1.0, 30.0, 4, credential="node-secret")
        self._nursery = nursery
        self._scripts = scripts
        self._reused_first = reused_first
        self.nodes: list[Node] = []
        self.acquired: list[tuple[bool, NodeConn]] = []
        self.released: list[NodeConn] = []

    async def acquire(
        self, node_url: str, fresh: bool = False, *, node_id: str | None = None
    ) -> NodeConn:
        ours, theirs = trio.testing.memory_stream_pair()
        node = Node()
        self.nodes.append(node)
        self._nursery.start_soon(self._scripts[len(self.acquired)], node, theirs)
        conn = NodeConn(("node", 1), BufferedStream(ours), b"authorization: Bearer node-secret")
        conn.reused = self._reused_first and not self.acquired and not fresh
        self.acquired.append((fresh, conn))
        return conn

    def release(self, conn: NodeConn) -> bool:
        self.released.append(conn)
        return True


@dataclass
class Run:
    result: ProxyResult | None
    error: BaseException | None
    exchange: Exchange
    pool: MemoryPool
    to_client: bytes


async def run(
    request: bytes,
    *scripts: Script,
    body_later: bytes = b"",
    reused_first: bool = False,
    timeouts: Timeouts = TIMEOUTS,
    client_closes: bool = False,
) -> Run:
    """Proxy `request` (its head and any body bytes that come with it) as the front would;
    `body_later` arrives once the relay has started."""
    client, edge = trio.testing.memory_stream_pair()
    edge_side = BufferedStream(edge)
    result: ProxyResult | None = None
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        pool = MemoryPool(nursery, list(scripts), reused_first)
        await client.send_all(request)
        raw = await edge_side.read_head(5)
        assert raw is not None
        exchange = Exchange(raw)
        route: InfoRefs | Rpc = (
            InfoRefs(REPO, Service.UPLOAD_PACK)
            if exchange.head.method in (b"GET", b"HEAD")
            else Rpc(REPO, Service.UPLOAD_PACK)
        )

        async def later() -> None:
            await trio.testing.wait_all_tasks_blocked()
            if body_later:
                await client.send_all(body_later)
            if client_closes:
                await client.aclose()

        nursery.start_soon(later)
        try:
            result = await proxy_git(edge_side, exchange, route, LOCATION, INFO, pool, timeouts)
        except Exception as exc:
            error = exc
        await edge_side.aclose()
        to_client = bytearray()
        if not client_closes:
            while chunk := await client.receive_some(65536):
                to_client += chunk
        nursery.cancel_scope.cancel()
    return Run(result, error, exchange, pool, bytes(to_client))


# -- a whole exchange --------------------------------------------------------------


async def test_response_is_relayed_verbatim_and_both_connections_are_kept() -> None:
    got = await run(INFO_REFS, answers(ADVERTISEMENT, ADVERTISEMENT_BODY))
    assert got.error is None and got.result is not None
    assert got.result.status == 200
    # Chunk framing and all, byte for byte; only hop-by-hop fields would differ.
    assert got.to_client == (
        b"HTTP/1.1 200 OK\r\ncontent-type: x/y\r\ntransfer-encoding: chunked\r\n\r\n"
        + ADVERTISEMENT_BODY
    )
    assert got.result.response_bytes == len(ADVERTISEMENT_BODY)
    assert got.exchange.client_reusable
    assert got.pool.released == [got.pool.acquired[0][1]]


async def test_the_node_gets_the_canonical_request_with_its_credential() -> None:
    got = await run(INFO_REFS, answers(ADVERTISEMENT, ADVERTISEMENT_BODY))
    request = got.pool.nodes[0].requests[0]
    assert request.target == b"/alice/pub.git/info/refs?service=git-upload-pack"
    headers = dict(request.headers)
    assert headers[b"authorization"] == b"Bearer node-secret"
    assert headers[b"git-protocol"] == b"version=2"
    assert headers[b"x-forwarded-for"] == b"192.0.2.7"
    assert headers[b"x-forwarded-host"] == b"edge.example"
    assert b"cookie" not in headers  # only what a node needs goes up


@pytest.mark.parametrize("split", [len(UPLOAD_BODY), 7, 1])
async def test_request_body_is_relayed_verbatim(split: int) -> None:
    first, later = UPLOAD_BODY[:split], UPLOAD_BODY[split:]
    got = await run(
        UPLOAD_HEAD + first, answers(ADVERTISEMENT, ADVERTISEMENT_BODY), body_later=later
    )
    assert got.error is None
    node = got.pool.nodes[0]
    assert node.received.endswith(b"\r\n\r\n" + UPLOAD_BODY)  # the client's framing, as sent
    assert node.bodies == [b"00000009done"]
    assert got.exchange.client_reusable
    assert got.pool.released


async def test_head_response_has_no_body_whatever_it_says() -> None:
    head = INFO_REFS.replace(b"GET ", b"HEAD ", 1)
    got = await run(head, answers(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n"))
    assert got.error is None
    assert got.to_client == b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n"
    assert got.exchange.client_reusable
    assert got.pool.released


async def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    head = UPLOAD_HEAD.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    got = await run(head, answers(ADVERTISEMENT, ADVERTISEMENT_BODY), body_later=UPLOAD_BODY)
    assert got.to_client.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert b"expect" not in dict(got.pool.nodes[0].requests[0].headers)


async def test_node_closing_after_its_response_is_not_kept() -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
    got = await run(INFO_REFS, answers_then_closes(response))
    assert got.error is None
    assert got.exchange.client_reusable  # the node's close is not the client's
    assert got.pool.released == []


# -- node failures: 502 and 503, never an exception group ----------------------------


@pytest.mark.parametrize(
    "response",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
        b"HTTP/1.1 200",  # then closes inside the head
    ],
    ids=["garbage", "bad-length", "interim", "bare-lf", "cut-head"],
)
async def test_bad_response_from_the_node_is_502(response: bytes) -> None:
    got = await run(INFO_REFS, answers_then_closes(response))
    assert type(got.error) is BadGateway  # not an ExceptionGroup around it
    assert got.error.http_status == 502
    assert got.to_client == b""  # the front answers
    assert got.pool.released == []


async def test_node_closing_before_a_response_is_503() -> None:
    got = await run(INFO_REFS, reads_then_closes)
    assert type(got.error) is NodeUnavailable
    assert got.error.http_status == 503
    assert len(got.pool.acquired) == 1  # a fresh connection: no retry


async def test_pooled_connection_the_node_closed_is_retried_on_a_fresh_one() -> None:
    got = await run(
        INFO_REFS,
        closes_at_once,
        answers(ADVERTISEMENT, ADVERTISEMENT_BODY),
        reused_first=True,
    )
    assert got.error is None and got.result is not None
    assert got.result.status == 200
    assert [fresh for fresh, _ in got.pool.acquired] == [False, True]
    assert got.pool.nodes[1].requests[0].target.endswith(b"service=git-upload-pack")


async def never_answers(node: Node, stream: trio.abc.Stream) -> None:
    await node.read_request(stream)
    await trio.sleep_forever()


async def test_node_that_does_not_answer_in_time_is_502_and_not_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Slow is not closed: the node may be working on the request, so it is not sent again.
    got = await run(
        INFO_REFS,
        never_answers,
        answers(ADVERTISEMENT, ADVERTISEMENT_BODY),
        reused_first=True,
        timeouts=Timeouts(response=30, body_idle=30),
    )
    assert type(got.error) is BadGateway
    assert len(got.pool.acquired) == 1


async def test_streamed_request_is_not_replayed_after_a_pooled_connection_closes() -> None:
    # Half a POST went up: it may not be sent twice (DESIGN.md, pooled keep-alive).
    got = await run(
        UPLOAD_HEAD + UPLOAD_BODY[:5],
        reads_then_closes,
        answers(ADVERTISEMENT, ADVERTISEMENT_BODY),
        reused_first=True,
        body_later=UPLOAD_BODY[5:],
    )
    assert type(got.error) is NodeUnavailable
    assert len(got.pool.acquired) == 1


async def test_node_failing_in_the_middle_of_its_response_ends_the_client_connection() -> None:
    got = await run(INFO_REFS, answers_then_closes(ADVERTISEMENT, ADVERTISEMENT_BODY[:5]))
    assert got.error is None and got.result is not None
    assert got.result.status == 200
    assert "aborted" in got.result.note
    assert got.to_client.endswith(ADVERTISEMENT_BODY[:5])  # what came, and no more
    assert got.exchange.failure is not None
    assert not got.exchange.client_reusable
    assert got.pool.released == []


async def test_node_answering_before_the_body_ended_reuses_neither_connection() -> None:
    refused = b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n"
    got = await run(UPLOAD_HEAD + UPLOAD_BODY[:5], answers_early(refused))
    assert got.error is None and got.result is not None
    assert got.result.status == 413
    assert got.to_client.startswith(b"HTTP/1.1 413 Too Large\r\n")
    assert b"connection: close" in got.to_client  # the rest of the body is still coming
    assert not got.exchange.client_reusable
    assert got.pool.released == []


# -- client failures: 4xx ------------------------------------------------------------


async def test_malformed_body_in_hand_is_refused_before_the_node_is_asked() -> None:
    got = await run(UPLOAD_HEAD + b"5\nhello\r\n0\r\n\r\n", answers(ADVERTISEMENT))
    assert type(got.error) is BodyError
    assert got.error.http_status == 400
    assert got.pool.acquired == []


async def test_malformed_body_later_is_a_400_and_nothing_is_kept() -> None:
    got = await run(
        UPLOAD_HEAD + b"4\r\n0000\r\n",
        answers(ADVERTISEMENT, ADVERTISEMENT_BODY),
        body_later=b"5 \r\nhello\r\n0\r\n\r\n",
    )
    assert type(got.error) is BodyError
    assert got.error.http_status == 400
    assert got.pool.released == []
    assert got.pool.nodes[0].received.endswith(b"4\r\n0000\r\n")  # no byte of the bad line
    assert got.pool.nodes[0].cut_short


async def test_client_stalling_in_its_body_is_408(autojump_clock: trio.testing.MockClock) -> None:
    got = await run(
        UPLOAD_HEAD + b"4\r\n0000\r\n",
        answers(ADVERTISEMENT, ADVERTISEMENT_BODY),
        timeouts=Timeouts(response=300, body_idle=10),
    )
    assert type(got.error) is BodyTimeout
    assert got.error.http_status == 408
    assert got.pool.released == []


async def test_client_closing_inside_its_body_is_not_a_500() -> None:
    got = await run(
        UPLOAD_HEAD + b"4\r\n0000\r\n",
        answers(ADVERTISEMENT, ADVERTISEMENT_BODY),
        client_closes=True,
    )
    assert isinstance(got.error, BodyError)  # the body ended early: 400, to nobody
    assert got.pool.released == []
