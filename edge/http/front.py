"""The HTTP(S) front: one task per client connection, requests in turn.

Heads are cut here and each becomes an `Exchange` (proto/exchange), routed
(proto/http_route); git requests go to proxy.py, everything else is answered
here through the exchange's `Reply`. Whether the connection carries another
request is the exchange's answer alone.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from contextlib import suppress

import trio

from edge.api.handlers import handle_api
from edge.api.operator import handle_operator
from edge.api.repo_ops import handle_repo_op
from edge.auth import authorize, counting_failed_auth, http_user, is_admin, routing_errors
from edge.errors import AuthRequired, EdgeError
from edge.http.proxy import ClientInfo, Timeouts, proxy_git
from edge.http.respond import Outcome, Reply
from edge.http.stream import BufferedStream, HeadTimeout
from edge.http.web import proxy_web
from edge.metrics import FAILED, OK, GitOp, protocol_version
from edge.proto.admin_route import DrainNode, Inventory
from edge.proto.body import BodyError
from edge.proto.exchange import Exchange, refusal
from edge.proto.http_head import HeadError
from edge.proto.http_route import (
    AddKey,
    CreateRepo,
    CreateToken,
    CreateUser,
    GetRepo,
    ListCredentials,
    RepoOp,
    RevokeCredential,
    Route,
    Stats,
    Unrouted,
    is_api_write,
    parse_route,
)
from edge.proto.pace import BodyRate
from edge.state import EdgeState
from gitproto.routes import Health, InfoRefs, RouteError, Rpc
from plumbing.drain import Drain
from plumbing.logsafe import printable

log = logging.getLogger("edge.access")

_CONTROL_BYTE = re.compile(rb"[\x00-\x1f\x7f]")
# Notes are the edge's own words, but may quote a repository or user name.
NOTE_LIMIT = 300

_STREAM_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    BodyError,
    OSError,
)


async def serve_connection(
    state: EdgeState, stream: trio.abc.Stream, peer_ip: str, scheme: str
) -> None:
    cfg = state.config
    client = BufferedStream(
        stream,
        write_timeout=cfg.per_write_timeout,
        body_rate=BodyRate(cfg.body_min_rate, cfg.body_rate_grace),
    )
    info = ClientInfo(peer_ip, scheme, cfg.is_trusted_proxy(peer_ip))
    idle = cfg.header_timeout
    exchange: Exchange | None = None
    try:
        while True:
            exchange = None
            try:
                raw = await _next_head(client, cfg.header_timeout, idle, state.drain)
            except HeadTimeout:
                log.info("%s - 408 request header timed out", peer_ip)
                await client.send_all(refusal(408, "request header timed out"))
                return
            except HeadError as exc:
                # The head is not kept: nothing of a refused head is logged.
                log.info("%s - %d %s", peer_ip, exc.http_status, exc.message)
                await client.send_all(refusal(exc.http_status, exc.message))
                return
            if raw is None:
                return
            idle = cfg.keepalive_timeout
            started = trio.current_time()
            with state.requests.track():
                try:
                    exchange = Exchange(raw)
                except HeadError as exc:
                    await client.send_all(refusal(exc.http_status, exc.message))
                    outcome = Outcome(exc.http_status, exc.message)
                else:
                    # A drain that begins meanwhile: this answer closes the connection.
                    with state.drain.busy(exchange.close_after):
                        outcome = await handle_request(state, client, exchange, info)
            log.info(
                "%s %s %d %.3fs %s",
                peer_ip,
                request_line(raw, exchange),
                outcome.status,
                trio.current_time() - started,
                printable(outcome.note, NOTE_LIMIT),
            )
            if exchange is None or not exchange.client_reusable:
                return
    except _STREAM_ERRORS as exc:
        log.debug("connection from %s ended: %r", peer_ip, exc)
    except Exception:
        # A bug must cost one connection, never the edge: log it, answer if we can.
        log.exception("internal error serving %s", peer_ip)
        if exchange is None or not exchange.response_started:
            with trio.move_on_after(1), suppress(*_STREAM_ERRORS):
                await client.send_all(refusal(500, "internal error"))
    finally:
        await client.aclose()


async def _next_head(
    client: BufferedStream, header_timeout: float, idle_timeout: float, drain: Drain
) -> bytes | None:
    """The next request head; None on EOF, on the idle timeout, or when a drain
    begins before its first byte (an idle keep-alive connection closes at once).

    Once a byte has come the drain waits for the request: it is served, and
    its answer says `connection: close`.
    """
    if not client.pending:
        with trio.move_on_after(idle_timeout), drain.idle():
            first = await client.receive()
            if first:
                client.unread(first)
        if not client.pending:
            return None
    return await client.read_head(header_timeout)


def request_line(raw: bytes, exchange: Exchange | None) -> str:
    """The request line as the access log shows it: escaped, redacted, capped.

    From the parsed head when there is one. A head h11 refused is logged only up
    to its first control character: a line end hidden in it (bare CR, VT, NUL)
    would otherwise bring the headers behind it, `Authorization` among them,
    into the log.
    """
    if exchange is not None:
        head = exchange.head
        return (
            f"{printable(head.method, 16)} {printable(head.target)}"
            f" HTTP/{printable(head.http_version, 8)}"
        )
    control = _CONTROL_BYTE.search(raw)
    end = control.start() if control else len(raw)
    line = printable(raw[:end])
    if control and raw[end : end + 2] != b"\r\n":
        line += f" [cut at {printable(control.group())}]"
    return line


async def handle_request(
    state: EdgeState, client: BufferedStream, exchange: Exchange, info: ClientInfo
) -> Outcome:
    """Answer one request, or relay it; every error becomes its wire form here."""
    reply = Reply(client, exchange, state.config.header_timeout)
    head = exchange.head
    try:
        route = parse_route(head.method, head.target)
    except RouteError as exc:
        extra = [(b"allow", exc.allow.encode())] if exc.allow else None
        return await reply.text(exc.http_status, exc.message, extra=extra)
    try:
        with counting_failed_auth(state.limits, info.peer_ip, head.header(b"authorization")):
            return await _dispatch(state, reply, route, info)
    except EdgeError as exc:
        return await reply.text(
            exc.http_status, exc.public_message, extra=list(exc.headers), note=exc.detail
        )
    except BodyError as exc:
        # A malformed or oversized request body: the client's own doing (4xx).
        return await reply.text(exc.http_status, exc.public_message, note=exc.detail)


async def _dispatch(state: EdgeState, reply: Reply, route: Route, info: ClientInfo) -> Outcome:
    if is_api_write(route):
        await _charge_api_write(state, reply, info)
    match route:
        case InfoRefs() | Rpc():
            return await _git(state, reply, route, info)
        case Health(ready=False):
            return await reply.text(200, "ok")
        case Health(ready=True):
            ready = state.cache.synced
            return await reply.json(
                200 if ready else 503, {"ready": ready, "cache_revision": state.cache.revision}
            )
        case (
            CreateRepo()
            | GetRepo()
            | CreateUser()
            | CreateToken()
            | AddKey()
            | ListCredentials()
            | RevokeCredential()
        ):
            return await handle_api(state, reply, route, info)
        case RepoOp():
            return await handle_repo_op(state, reply, route)
        case Inventory() | DrainNode():
            return await handle_operator(state, reply, route)
        case Stats() if info.trusted_proxy:
            return await reply.json(200, state.stats())
        case Unrouted(web=True) if state.web_pool is not None:
            return await proxy_web(state, state.web_pool, reply, info)
        case Unrouted() | Stats():
            return await reply.text(404, "not found")
    raise AssertionError(f"unhandled route {route!r}")


async def _charge_api_write(state: EdgeState, reply: Reply, info: ClientInfo) -> None:
    """An API write takes a token of its user's and its address's buckets (429 when out);
    the admin token's writes take none.

    Charged to the user only once their credentials check out: nobody can spend
    someone else's budget by naming them.
    """
    authorization = reply.exchange.head.header(b"authorization")
    if is_admin(authorization, state.config.admin_token):
        return  # the operator's provisioning is not rate-limited
    user = None
    # Bad credentials: charged to the address; the handler answers them its own way.
    with suppress(AuthRequired):
        user = await http_user(state.cache, authorization)
    state.limits.check_api_write(user, info.peer_ip)


async def _git(state: EdgeState, reply: Reply, route: InfoRefs | Rpc, info: ClientInfo) -> Outcome:
    head = reply.exchange.head
    if head.http_version != b"1.1":
        # Bodies are relayed with their HTTP/1.1 framing (chunked) as they are;
        # an HTTP/1.0 connection is not persistent, so this answer closes it.
        return await reply.text(505, "HTTP/1.1 required")
    client = reply.client
    # Bytes of this request from the client: read from the socket now, less what
    # stays read ahead for the next request (the head itself is not counted).
    read_before = client.bytes_in - len(client.pending)
    sent_before = client.bytes_out
    op = GitOp(
        info.scheme,
        str(route.service),
        info.peer_ip,
        repo=route.repo.path,
        protocol=protocol_version(head.header(b"git-protocol")),
    )
    with state.git_ops.track(op):
        try:
            outcome = await _relay_git(state, reply, route, info, op)
        finally:
            op.bytes_in = client.bytes_in - len(client.pending) - read_before
            op.bytes_out = client.bytes_out - sent_before
    return outcome


async def _relay_git(
    state: EdgeState, reply: Reply, route: InfoRefs | Rpc, info: ClientInfo, op: GitOp
) -> Outcome:
    head = reply.exchange.head
    user = op.user = await http_user(state.cache, head.header(b"authorization"))
    state.limits.check_git_rate(user, info.peer_ip)
    await authorize(state.cache, route.repo, user, write=route.service.writes, anonymous_401=True)
    with routing_errors():
        # Reads and pushes of a replicated repository go to the in-sync replica
        # nearest this edge (any in-sync replica can be a push's primary).
        location = await state.cache.resolve_read(
            route.repo,
            state.config.region,
            wait=state.config.replica_read_wait,
            push=route.service.writes,
        )
    op.region, op.node = location.region, location.node_id
    cfg = state.config
    # Admitted before the node is asked: a refusal (429) leaves no git behind.
    async with state.limits.git_operation(
        user=user, client_ip=info.peer_ip, repo=route.repo.path, node_id=location.node_id
    ):
        result = await proxy_git(
            reply.client,
            reply.exchange,
            route,
            location,
            dataclasses.replace(info, user=user),
            state.pool,
            Timeouts(response=cfg.node_response_timeout, body_idle=cfg.body_idle_timeout),
        )
    op.status = str(result.status)
    op.result = OK if result.status < 400 and not result.note else FAILED
    note = f"node={location.node_id} bytes={result.response_bytes}"
    return Outcome(result.status, f"{note} {result.note}" if result.note else note)
