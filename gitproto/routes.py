"""Smart-HTTP routes: a request line's method and target, classified.

Sans-IO: pure functions from (method, target) to a route or a `RouteError`
that knows its HTTP status. Shared by the edge and the reference node, so the
two agree on what a git URL is (gitprotocol-http: `$GIT_URL/info/refs?service=`
and `$GIT_URL/git-upload-pack`, `$GIT_URL/git-receive-pack`), and on the one
URL that is not git's own: `POST $GIT_URL/ssh-upload-pack` (`-receive-pack`,
`-upload-archive`), an SSH session the edge carries to the node over HTTP
(`SshSession`). Only nodes serve that one; the edge's own grammar
(`git_route`) does not know it, so a client cannot ask the edge for it.
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
class SshSession:
    """`POST $GIT_URL/ssh-<verb>`: one interactive git session, as over SSH.

    The request body is the client's stdin, the response body its stdout,
    stderr and exit status (`gitproto.ssh_frame`). Edge to node only.
    """

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


def parse_git_route(method: bytes, target: bytes) -> GitRoute | SshSession | Health | None:
    """What a node serves: health checks, smart HTTP and SSH sessions; None otherwise."""
    path, query = split_target(target)
    return (
        health_route(method, path)
        or ssh_session_route(method, path)
        or git_route(method, path, query)
    )


_SSH_PREFIX = "/ssh-"


def ssh_session_target(repo: RepoName, service: Service) -> bytes:
    """The request target of an SSH session: `/<owner>/<name>.git/ssh-upload-pack`."""
    return f"/{repo.bare_dir}{_SSH_PREFIX}{service.verb}".encode()


def ssh_session_route(method: bytes, path: str) -> SshSession | None:
    """`POST /<owner>/<name>.git/ssh-<verb>` as an SshSession; None if it is not one."""
    repo_path, sep, verb = path.rpartition(_SSH_PREFIX)
    # Always `.git`: the edge builds these targets (ssh_session_target) from a RepoName.
    if not sep or "/" in verb or not repo_path.endswith(".git"):
        return None
    try:
        service = Service(f"git-{verb}")
    except ValueError:
        return None
    repo = repo_in_path(repo_path[1:])
    require(method, b"POST")
    return SshSession(repo, service)


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
