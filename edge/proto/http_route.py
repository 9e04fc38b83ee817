"""The edge's routes: its API and health checks, then smart HTTP (gitproto.routes).

Sans-IO: a pure function from (method, target) to a route or a `RouteError`
that knows its HTTP status. The git URLs themselves are `gitproto.routes`, the
grammar the node shares.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote

from edge.proto.admin_route import DrainNode, Inventory, admin_route
from edge.proto.web_head import is_edge_path
from gitproto.routes import (
    Health,
    InfoRefs,
    RouteError,
    Rpc,
    git_route,
    health_route,
    repo_in_path,
    require,
    split_target,
)
from routing.model import InvalidRepoName, RepoName, parse_user_name


@dataclass(frozen=True)
class CreateRepo:
    """`POST /api/repos` with JSON `{"name": "owner/name"}`."""


@dataclass(frozen=True)
class GetRepo:
    """`GET /api/repos/owner/name`: where the repository lives."""

    repo: RepoName


RepoOpName = Literal["replicas-add", "replicas-remove", "move", "repair", "verify", "optimize"]


@dataclass(frozen=True)
class RepoOp:
    """A replica-set change, repair or verify of one repository:

    POST   /api/repos/<owner>/<name>/replicas          {"region": R}        replicas-add
    DELETE /api/repos/<owner>/<name>/replicas/<where>  (region or volume)   replicas-remove
    POST   /api/repos/<owner>/<name>/move              {"region": R}        move
    POST   /api/repos/<owner>/<name>/repair            {"volume", "confirm": true}
    GET    /api/repos/<owner>/<name>/verify
    POST   /api/repos/<owner>/<name>/optimize          (node/housekeeper.py, every replica)
    """

    repo: RepoName
    op: RepoOpName
    where: str = ""


@dataclass(frozen=True)
class CreateUser:
    """`POST /api/admin/users` with `{"name": ...}` (admin token)."""


@dataclass(frozen=True)
class CreateToken:
    """`POST /api/admin/users/<user>/tokens` (admin token): a new personal token."""

    user: str


@dataclass(frozen=True)
class AddKey:
    """`POST /api/user/keys` with `{"title", "key"}`, as the user (Basic user:token)."""


Credential = Literal["key", "token"]


@dataclass(frozen=True)
class ListCredentials:
    """`GET /api/user/keys|tokens` (the caller's own, Basic user:token) or
    `GET /api/admin/users/<user>/keys|tokens` (admin token): never a secret."""

    kind: Credential
    user: str | None = None  # None: the authenticated caller


@dataclass(frozen=True)
class RevokeCredential:
    """`DELETE /api/user/keys/<fingerprint>`, `/api/user/tokens/<id>` (the caller's
    own) or `/api/admin/keys/<fingerprint>`, `/api/admin/tokens/<id>` (any user's)."""

    kind: Credential
    ident: str
    admin: bool


@dataclass(frozen=True)
class Stats:
    """`GET /_gitedge/stats`: the edge's counters (trusted peers only)."""


@dataclass(frozen=True)
class Unrouted:
    """Not a route of ours: the web frontend's (`web`), unless under the edge's
    own `/api` or `/_gitedge`, which it never shadows (404 there)."""

    web: bool = False


Route = (
    InfoRefs
    | Rpc
    | CreateRepo
    | GetRepo
    | RepoOp
    | CreateUser
    | CreateToken
    | AddKey
    | ListCredentials
    | RevokeCredential
    | Inventory
    | DrainNode
    | Health
    | Stats
    | Unrouted
)


def is_api_write(route: Route) -> bool:
    """A request that writes etcd or a node (creates, credentials, replica changes):
    what the API-write rate limit counts."""
    if isinstance(route, RepoOp):
        return route.op != "verify"
    return isinstance(
        route, CreateRepo | DrainNode | CreateUser | CreateToken | AddKey | RevokeCredential
    )


# SHA256 fingerprints as OpenSSH prints them (base64, no padding); token ids as
# edge.proto.basic_auth makes them.
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_CREDENTIALS: dict[str, Credential] = {"keys": "key", "tokens": "token"}


def parse_route(method: bytes, target: bytes) -> Route:
    """Classify a request. Raises RouteError for a bad path or method."""
    path, query = split_target(target)
    if (health := health_route(method, path)) is not None:
        return health
    if path == "/_gitedge/stats":
        require(method, b"GET")
        return Stats()
    if (operator := admin_route(method, path, query)) is not None:
        return operator
    if path == "/api/admin/users":
        require(method, b"POST")
        return CreateUser()
    if path.startswith("/api/admin/users/"):
        user, _, kind = path.removeprefix("/api/admin/users/").partition("/")
        if kind not in _CREDENTIALS:
            return Unrouted()
        try:
            user = parse_user_name(user)
        except InvalidRepoName as exc:
            raise RouteError(400, f"bad user name: {exc}") from None
        if kind == "tokens":
            require(method, b"POST", b"GET")
            if method == b"POST":
                return CreateToken(user)
        require(method, b"GET")
        return ListCredentials(_CREDENTIALS[kind], user)
    if path == "/api/user/keys":
        require(method, b"POST", b"GET")
        return AddKey() if method == b"POST" else ListCredentials("key")
    if path == "/api/user/tokens":
        require(method, b"GET")
        return ListCredentials("token")
    for scope in ("/api/user/", "/api/admin/"):
        kind, sep, ident = path.removeprefix(scope).partition("/")
        if path.startswith(scope) and sep and kind in _CREDENTIALS:
            require(method, b"DELETE")
            return RevokeCredential(
                _CREDENTIALS[kind], _credential_id(kind, ident), scope == "/api/admin/"
            )
    if path == "/api/repos":
        require(method, b"POST")
        return CreateRepo()
    if path.startswith("/api/repos/"):
        parts = path.removeprefix("/api/repos/").split("/")
        if len(parts) > 2 and (op := _repo_op(method, parts)) is not None:
            return op
        require(method, b"GET", b"HEAD")
        return GetRepo(repo_in_path(path.removeprefix("/api/repos/")))
    return git_route(method, path, query) or Unrouted(web=not is_edge_path(path))


def _credential_id(kind: str, raw: str) -> str:
    """A key's fingerprint (percent-encoded or not) or a token's id, validated."""
    ident = unquote(raw)
    if kind == "keys" and not _FINGERPRINT.fullmatch(ident):
        raise RouteError(400, "bad key fingerprint: expected SHA256:<43 base64 characters>")
    if kind == "tokens" and not _TOKEN_ID.fullmatch(ident):
        raise RouteError(400, "bad token id: expected 12 hex digits (ge_<id>_...)")
    return ident


_SIMPLE_OPS: dict[str, tuple[bytes, RepoOpName]] = {
    "replicas": (b"POST", "replicas-add"),
    "move": (b"POST", "move"),
    "repair": (b"POST", "repair"),
    "verify": (b"GET", "verify"),
    "optimize": (b"POST", "optimize"),
}


def _repo_op(method: bytes, parts: list[str]) -> RepoOp | None:
    """`owner/name/<op>[/<where>]`; None: not an op (the whole path is then a bad name)."""
    rest = parts[2:]
    one_part = len(rest) == 1 and rest[0] in _SIMPLE_OPS
    if not one_part and not (len(rest) == 2 and rest[0] == "replicas"):
        return None
    repo = repo_in_path("/".join(parts[:2]))
    if len(rest) == 1:
        allowed, op = _SIMPLE_OPS[rest[0]]
        require(method, allowed)
        return RepoOp(repo, op)
    require(method, b"DELETE")
    where = unquote(rest[1])
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", where):
        raise RouteError(400, "bad replica: expected a region or a volume id")
    return RepoOp(repo, "replicas-remove", where)
