"""Relaying one smart-HTTP request to the repository's node and back.

Both bodies are copied verbatim, framing included (proto/body.py), one chunk
in flight per direction. The request body goes up in its own task while the
response comes down, because a node may answer before it has read everything
(an error, or receive-pack refusing a push).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from edge.errors import BadGateway, EdgeError, NodeUnavailable
from edge.http.pool import NodeConn, NodePool
from edge.http.stream import BufferedStream, HeadTimeout, relay_body
from edge.proto.body import BodyError
from edge.proto.http_head import HeadError, RequestHead, parse_response_head
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
# Hop-by-hop response headers (RFC 9110 7.6.1) are this connection's business.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"}
)


@dataclass(frozen=True)
class ClientInfo:
    peer_ip: str
    scheme: str
    trusted_proxy: bool


@dataclass
class Timeouts:
    response: float
    body_idle: float


class _NodeClosedEarly(Exception):
    """The node closed or reset before any byte of a response."""


@dataclass
class ProxyResult:
    status: int = 0
    keep_alive: bool = False
    node_reusable: bool = False
    response_bytes: int = 0


def node_target(route: InfoRefs | Rpc) -> bytes:
    """The canonical path on the node: only what the edge validated gets through."""
    if isinstance(route, InfoRefs):
        return f"/{route.repo.bare_dir}/info/refs?service={route.service}".encode()
    return f"/{route.repo.bare_dir}/{route.service}".encode()


def build_node_request(
    head: RequestHead, route: InfoRefs | Rpc, conn: NodeConn, client: ClientInfo
) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (head.method, node_target(route)), b"host: " + conn.host_header]
    if conn.auth_line:
        lines.append(conn.auth_line)
    forwarded_for = client.peer_ip.encode()
    for name, value in head.headers:
        if name in _FORWARD:
            lines.append(name + b": " + value)
        elif name == b"x-forwarded-for" and client.trusted_proxy:
            forwarded_for = value + b", " + forwarded_for
    host = head.header(b"host") or b""
    lines += [
        b"x-forwarded-for: " + forwarded_for,
        b"x-forwarded-proto: " + client.scheme.encode(),
        b"x-forwarded-host: " + host,
        b"",
        b"",
    ]
    return b"\r\n".join(lines)


def build_client_response_head(
    status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool
) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, reason or b"-")]
    lines += [name + b": " + value for name, value in headers if name not in _HOP_BY_HOP]
    if not keep_alive:
        lines.append(b"connection: close")
    lines += [b"", b""]
    return b"\r\n".join(lines)


def _body_in_hand(head: RequestHead, pending: bytes) -> int | None:
    """The body's length if all of it was read with the head, else None."""
    framer = head.new_body_framer()
    used = framer.feed(pending) if not framer.done else 0
    return used if framer.done else None


async def proxy_git(
    client: BufferedStream,
    head: RequestHead,
    route: InfoRefs | Rpc,
    location: RepoLocation,
    info: ClientInfo,
    pool: NodePool,
    timeouts: Timeouts,
) -> ProxyResult:
    """Relay one request. Raises EdgeError only while nothing was sent to the client."""
    if head.header(b"expect") == b"100-continue":
        # We will read the body, so say so now; the node is not asked (RFC 9110 10.1.1).
        await client.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
    # A request whose body is already in hand (GETs, most negotiation POSTs)
    # goes up in one write and can be replayed; a large one streams.
    body_len = _body_in_hand(head, client.pending)
    body = client.take(body_len) if body_len is not None else None
    for attempt in range(2):
        conn = await pool.acquire(location.node_url, fresh=attempt > 0, node_id=location.node_id)
        try:
            result = await _exchange(client, head, route, conn, info, timeouts, body)
        except _NodeClosedEarly:
            await conn.stream.aclose()
            if conn.reused and body is not None and attempt == 0:
                # The pooled connection raced the node's idle close; nothing
                # of the request was lost, so send it again on a fresh one.
                log.info("node %s closed a pooled connection; retrying", location.node_id)
                continue
            raise NodeUnavailable(f"node {location.node_id} closed the connection") from None
        except BaseException:
            await conn.stream.aclose()
            raise
        if not (result.node_reusable and pool.release(conn)):
            await conn.stream.aclose()
        return result
    raise AssertionError("unreachable")


async def _exchange(
    client: BufferedStream,
    head: RequestHead,
    route: InfoRefs | Rpc,
    conn: NodeConn,
    info: ClientInfo,
    timeouts: Timeouts,
    body: bytes | None,
) -> ProxyResult:
    node = conn.stream
    request_framer = head.new_body_framer()
    result = ProxyResult()
    upload_error: list[BaseException] = []
    request = build_node_request(head, route, conn, info)
    received_before = node.bytes_in
    if body is not None:
        request += body
        request_framer.feed(body)
    try:
        await node.send_all(request)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        if conn.reused:
            raise _NodeClosedEarly() from exc
        raise NodeUnavailable(f"send to node {conn.address}: {exc!r}") from None

    async def upload() -> None:
        try:
            await relay_body(client, node, request_framer, timeouts.body_idle)
        except (
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            BodyError,
            trio.TooSlowError,
        ) as exc:
            upload_error.append(exc)
            nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        if not request_framer.done:
            nursery.start_soon(upload)
        try:
            raw = await node.read_head(timeout=timeouts.response, idle_timeout=timeouts.response)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            if conn.reused and node.bytes_in == received_before:
                raise _NodeClosedEarly() from exc
            raise BadGateway(f"node {conn.address}: {exc!r}") from None
        except HeadTimeout:
            raise BadGateway(f"node {conn.address}: response head timed out") from None
        except HeadError as exc:
            raise BadGateway(f"node {conn.address}: {exc.message}") from None
        if raw is None:
            if upload_error:
                raise _client_gone(upload_error[0])
            if conn.reused and node.bytes_in == received_before:
                raise _NodeClosedEarly()
            raise BadGateway(f"node {conn.address} closed without a response")
        try:
            response, framer = parse_response_head(raw, head.method)
        except HeadError as exc:
            raise BadGateway(exc.message) from None
        result.status = response.status
        keep_alive = head.keep_alive and not framer.close_delimited
        await client.send_all(
            build_client_response_head(
                response.status, response.reason, response.headers, keep_alive
            )
        )
        before = client.bytes_out
        # From here on the client has a response started: failures abort the connection.
        await relay_body(node, client, framer, timeouts.response)
        result.response_bytes = client.bytes_out - before
        upload_finished = request_framer.done
        if not upload_finished:
            # The node answered without reading the whole request: the rest of
            # it is still on the client connection, which cannot be reused.
            nursery.cancel_scope.cancel()
        result.keep_alive = keep_alive and upload_finished
        result.node_reusable = (
            response.keep_alive and upload_finished and not framer.close_delimited
        )
    if upload_error and not result.status:
        raise _client_gone(upload_error[0])
    return result


class ClientGone(EdgeError):
    """The client stalled or broke its request body; nobody is left to answer."""

    http_status = 408
    public_message = "request body timed out or was malformed"


def _client_gone(exc: BaseException) -> ClientGone:
    return ClientGone(f"request body: {exc!r}")
