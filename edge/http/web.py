"""Requests for the web frontend, relayed to the upstream of the edge's region.

The relay is git's (edge/http/proxy.py `relay_request`): both bodies stream
through one exchange, one chunk in flight per direction. What is the web's
own: the head sent upstream (edge/proto/web_head.py), the repository hints
looked up in the routing cache (memory only: a web request never reads etcd
for a repository), error pages in the form the client asked for, and a total
timeout around the whole request. The relay's timeouts are idle ones (a
server-sent event stream is never buffered, and lives while it talks); the
total one is a cancel scope here, whose deadline a 101 moves to the tunnel's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import suppress

import trio

from edge.auth import http_user
from edge.config import WebConfig
from edge.errors import AuthRequired, EdgeError, NodeUnavailable, RoutingUnavailable
from edge.http.pool import NodeConn, NodePool
from edge.http.proxy import ClientInfo, ProxyResult, ResponseHook, Timeouts, relay_request
from edge.http.replay import ReplayRequested, asks_replay, buffer_body, strip, target_region
from edge.http.respond import Outcome, Reply
from edge.proto.http_head import ResponseHead
from edge.proto.web_head import (
    IDEMPOTENT,
    Header,
    ReplicaHint,
    RepoHint,
    error_page,
    is_upgrade,
    repo_of_path,
    upstream_head,
)
from edge.state import EdgeState
from edge.web_metrics import WebRequest
from gitproto.routes import split_target
from routing.cache import RoutingCache
from routing.replicas import IN_SYNC


class WebUnavailable(EdgeError):
    """The frontend could not be reached (refused, or no connection in time)."""

    http_status = 503
    public_message = "the web frontend is unavailable, try again later"
    headers = ((b"retry-after", b"5"),)


class WebBadGateway(EdgeError):
    """The frontend was reached but gave no usable response in time."""

    http_status = 502
    public_message = "bad response from the web frontend"


def repo_hint(cache: RoutingCache, path: str) -> RepoHint | None:
    """Where the repository a path is under lives, if the cache knows it."""
    name = repo_of_path(path)
    record = cache.repos.get(name) if name is not None else None
    if record is None:
        return None
    volume = cache.volumes.get(record.volume_id)
    node = cache.nodes.get(volume.node_id) if volume is not None else None
    replicas: tuple[ReplicaHint, ...] = ()
    if record.replicated:
        replicas = tuple(
            ReplicaHint(status.volume_id, status.node.node_id, status.region)
            for status in cache.replica_statuses(record)
            if status.state == IN_SYNC and status.node is not None and status.region is not None
        )
    return RepoHint(
        record.name.path,
        record.region,
        record.volume_id,
        node.node_id if node is not None else None,
        replicas,
    )


async def _web_user(cache: RoutingCache, authorization: bytes | None) -> str | None:
    """The edge user whose credentials the request carries; None for none, or for
    credentials that are not the edge's (the frontend may have its own scheme)."""
    with suppress(AuthRequired, RoutingUnavailable):
        return await http_user(cache, authorization)
    return None


async def proxy_web(state: EdgeState, pool: NodePool, reply: Reply, info: ClientInfo) -> Outcome:
    """Relay one request to this edge's region's frontend; errors answered here.
    Counted as it ends (edge/web_metrics.py `WebOps`), its bytes as git's are (front.py)."""
    web = state.config.web
    assert web is not None
    client = reply.client
    read_before = client.bytes_in - len(client.pending)
    sent_before = client.bytes_out
    request = WebRequest(str(state.config.region), web.upstream_for(state.config.region))
    with state.web_ops.track(request):
        try:
            outcome = await _bounded(state, web, pool, reply, info, request)
        finally:
            # What the client got, if anything (an error the front answers sets its own).
            request.status = reply.exchange.status
            request.bytes_in = client.bytes_in - len(client.pending) - read_before
            request.bytes_out = client.bytes_out - sent_before
    return outcome


async def _bounded(
    state: EdgeState,
    web: WebConfig,
    pool: NodePool,
    reply: Reply,
    info: ClientInfo,
    request: WebRequest,
) -> Outcome:
    """`_proxy` within the total timeouts: `total_timeout` from the request head,
    and from a 101 on, `upgrade_total_timeout` instead. The idle ones
    (`response_timeout`, `upgrade_idle_timeout`) are the relay's."""
    exchange = reply.exchange
    with trio.move_on_after(web.total_timeout or math.inf) as total:

        def upgraded() -> None:
            # Called with the 101 head, before the tunnel starts: it gets its own total.
            total.deadline = trio.current_time() + (web.upgrade_total_timeout or math.inf)
            state.web_ops.tunnel_opened(request)

        return await _proxy(state, web, pool, reply, info, request, upgraded)
    request.total_timeout = True
    if request.tunnelled:
        detail = f"upgrade_total_timeout ({web.upgrade_total_timeout}s)"
    else:
        detail = f"total_timeout ({web.total_timeout}s)"
    if exchange.response_started:
        # Mid-response or mid-tunnel: the cut-off ends both connections (the relay
        # closed the upstream's as it was cancelled).
        exchange.fail(detail)
        return Outcome(exchange.status, f"web={request.upstream} ended at {detail}")
    request.upstream_failed = True
    accept = exchange.head.header(b"accept")
    return await _error(reply, WebBadGateway, f"no response within {detail}", accept)


async def _proxy(
    state: EdgeState,
    web: WebConfig,
    pool: NodePool,
    reply: Reply,
    info: ClientInfo,
    request: WebRequest,
    upgraded: Callable[[], None],
) -> Outcome:
    exchange = reply.exchange
    head = exchange.head
    accept = head.header(b"accept")
    if head.http_version != b"1.1":
        # Bodies are relayed with their HTTP/1.1 framing, as for git (front.py).
        return await _error(reply, 505, "HTTP/1.1 required", accept)
    path, _ = split_target(head.target)
    added: list[Header] = []
    if (hint := repo_hint(state.cache, path)) is not None:
        added += hint.headers()
    user = await _web_user(state.cache, head.header(b"authorization"))
    if user is not None:
        added.append((b"x-gitedge-user", user.encode()))
    if web.secret:
        added.append((b"x-gitedge-secret", web.secret.encode()))

    def build(conn: NodeConn) -> bytes:
        return upstream_head(
            head,
            peer_ip=info.peer_ip,
            scheme=info.scheme,
            trusted_proxy=info.trusted_proxy,
            added=added,
        )

    timeouts = Timeouts(response=web.response_timeout, body_idle=state.config.body_idle_timeout)
    upgrade = is_upgrade(head)

    def watch(hook: ResponseHook) -> ResponseHook:
        def seen(response: ResponseHead) -> ResponseHead:
            response = hook(response)
            if upgrade and response.status == 101:
                upgraded()
            return response

        return seen

    async def send(upstream: str, first: bytes, replayed: bool) -> ProxyResult:
        return await relay_request(
            reply.client,
            exchange,
            build,
            pool,
            timeouts,
            upstream_url=upstream,
            may_retry=head.method in IDEMPOTENT,
            upgrade_idle=web.upgrade_idle_timeout if upgrade else None,
            first=first,
            on_response=watch(strip if replayed else asks_replay),
        )

    upstream = request.upstream
    note = ""
    try:
        buffered = await buffer_body(
            reply.client, exchange, web.replay_max_body, timeouts.body_idle
        )
        try:
            result = await send(upstream, buffered.body, replayed=False)
        except ReplayRequested as asked:
            value = asked.value.decode("latin-1")
            if not buffered.complete:
                request.replay = "too_large"
                exchange.fail("replay asked for a body over replay_max_body")
                detail = f"replay ({value}) of a body over {web.replay_max_body} bytes"
                return await _error(reply, 413, "request body too large to replay", accept, detail)
            known = {str(region) for region, _ in web.regions} | {state.config.region}
            region = target_region(asked.value, state.cache, known)
            if region is None:
                request.replay = "unknown_place"
                detail = f"replay to an unknown place: {value!r}"
                return await _error(reply, 502, "replay to an unknown region", accept, detail)
            request.replay = "replayed"
            note = f"replayed from={upstream} ({value}) "
            upstream = request.upstream = web.upstream_for(region)
            request.region = region
            result = await send(upstream, buffered.body, replayed=True)
    except NodeUnavailable as exc:
        request.upstream_failed = True
        return await _error(reply, WebUnavailable, exc.detail, accept)
    except EdgeError as exc:
        if exc.http_status != 502:
            raise  # the client's own doing (a broken body): the front answers it
        request.upstream_failed = True
        return await _error(reply, WebBadGateway, exc.detail, accept)
    note += f"web={upstream} bytes={result.response_bytes}"
    return Outcome(result.status, f"{note} {result.note}" if result.note else note)


async def _error(
    reply: Reply,
    error: type[EdgeError] | int,
    detail: str,
    accept: bytes | None,
    note: str | None = None,
) -> Outcome:
    if isinstance(error, int):
        status, message, extra = error, detail, []
    else:
        status, message, extra = error.http_status, error.public_message, list(error.headers)
    content_type, body = error_page(status, message, accept)
    return await reply.send(status, body, content_type, extra=extra, note=note or detail)
