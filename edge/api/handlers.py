"""The edge's JSON API: repositories (create, locate), users, tokens and SSH keys."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from edge.api.accounts import (
    add_key,
    create_token,
    create_user,
    list_credentials,
    require_user,
    revoke_credential,
)
from edge.auth import authorize, check_namespace, http_user, is_admin
from edge.errors import (
    AuthRequired,
    BadRequest,
    Forbidden,
    NoCapacity,
    RepoExists,
    RepoNotFound,
    RoutingUnavailable,
)
from edge.http.proxy import ClientInfo
from edge.http.respond import Outcome, Reply
from edge.http.stream import BodyTimeout, collect_body
from edge.proto.http_route import (
    AddKey,
    CreateRepo,
    CreateToken,
    CreateUser,
    GetRepo,
    ListCredentials,
    RevokeCredential,
)
from edge.state import EdgeState
from routing.errors import AlreadyExists, NotFound, StoreUnavailable
from routing.model import (
    InvalidRegion,
    InvalidRepoName,
    Region,
    RepoName,
    RepoRecord,
    parse_region,
    parse_user_name,
)
from routing.placement import PlacementError
from routing.writes import NewRepo, create_repo

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024


async def read_json_body(reply: Reply, timeout: float) -> Any:
    """The request's JSON body, decoded (chunked or not); BadRequest otherwise."""
    exchange = reply.exchange
    if (go_ahead := exchange.continue_head()) is not None:
        await reply.client.send_all(go_ahead)
    try:
        framed = await collect_body(
            reply.client, exchange.request_body, MAX_JSON_BODY + 4096, timeout
        )
    except BodyTimeout:
        exchange.fail("request body timed out")  # answer at once, without a drain
        raise
    try:
        return json.loads(exchange.decoded_request_body(framed))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("request body must be JSON") from None


MAX_REPLICAS = 9
# Flipped on by the commit that makes replicated pushes work end to end: until
# then a factor > 1 is refused rather than half-served.
REPLICATION_AVAILABLE = True


@dataclass(frozen=True)
class CreateRequest:
    name: RepoName
    public: bool
    readers: tuple[str, ...]
    writers: tuple[str, ...]
    replicas: int | None = None
    sync_replicas: int | None = None
    replica_regions: tuple[Region, ...] = ()


def _opt_count(payload: dict[str, Any], field: str) -> int | None:
    value = payload.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REPLICAS:
        raise BadRequest(f"{field} must be a whole number from 1 to {MAX_REPLICAS}")
    return value


def parse_create_request(payload: Any) -> CreateRequest:
    """`{"name": "owner/name", "public": false, "readers": [...], "writers": [...],
    "replicas": N, "sync_replicas": W, "replica_regions": ["lax"]}` (the last three
    optional; replica_regions: where the replicas after the home go, in order)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        raise BadRequest('expected JSON {"name": "owner/name"}')
    try:
        name = RepoName.parse(payload["name"])
    except InvalidRepoName as exc:
        raise BadRequest(f"bad repository name: {exc}") from None
    public = payload.get("public", False)
    if not isinstance(public, bool):
        raise BadRequest("public must be true or false")
    lists: list[tuple[str, ...]] = []
    for field in ("readers", "writers"):
        users = payload.get(field, [])
        if not isinstance(users, list) or len(users) > 1000:
            raise BadRequest(f"{field} must be a list of user names")
        try:
            lists.append(tuple(parse_user_name(u) for u in users))
        except InvalidRepoName as exc:
            raise BadRequest(f"{field}: {exc}") from None
    replicas = _opt_count(payload, "replicas")
    sync_replicas = _opt_count(payload, "sync_replicas")
    if sync_replicas is not None and sync_replicas > (replicas or 1):
        raise BadRequest("sync_replicas cannot exceed replicas")
    regions = payload.get("replica_regions", [])
    if not isinstance(regions, list) or not all(isinstance(r, str) for r in regions):
        raise BadRequest("replica_regions must be a list of region names")
    if len(regions) >= (replicas or 1):
        raise BadRequest("replica_regions names the replicas after the home: fewer than replicas")
    try:
        wanted = tuple(parse_region(r) for r in regions)
    except InvalidRegion as exc:
        raise BadRequest(f"replica_regions: {exc}") from None
    return CreateRequest(name, public, lists[0], lists[1], replicas, sync_replicas, wanted)


def replication_factor(request: CreateRequest, default: int) -> int:
    factor = request.replicas or default
    if factor > 1 and not REPLICATION_AVAILABLE:
        raise BadRequest(
            "replicated repositories (replicas > 1) are not available yet on this network"
        )
    return factor


def client_region(header_value: bytes | None, trusted: bool, own_region: Region) -> Region:
    """The region header counts only from a trusted proxy; else the edge's own region."""
    if header_value is None or not trusted:
        return own_region
    try:
        return parse_region(header_value.decode("ascii", "replace").strip())
    except InvalidRegion as exc:
        raise BadRequest(str(exc)) from None


@contextmanager
def create_errors() -> Iterator[None]:
    """routing.writes.create_repo's outcomes in their wire form."""
    try:
        yield
    except PlacementError as exc:
        raise NoCapacity(str(exc)) from None
    except AlreadyExists as exc:
        raise RepoExists(str(exc)) from None
    except StoreUnavailable as exc:
        raise RoutingUnavailable(str(exc)) from None


ApiRoute = (
    CreateRepo | GetRepo | CreateUser | CreateToken | AddKey | ListCredentials | RevokeCredential
)


async def handle_api(state: EdgeState, reply: Reply, route: ApiRoute, info: ClientInfo) -> Outcome:
    """The JSON API. Every answer is JSON; errors propagate as EdgeError."""
    cfg = state.config
    head = reply.exchange.head
    authorization = head.header(b"authorization")
    admin = is_admin(authorization, cfg.admin_token)
    match route:
        case GetRepo(repo=name):
            user = None if admin else await http_user(state.cache, authorization)
            record = await readable_record(state, name, user, admin)
            volume = state.cache.volumes.get(record.volume_id)
            body: dict[str, Any] = {
                "repo": name.path,
                "region": record.region,
                "volume": record.volume_id,
                "node": volume.node_id if volume else None,
                "node_live": bool(volume and volume.node_id in state.cache.nodes),
                "owner": record.owner_user,
                "public": record.public,
            }
            if record.replicated:
                body["sync_replicas"] = record.sync_replicas
                body["generation"] = state.cache.consensus_generation(name)
                body["replicas"] = [s.to_json() for s in state.cache.replica_statuses(record)]
            return await reply.json(200, body)
        case CreateRepo():
            user = None if admin else await http_user(state.cache, authorization)
            request = parse_create_request(await read_json_body(reply, cfg.header_timeout))
            owner = check_namespace(request.name, user, admin)
            region = client_region(
                head.header(cfg.region_header.lower().encode()), info.trusted_proxy, cfg.region
            )
            new = NewRepo(
                request.name,
                owner,
                request.public,
                request.readers,
                request.writers,
                replicas=replication_factor(request, cfg.default_replicas),
                sync_replicas=request.sync_replicas,
                replica_regions=request.replica_regions,
            )
            with create_errors():
                location = await create_repo(
                    state.etcd,
                    state.cache,
                    new,
                    region,
                    cfg.fallback_region,
                    state.node_admin.init_repo,
                    init_replica=state.node_admin.init_replica,
                    drop_replica=state.node_admin.drop_replica,
                )
            return await reply.json(201, location.to_json(), f"node={location.node_id}")
        case CreateUser():
            _require_admin(admin)
            payload = await read_json_body(reply, cfg.header_timeout)
            created = await create_user(state.etcd, state.cache, payload)
            return await reply.json(201, {"name": created.name})
        case CreateToken(user=name):
            _require_admin(admin)
            token = await create_token(state.etcd, state.cache, name)
            return await reply.json(201, {"user": name, "token": token})
        case AddKey():
            user = await http_user(state.cache, authorization)
            if user is None:
                raise AuthRequired("adding a key needs the user's token")
            payload = await read_json_body(reply, cfg.header_timeout)
            key = await add_key(state.etcd, state.cache, user, payload)
            return await reply.json(
                201, {"fingerprint": key.fingerprint, "user": user, "title": key.title}
            )
        case ListCredentials(kind=kind, user=None):
            user = await _signed_in(state, authorization, f"listing your {kind}s")
            listed = list_credentials(state.cache, kind, user)
            return await reply.json(200, {"user": user, f"{kind}s": listed})
        case ListCredentials(kind=kind, user=str(name)):
            _require_admin(admin)
            await require_user(state.etcd, state.cache, name)
            listed = list_credentials(state.cache, kind, name)
            return await reply.json(200, {"user": name, f"{kind}s": listed})
        case RevokeCredential(kind=kind, ident=ident, admin=admin_route):
            if admin_route:
                _require_admin(admin)
                caller = None
            else:
                caller = await _signed_in(state, authorization, f"revoking a {kind}")
            owner = await revoke_credential(state.etcd, state.cache, kind, ident, caller)
            log.info("revoked %s %s of %s", kind, ident, owner or "?")
            revoked = {"revoked": kind, "id": ident, "user": owner}
            return await reply.json(200, revoked, f"{kind}={ident}")
    raise AssertionError(f"unhandled API route {route!r}")


async def _signed_in(state: EdgeState, authorization: bytes | None, what: str) -> str:
    user = await http_user(state.cache, authorization)
    if user is None:
        raise AuthRequired(f"{what} needs the user's token")
    return user


async def readable_record(
    state: EdgeState, name: RepoName, user: str | None, admin: bool
) -> RepoRecord:
    if admin:
        try:
            return await state.cache.record(name)
        except NotFound:
            raise RepoNotFound(name.path) from None
        except StoreUnavailable as exc:
            raise RoutingUnavailable(str(exc)) from None
    # The API answers 404 (not 401) for what an anonymous caller may not see.
    return await authorize(state.cache, name, user, write=False, anonymous_401=False)


def _require_admin(admin: bool) -> None:
    if not admin:
        raise Forbidden("admin token required")
