"""Smart-HTTP routes: a request line's method and target, classified.

Sans-IO: pure functions from (method, target) to a route or a `RouteError`
that knows its HTTP status. Shared by the edge and the reference node, so the
two agree on what a git URL is (gitprotocol-http: `$GIT_URL/info/refs?service=`
and `$GIT_URL/git-upload-pack`, `$GIT_URL/git-receive-pack`).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from gitproto.protocol import HTTP_SERVICES, Service
from routing.model import InvalidRepoName, RepoName


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
class Health:
    """`/healthz` (process up) or `/readyz` (ready to serve)."""

    ready: bool


GitRoute = InfoRefs | Rpc


class RouteError(Exception):
    """A request we can classify as wrong; carries the answer."""

    def __init__(self, http_status: int, message: str, allow: str = "") -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message
        self.allow = allow


MAX_TARGET = 4096
_GIT_SUFFIXES = ("/info/refs", "/git-upload-pack", "/git-receive-pack")
# Dumb-HTTP paths under a repo: answered 404 so git does not fall back to them.
_DUMB_MARKERS = ("/HEAD", "/objects/", "/info/packs", "/info/alternates", "/info/http-alternates")
DUMB_HTTP = "dumb HTTP is not supported; use a git client with smart HTTP"


def split_target(target: bytes) -> tuple[str, str]:
    """(path, query) of an origin-form request target; RouteError if it is not one."""
    if len(target) > MAX_TARGET:
        raise RouteError(414, "request target too long")
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise RouteError(400, "request target is not ASCII") from None
    path, _, query = text.partition("?")
    if not path.startswith("/"):
        raise RouteError(400, "request target must be an absolute path")
    return path, query


def health_route(method: bytes, path: str) -> Health | None:
    if path in ("/healthz", "/readyz"):
        require(method, b"GET", b"HEAD")
        return Health(ready=path == "/readyz")
    return None


def git_route(method: bytes, path: str, query: str) -> GitRoute | None:
    """The smart-HTTP route `path` names, or None if it is not a git URL."""
    for suffix in _GIT_SUFFIXES:
        if path.endswith(suffix):
            repo = repo_in_path(path[1 : -len(suffix)])
            if suffix == "/info/refs":
                require(method, b"GET", b"HEAD")
                return InfoRefs(repo, _service_param(query))
            require(method, b"POST")
            return Rpc(repo, Service(suffix[1:]))
    if any(marker in path for marker in _DUMB_MARKERS):
        raise RouteError(404, DUMB_HTTP)
    return None


def parse_git_route(method: bytes, target: bytes) -> GitRoute | Health | None:
    """What a node serves: health checks and smart HTTP; None for anything else."""
    path, query = split_target(target)
    return health_route(method, path) or git_route(method, path, query)


def repo_in_path(raw: str) -> RepoName:
    try:
        return RepoName.parse(raw)
    except InvalidRepoName as exc:
        raise RouteError(400, f"bad repository path: {exc}") from None


def require(method: bytes, *allowed: bytes) -> None:
    if method not in allowed:
        raise RouteError(405, "method not allowed", allow=", ".join(m.decode() for m in allowed))


def _service_param(query: str) -> Service:
    values = parse_qs(query, keep_blank_values=True).get("service", [])
    if not values:
        # A request without ?service= is a dumb-HTTP client.
        raise RouteError(404, DUMB_HTTP)
    try:
        service = Service(values[0])
    except ValueError:
        service = None
    if service not in HTTP_SERVICES:
        raise RouteError(403, f"unsupported service {values[0]!r}")
    return service
