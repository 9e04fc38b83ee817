"""Relaying one smart-HTTP request to the repository's node and back.

Both bodies are copied verbatim, framing included (proto/body.py), one chunk
in flight per direction, and every byte goes through the request's `Exchange`,
which decides what becomes of both connections afterwards. The request body
goes up in its own task while the response comes down, because a node may
answer before it has read everything (an error, or receive-pack refusing a
push).

Errors are caught inside the relay's nursery and raised after it has closed,
one at a time: raised inside, they would leave it as an exception group, which
no `except` for a single error matches (a node closing early became a 500).
Before the client has a response head, a failure is an `EdgeError` (or a
`BodyError` for a malformed request body) for the front to answer; after it,
the exchange is marked failed and both connections close.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from edge.errors import BadGateway, EdgeError, NodeUnavailable
from edge.http.pool import NodeConn, NodePool
from edge.http.stream import BodyTimeout, BufferedStream, HeadTimeout, relay_body
from edge.http.tunnel import tunnel
from edge.proto.body import BodyError
from edge.proto.exchange import Exchange
from edge.proto.http_head import HeadError, ResponseHead, parse_response_head
from gitproto.routes import InfoRefs, Rpc
from routing.model import RepoLocation

log = logging.getLogger(__name__)

# Request headers a node needs (gitprotocol-http); everything else stays here.
_FORWARD = frozenset(
    {
        b"git-protocol",
        b"content-type",
        b"content-encoding",
        b"content-length",
        b"transfer-encoding",
        b"accept",
        b"accept-encoding",
        b"user-agent",
    }
)
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
# What may break off a relay once the client has a response: the connection ends.
_ROUTINE = (BodyError, EdgeError, trio.TooSlowError, *_STREAM_ERRORS)


@dataclass(frozen=True)
class ClientInfo:
    peer_ip: str
    scheme: str
    trusted_proxy: bool
    user: str | None = None
    """The authenticated user of this request: sent to the node as `gitedge-user`,
    which marks a request made on a user's behalf (the node then hides and refuses
    refs/gitedge/); anonymous reads send none."""


@dataclass
class Timeouts:
    response: float
    body_idle: float


class _NodeClosedEarly(Exception):
    """The node closed or reset before any byte of a response."""


class _NodeStoppedReading(Exception):
    """Sending the request body to the node failed (it may be answering already)."""


class RequestBodyBroken(EdgeError):
    """The client's connection broke while it sent its body: nobody is left to answer."""

    http_status = 400
    public_message = "request body incomplete"


RequestHeadBuilder = Callable[[NodeConn], bytes]
"""The request head for the upstream, given the connection it goes on (its host
and credential lines are the connection's)."""

ResponseHook = Callable[[ResponseHead], ResponseHead]
"""Sees the upstream's response head before the client does: returns the head to
relay (headers taken out), or raises to discard the answer (its connection is
closed) and have the caller answer instead (web replay, edge/http/replay.py)."""


@dataclass
class ProxyResult:
    status: int = 0
    response_bytes: int = 0
    note: str = ""


def node_target(route: InfoRefs | Rpc) -> bytes:
    """The canonical path on the node: only what the edge validated gets through."""
    if isinstance(route, InfoRefs):
        return f"/{route.repo.bare_dir}/info/refs?service={route.service}".encode()
    return f"/{route.repo.bare_dir}/{route.service}".encode()


def build_node_request(
    exchange: Exchange, route: InfoRefs | Rpc, conn: NodeConn, client: ClientInfo
) -> bytes:
    head = exchange.head
    lines = [b"%s %s HTTP/1.1" % (head.method, node_target(route)), b"host: " + conn.host_header]
    if conn.auth_line:
        lines.append(conn.auth_line)
    forwarded_for = client.peer_ip.encode()
    for name, value in head.headers:
        if name in _FORWARD:
            lines.append(name + b": " + value)
        elif name == b"x-forwarded-for" and client.trusted_proxy:
            forwarded_for = value + b", " + forwarded_for
    if client.user is not None:
        lines.append(b"gitedge-user: " + client.user.encode())
    host = head.header(b"host") or b""
    lines += [
        b"x-forwarded-for: " + forwarded_for,
        b"x-forwarded-proto: " + client.scheme.encode(),
        b"x-forwarded-host: " + host,
        b"",
        b"",
    ]
    return b"\r\n".join(lines)


async def proxy_git(
    client: BufferedStream,
    exchange: Exchange,
    route: InfoRefs | Rpc,
    location: RepoLocation,
    info: ClientInfo,
    pool: NodePool,
    timeouts: Timeouts,
) -> ProxyResult:
    """Relay one git request to the repository's node (see `relay_request`)."""
    return await relay_request(
        client,
        exchange,
        lambda conn: build_node_request(exchange, route, conn, info),
        pool,
        timeouts,
        upstream_url=location.node_url,
        node_id=location.node_id,
    )


async def relay_request(
    client: BufferedStream,
    exchange: Exchange,
    request_head: RequestHeadBuilder,
    pool: NodePool,
    timeouts: Timeouts,
    *,
    upstream_url: str,
    node_id: str | None = None,
    may_retry: bool = True,
    upgrade_idle: float | None = None,
    first: bytes | None = None,
    on_response: ResponseHook | None = None,
) -> ProxyResult:
    """Relay one request, whose head for the upstream `request_head` writes, to a
    node or a web upstream over `pool`, and its response back.

    Raises EdgeError or BodyError only while nothing was sent to the client;
    after that, a failure is recorded with `exchange.fail` and returned.
    `may_retry`: a request whose body is all in hand is sent once more on a
    fresh connection when a pooled one turns out closed (see below).
    `upgrade_idle`: the request asks for an `Upgrade`; a `101` answer turns both
    connections into a tunnel (edge/http/tunnel.py) idle-closed after this long.
    `first`: the request body bytes already taken from the client and fed to its
    framer by the caller (buffered for a replay); None: what came with the head.
    `on_response`: see `ResponseHook`.
    """
    if (go_ahead := exchange.continue_head()) is not None:
        # We will read the body, so say so now; the node is not asked (RFC 9110 10.1.1).
        await client.send_all(go_ahead)
    # What came with the head goes up with it, checked by the framer first (a
    # malformed body is refused before the node sees any of it). A request
    # whose body is all in hand (GETs, most negotiation POSTs) can be replayed.
    if first is None:
        first = client.take(exchange.request_body.feed(client.pending))
    replayable = exchange.request_body.done and may_retry
    where = f"node {node_id}" if node_id else upstream_url
    for attempt in range(2):
        conn = await pool.acquire(upstream_url, fresh=attempt > 0, node_id=node_id)
        try:
            result = await _relay(
                client,
                exchange,
                request_head(conn),
                conn,
                timeouts,
                first,
                upgrade_idle,
                on_response,
            )
        except _NodeClosedEarly:
            await conn.stream.aclose()
            if conn.reused and replayable and attempt == 0:
                # The pooled connection raced the node's idle close; nothing
                # of the request was lost, so send it again on a fresh one.
                log.info("%s closed a pooled connection; retrying", where)
                continue
            raise NodeUnavailable(f"{where} closed the connection") from None
        except BaseException:
            await conn.stream.aclose()
            raise
        if not (exchange.node_reusable and pool.release(conn)):
            await conn.stream.aclose()
        return result
    raise AssertionError("unreachable")


async def _relay(
    client: BufferedStream,
    exchange: Exchange,
    request_head: bytes,
    conn: NodeConn,
    timeouts: Timeouts,
    first: bytes,
    upgrade_idle: float | None,
    on_response: ResponseHook | None,
) -> ProxyResult:
    node = conn.stream
    received_before = node.bytes_in
    try:
        await node.send_all(request_head + first)
    except _STREAM_ERRORS as exc:
        if conn.reused:
            raise _NodeClosedEarly() from exc
        raise NodeUnavailable(f"send to node {conn.address}: {exc!r}") from None

    result = ProxyResult()
    client_error: BaseException | None = None  # reading the request body
    node_error: BaseException | None = None  # reading the response, or sending its body on

    async def upload() -> None:
        nonlocal client_error
        try:
            await relay_body(client, _Upstream(node), exchange.request_body, timeouts.body_idle)
        except _NodeStoppedReading as exc:
            # The node may have answered (and closed its side): let the response tell.
            log.debug("node %s stopped reading the request: %r", conn.address, exc.__cause__)
        except Exception as exc:
            client_error = exc
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        if not exchange.request_body.done:
            nursery.start_soon(upload)
        try:
            await _respond(
                client, exchange, conn, timeouts, received_before, result, upgrade_idle, on_response
            )
        except Exception as exc:
            node_error = exc
        # Whatever is left of the upload is not wanted now: the node has
        # answered in full without it, or failed.
        nursery.cancel_scope.cancel()

    if client_error is not None:
        # Part of the body may be at the node, the rest is not worth waiting for.
        exchange.fail(f"request body: {client_error!r}")
        return _after_failure(exchange, result, _client_error(client_error), "request body")
    if node_error is not None:
        return _after_failure(exchange, result, node_error, "response")
    if not exchange.request_body.done:
        # The rest of the body is still on the client connection, and the node
        # never read it: the exchange keeps neither connection.
        result.note = "answered before the request body ended"
    return result


async def _respond(
    client: BufferedStream,
    exchange: Exchange,
    conn: NodeConn,
    timeouts: Timeouts,
    received_before: int,
    result: ProxyResult,
    upgrade_idle: float | None = None,
    on_response: ResponseHook | None = None,
) -> None:
    """The node's response head, checked, then its body, relayed to the client."""
    node = conn.stream
    # The deadline is ours, not read_head's idle one: None from read_head must
    # mean EOF, because only a close (the pooled connection's idle race) may be
    # retried; a node that is merely slow may be working on the request.
    with trio.move_on_after(timeouts.response) as waited:
        try:
            raw = await node.read_head(timeout=timeouts.response, idle_timeout=math.inf)
        except _STREAM_ERRORS as exc:
            if node.bytes_in == received_before:
                raise _NodeClosedEarly() from exc
            raise BadGateway(f"node {conn.address}: {exc!r}") from None
        except HeadTimeout:
            raise BadGateway(f"node {conn.address}: response head timed out") from None
        except HeadError as exc:
            raise BadGateway(f"node {conn.address}: {exc.message}") from None
    if waited.cancelled_caught:
        raise BadGateway(f"node {conn.address}: no response in {timeouts.response}s")
    if raw is None:
        if node.bytes_in == received_before:
            raise _NodeClosedEarly()
        raise BadGateway(f"node {conn.address} closed inside its response head")
    try:
        # A 101 only for a request that asked to upgrade, with no body left to send.
        upgrade = upgrade_idle is not None and exchange.request_body.done
        response = parse_response_head(raw, upgrade=upgrade)
    except HeadError as exc:
        raise BadGateway(f"node {conn.address}: {exc.message}") from None
    if on_response is not None:
        response = on_response(response)
    if response.status == 101 and upgrade_idle is not None:
        result.status = 101
        await client.send_all(exchange.receive_upgrade(response))
        tunnelled = await tunnel(client, node, upgrade_idle)
        result.response_bytes = tunnelled.down
        result.note = f"tunnel up={tunnelled.up} ended: {tunnelled.ended}"
        return
    head = exchange.receive_response_head(response)
    framer = exchange.response_body
    assert framer is not None
    result.status = response.status
    await client.send_all(head)
    before = client.bytes_out
    try:
        await relay_body(node, client, framer, timeouts.response)
    finally:
        result.response_bytes = client.bytes_out - before


def _client_error(exc: BaseException) -> BaseException:
    """What a failure reading the request body is answered with."""
    if isinstance(exc, BodyError | EdgeError):
        return exc  # a malformed body: 400, with the framer's detail in the log
    if isinstance(exc, trio.TooSlowError):
        return BodyTimeout("client stalled in its request body")
    if isinstance(exc, _STREAM_ERRORS):
        return RequestBodyBroken(f"client connection broke in its request body: {exc!r}")
    return exc  # a bug: the front logs it


def _after_failure(
    exchange: Exchange, result: ProxyResult, exc: BaseException, where: str
) -> ProxyResult:
    """Raise `exc` for the front to answer, or, once the client has a response, end it."""
    if not exchange.response_started or not isinstance(exc, _ROUTINE):
        raise exc  # for the front to answer; or a bug, which it logs
    exchange.fail(f"{where} broke off: {exc!r}")
    result.note = f"aborted: {where}: {exc!r}"
    log.info("relay of a %d response broke off (%s): %r", result.status, where, exc)
    return result


class _Upstream:
    """The node as relay_body's sink: a failed send is told apart from the client's failures."""

    def __init__(self, node: BufferedStream) -> None:
        self._node = node

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._node.send_all(data)
        except _STREAM_ERRORS as exc:
            raise _NodeStoppedReading() from exc
