"""Smart-HTTP and API routes: a request line's method and target, classified.

Sans-IO: a pure function from (method, target) to a route or a `RouteError`
that knows its HTTP status. Shared by the edge and the reference node, so the
two agree on what a git URL is (gitprotocol-http: `$GIT_URL/info/refs?service=`
and `$GIT_URL/git-upload-pack`, `$GIT_URL/git-receive-pack`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal
from urllib.parse import parse_qs, unquote

from routing.model import InvalidRepoName, RepoName, parse_user_name


class Service(StrEnum):
    UPLOAD_PACK = "git-upload-pack"
    RECEIVE_PACK = "git-receive-pack"

    @property
    def writes(self) -> bool:
        return self is Service.RECEIVE_PACK


@dataclass(frozen=True)
class InfoRefs:
    """`GET $GIT_URL/info/refs?service=...`: the ref advertisement."""

    repo: RepoName
    service: Service


@dataclass(frozen=True)
class Rpc:
    """`POST $GIT_URL/git-upload-pack` or `.../git-receive-pack`."""

    repo: RepoName
    service: Service


@dataclass(frozen=True)
class CreateRepo:
    """`POST /api/repos` with JSON `{"name": "owner/name"}`."""


@dataclass(frozen=True)
class GetRepo:
    """`GET /api/repos/owner/name`: where the repository lives."""

    repo: RepoName


@dataclass(frozen=True)
class Health:
    """`/healthz` (process up) or `/readyz` (routing cache in sync)."""

    ready: bool


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
class NotFound:
    """Not a route of ours (later: the web frontend's)."""


Route = (
    InfoRefs
    | Rpc
    | CreateRepo
    | GetRepo
    | CreateUser
    | CreateToken
    | AddKey
    | ListCredentials
    | RevokeCredential
    | Health
    | Stats
    | NotFound
)


class RouteError(Exception):
    """A request we can classify as wrong; carries the answer."""

    def __init__(self, http_status: int, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.allow = allow


MAX_TARGET = 4096
_GIT_SUFFIXES = ("/info/refs", "/git-upload-pack", "/git-receive-pack")
# SHA256 fingerprints as OpenSSH prints them (base64, no padding); token ids as
# edge.proto.basic_auth makes them.
_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_TOKEN_ID = re.compile(r"[0-9a-f]{12}")
_CREDENTIALS: dict[str, Credential] = {"keys": "key", "tokens": "token"}
# Dumb-HTTP paths under a repo: answered 404 so git does not fall back to them.
_DUMB_MARKERS = ("/HEAD", "/objects/", "/info/packs", "/info/alternates", "/info/http-alternates")


def parse_route(method: bytes, target: bytes) -> Route:
    """Classify a request. Raises RouteError for a bad path or method."""
    if len(target) > MAX_TARGET:
        raise RouteError(414, "request target too long")
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise RouteError(400, "request target is not ASCII") from None
    path, _, query = text.partition("?")
    if not path.startswith("/"):
        raise RouteError(400, "request target must be an absolute path")

    if path in ("/healthz", "/readyz"):
        _require(method, b"GET", b"HEAD")
        return Health(ready=path == "/readyz")
    if path == "/_gitedge/stats":
        _require(method, b"GET")
        return Stats()
    if path == "/api/admin/users":
        _require(method, b"POST")
        return CreateUser()
    if path.startswith("/api/admin/users/"):
        user, _, kind = path.removeprefix("/api/admin/users/").partition("/")
        if kind not in _CREDENTIALS:
            return NotFound()
        try:
            user = parse_user_name(user)
        except InvalidRepoName as exc:
            raise RouteError(400, f"bad user name: {exc}") from None
        if kind == "tokens":
            _require(method, b"POST", b"GET")
            if method == b"POST":
                return CreateToken(user)
        _require(method, b"GET")
        return ListCredentials(_CREDENTIALS[kind], user)
    if path == "/api/user/keys":
        _require(method, b"POST", b"GET")
        return AddKey() if method == b"POST" else ListCredentials("key")
    if path == "/api/user/tokens":
        _require(method, b"GET")
        return ListCredentials("token")
    for scope in ("/api/user/", "/api/admin/"):
        kind, sep, ident = path.removeprefix(scope).partition("/")
        if path.startswith(scope) and sep and kind in _CREDENTIALS:
            _require(method, b"DELETE")
            return RevokeCredential(
                _CREDENTIALS[kind], _credential_id(kind, ident), scope == "/api/admin/"
            )
    if path == "/api/repos":
        _require(method, b"POST")
        return CreateRepo()
    if path.startswith("/api/repos/"):
        _require(method, b"GET", b"HEAD")
        return GetRepo(_repo(path.removeprefix("/api/repos/")))

    for suffix in _GIT_SUFFIXES:
        if path.endswith(suffix):
            repo = _repo(path[1 : -len(suffix)])
            if suffix == "/info/refs":
                _require(method, b"GET", b"HEAD")
                return InfoRefs(repo, _service_param(query))
            _require(method, b"POST")
            return Rpc(repo, Service(suffix[1:]))
    if any(marker in path for marker in _DUMB_MARKERS):
        raise RouteError(404, "dumb HTTP is not supported; use a git client with smart HTTP")
    return NotFound()


def _repo(raw: str) -> RepoName:
    try:
        return RepoName.parse(raw)
    except InvalidRepoName as exc:
        raise RouteError(400, f"bad repository path: {exc}") from None


def _credential_id(kind: str, raw: str) -> str:
    """A key's fingerprint (percent-encoded or not) or a token's id, validated."""
    ident = unquote(raw)
    if kind == "keys" and not _FINGERPRINT.fullmatch(ident):
        raise RouteError(400, "bad key fingerprint: expected SHA256:<43 base64 characters>")
    if kind == "tokens" and not _TOKEN_ID.fullmatch(ident):
        raise RouteError(400, "bad token id: expected 12 hex digits (ge_<id>_...)")
    return ident


def _require(method: bytes, *allowed: bytes) -> None:
    if method not in allowed:
        raise RouteError(405, "method not allowed", allow=", ".join(m.decode() for m in allowed))


def _service_param(query: str) -> Service:
    values = parse_qs(query, keep_blank_values=True).get("service", [])
    if not values:
        # A request without ?service= is a dumb-HTTP client.
        raise RouteError(404, "dumb HTTP is not supported; use a git client with smart HTTP")
    try:
        return Service(values[0])
    except ValueError:
        raise RouteError(403, f"unsupported service {values[0]!r}") from None
