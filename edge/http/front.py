"""The HTTP(S) front: one task per client connection, requests in turn.

Heads are cut and checked here (proto/http_head), routed (proto/http_route),
and git requests handed to proxy.py; everything else is answered here.
"""

from __future__ import annotations

import logging
from contextlib import suppress

import trio

from edge.api.handlers import handle_api
from edge.auth import authorize, http_user, routing_errors
from edge.errors import EdgeError
from edge.http.proxy import ClientInfo, Timeouts, proxy_git
from edge.http.respond import Outcome, send_json, send_text
from edge.http.stream import BufferedStream, HeadTimeout
from edge.proto.body import BodyError
from edge.proto.http_head import HeadError, RequestHead, parse_request_head
from edge.proto.http_route import (
    AddKey,
    CreateRepo,
    CreateToken,
    CreateUser,
    GetRepo,
    ListCredentials,
    RevokeCredential,
    Stats,
    Unrouted,
    parse_route,
)
from edge.state import EdgeState
from gitproto.routes import Health, InfoRefs, RouteError, Rpc

log = logging.getLogger("edge.access")

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
    client = BufferedStream(stream)
    info = ClientInfo(peer_ip, scheme, cfg.is_trusted_proxy(peer_ip))
    idle = cfg.header_timeout
    try:
        while True:
            try:
                raw = await client.read_head(cfg.header_timeout, idle_timeout=idle)
            except HeadTimeout:
                await send_text(client, 408, "request header timed out", close=True)
                return
            except HeadError as exc:
                await send_text(client, exc.http_status, exc.message, close=True)
                return
            if raw is None:
                return
            idle = cfg.keepalive_timeout
            started = trio.current_time()
            with state.requests.track():
                outcome = await handle_request(state, client, raw, info)
            log.info(
                "%s %s %d %.3fs %s",
                peer_ip,
                raw.split(b"\r\n", 1)[0][:200].decode("ascii", "replace"),
                outcome.status,
                trio.current_time() - started,
                outcome.note,
            )
            if not outcome.keep_alive:
                return
    except _STREAM_ERRORS as exc:
        log.debug("connection from %s ended: %r", peer_ip, exc)
    except Exception:
        # A bug must cost one connection, never the edge: log it, answer if we can.
        log.exception("internal error serving %s", peer_ip)
        with trio.move_on_after(1), suppress(*_STREAM_ERRORS):
            await send_text(client, 500, "internal error", close=True)
    finally:
        await client.aclose()


async def handle_request(
    state: EdgeState, client: BufferedStream, raw: bytes, info: ClientInfo
) -> Outcome:
    try:
        head = parse_request_head(raw)
    except HeadError as exc:
        await send_text(client, exc.http_status, exc.message, close=True)
        return Outcome(exc.http_status, False)
    # A body we do not read poisons the connection: answer, then close.
    no_body = head.new_body_framer().done
    keep = head.keep_alive and no_body
    try:
        route = parse_route(head.method, head.target)
    except RouteError as exc:
        extra = [(b"allow", exc.allow.encode())] if exc.allow else None
        await send_text(client, exc.http_status, exc.message, close=not keep, extra=extra)
        return Outcome(exc.http_status, keep)
    try:
        match route:
            case InfoRefs() | Rpc():
                return await _git(state, client, head, route, info)
            case Health(ready=False):
                await send_text(client, 200, "ok", close=not keep)
                return Outcome(200, keep)
            case Health(ready=True):
                ready = state.cache.synced
                await send_json(
                    client,
                    200 if ready else 503,
                    {"ready": ready, "cache_revision": state.cache.revision},
                    close=not keep,
                )
                return Outcome(200 if ready else 503, keep)
            case (
                CreateRepo()
                | GetRepo()
                | CreateUser()
                | CreateToken()
                | AddKey()
                | ListCredentials()
                | RevokeCredential()
            ):
                return await handle_api(state, client, raw, head, route, info)
            case Stats() if info.trusted_proxy:
                await send_json(client, 200, state.stats(), close=not keep)
                return Outcome(200, keep)
            case Unrouted() | Stats():
                await send_text(client, 404, "not found", close=not keep)
                return Outcome(404, keep)
    except EdgeError as exc:
        await send_text(
            client, exc.http_status, exc.public_message, close=not keep, extra=list(exc.headers)
        )
        return Outcome(exc.http_status, keep, exc.detail)
    raise AssertionError(f"unhandled route {route!r}")


async def _git(
    state: EdgeState,
    client: BufferedStream,
    head: RequestHead,
    route: InfoRefs | Rpc,
    info: ClientInfo,
) -> Outcome:
    if head.http_version != b"1.1":
        # Bodies are relayed with their HTTP/1.1 framing (chunked) as they are.
        await send_text(client, 505, "HTTP/1.1 required", close=True)
        return Outcome(505, False)
    user = await http_user(state.cache, head.header(b"authorization"))
    await authorize(state.cache, route.repo, user, write=route.service.writes, anonymous_401=True)
    with routing_errors():
        location = await state.cache.resolve(route.repo)
    cfg = state.config
    result = await proxy_git(
        client,
        head,
        route,
        location,
        info,
        state.pool,
        Timeouts(response=cfg.node_response_timeout, body_idle=cfg.body_idle_timeout),
    )
    return Outcome(
        result.status, result.keep_alive, f"node={location.node_id} bytes={result.response_bytes}"
    )
