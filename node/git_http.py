"""The node's HTTP server: git smart HTTP, SSH sessions, `/healthz`, the internal API.

Plain HTTP/1.1 for a private network, or HTTPS with `[tls]`; only edges may use
it (node/edge_auth.py). Git URLs are classified by `gitproto.routes`, the same
grammar the edge uses, so both agree on what a git URL is; each smart-HTTP
request then runs the git service the way git's own `http-backend` would (see
`node.git_proto`), and each SSH session the way git-shell would (`node.ssh_http`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import h11
import trio

from gitproto.protocol import Service, accept_git_protocol
from gitproto.routes import (
    GitRoute,
    Health,
    InfoRefs,
    RouteError,
    Rpc,
    SshSession,
    parse_git_route,
)
from node import git_proto
from node.admin_api import AdminApi, is_admin_target
from node.edge_auth import EdgeAuth
from node.git_pump import NO_CACHE, RequestAborted, serve_git
from node.housekeeper import Housekeeper
from node.housekeeping import HousekeepingConfig
from node.http_conn import HttpConn, header
from node.metrics import GitOpLog, GitProcessMetrics, NodeGitOp
from node.repl_api import ReplApi, is_repl_target, transfer_git_target
from node.repos import RepoStore
from node.ssh_http import SshSessions
from plumbing.drain import Drain, RequestTracker
from plumbing.listen import address_text
from plumbing.logsafe import printable
from plumbing.observe import protocol_version

log = logging.getLogger(__name__)

# Errors that mean the client went away or stalled: routine, logged quietly.
_CLIENT_GONE = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    h11.RemoteProtocolError,
    RequestAborted,
)


class GitHttpServer:
    def __init__(
        self,
        store: RepoStore,
        admin_secret: str,
        *,
        keepalive_timeout: float,
        housekeeper: Housekeeper | None = None,
        repl: ReplApi | None = None,
        drain: Drain | None = None,
        requests: RequestTracker | None = None,
        max_push_size: int = 0,
        metrics: GitProcessMetrics | None = None,
    ) -> None:
        self.metrics = metrics or GitProcessMetrics()
        """The git processes this server runs, for `/metrics` (node/metrics.py)."""
        self.oplog = GitOpLog()
        """One log line per git request (node/metrics.py)."""
        self._store = store
        self._auth = EdgeAuth(admin_secret)
        self._housekeeper = housekeeper or Housekeeper(store, HousekeepingConfig(enabled=False))
        self._admin = AdminApi(store, self._housekeeper)
        self._repl = repl
        self._ssh = SshSessions(store, self._housekeeper, max_push_size, self.metrics)
        self._max_push_size = max_push_size
        self._keepalive_timeout = keepalive_timeout
        self.drain = drain or Drain()
        self.requests = requests or RequestTracker()
        """Requests in flight: a draining node waits for them (node/app.py)."""

    async def handle_connection(self, stream: trio.abc.Stream) -> None:
        """Serve requests on one connection until it closes; never raises but Cancelled."""
        conn = HttpConn(
            stream, keepalive_timeout=self._keepalive_timeout, idle_guard=self.drain.idle
        )
        try:
            await self._serve(conn)
        except* _CLIENT_GONE as group:
            log.debug("connection ended: %r", group.exceptions[0])
        except* Exception:
            log.exception("connection handler failed")
        finally:
            await trio.aclose_forcefully(stream)

    async def _serve(self, conn: HttpConn) -> None:
        while True:
            try:
                request = await conn.next_request()
            except h11.RemoteProtocolError as exc:
                if conn.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    await conn.respond_text(exc.error_status_hint, f"bad request: {exc}")
                return
            if request is None:
                return
            try:
                with self.requests.track(), self.drain.busy(conn.close_after):
                    await self._dispatch(conn, request)
            except OSError as exc:
                # git could not start: the client learns only that we failed.
                method, target = printable(request.method, 16), printable(request.target)
                log.error("%s %s failed: %r", method, target, exc)
                if not conn.response_started:
                    await conn.respond_text(500, "internal error")
                return
            conn.skip_buffered_body()
            if not conn.reusable:
                return

    async def _dispatch(self, conn: HttpConn, request: h11.Request) -> None:
        route: GitRoute | SshSession | Health | RouteError | None
        transfer = transfer_git_target(request.target) if self._repl is not None else None
        try:
            route = parse_git_route(request.method, transfer or request.target)
        except RouteError as exc:
            route = exc
        if transfer is not None and not (
            isinstance(route, InfoRefs | Rpc) and route.service is Service.RECEIVE_PACK
        ):
            route = None  # a transfer is a receive-pack, nothing else
        if isinstance(route, Health):
            await conn.respond_text(200, "ok")
            return
        # Everything but health checks is the edge's alone, refusals included: a
        # stranger learns nothing of what the node would have said.
        if not await self._auth.admit(conn, request):
            return
        if is_admin_target(request.target):
            await self._admin.handle(conn, request)
        elif self._repl is not None and is_repl_target(request.target) and transfer is None:
            await self._repl.handle(conn, request)
        elif isinstance(route, RouteError):
            allow = [("allow", route.allow)] if route.allow else []
            await conn.respond_text(route.http_status, route.message, allow)
        elif isinstance(route, InfoRefs | Rpc | SshSession):
            with self.oplog.track(conn, _git_op(conn, request, route, transfer is not None)):
                await self._serve_git(conn, request, route, transfer is not None)
        else:  # not a git URL (the edge's own /api/ routes among them)
            await conn.respond_text(404, "not found")

    async def _serve_git(
        self, conn: HttpConn, request: h11.Request, route: GitRoute | SshSession, transfer: bool
    ) -> None:
        if isinstance(route, InfoRefs | Rpc):
            await self._smart_http(conn, request, route, transfer)
        else:
            await self._ssh.serve(conn, request, route)

    def _argv(self, argv: list[str], transfer: bool) -> list[str]:
        """A peer's transfer runs the store's transfer hooks instead of the repo's (the vote);
        a client's push is held to the push size limit (a peer's is not: it may carry a
        replica's whole catch-up)."""
        if not transfer:
            return git_proto.limit_push(argv, self._max_push_size)
        return [argv[0], "-c", f"core.hooksPath={self._store.transfer_hooks}", *argv[1:]]

    def _env(self, request: h11.Request) -> dict[str, str]:
        """git's environment for one request: the client's checked GIT_PROTOCOL, and
        for an edge's request on a user's behalf the hidden refs/gitedge/."""
        git_protocol = accept_git_protocol(header(request, b"git-protocol"))
        user = git_proto.user_from_header(header(request, b"gitedge-user"))
        return git_proto.on_behalf_of(self._store.env(git_protocol), user)

    async def _smart_http(
        self, conn: HttpConn, request: h11.Request, route: InfoRefs | Rpc, transfer: bool
    ) -> None:
        """Either smart-HTTP request, with the repository counted as in use meanwhile
        (a delete waits for it, node/repos.py `serving`); 404 if it is not here."""
        with self._store.serving(route.repo) as repo_dir:
            if repo_dir is None:
                await conn.respond_text(404, "repository not found")
            elif isinstance(route, InfoRefs):
                await self._advertise(conn, request, route, repo_dir, transfer)
            else:
                await self._run_rpc(conn, request, route, repo_dir, transfer)

    async def _advertise(
        self, conn: HttpConn, request: h11.Request, route: InfoRefs, repo_dir: Path, transfer: bool
    ) -> None:
        content_type = git_proto.advertisement_type(route.service)
        if request.method == b"HEAD":
            await conn.respond(200, content_type=content_type, headers=NO_CACHE)
            return
        git_protocol = accept_git_protocol(header(request, b"git-protocol"))
        with self.metrics.track(str(route.service), _kind("info_refs", transfer)) as process:
            process.returncode = await serve_git(
                conn,
                self._argv(git_proto.info_refs_argv(route.service, repo_dir), transfer),
                env=self._env(request),
                volume=self._store.root,
                content_type=content_type,
                prefix=git_proto.advertisement_prefix(route.service, git_protocol),
            )

    async def _run_rpc(
        self, conn: HttpConn, request: h11.Request, route: Rpc, repo_dir: Path, transfer: bool
    ) -> None:
        expected = git_proto.request_type(route.service)
        if header(request, b"content-type") != expected.encode():
            # As http-backend's check_content_type().
            await conn.respond_text(415, f"expected Content-Type {expected}")
            return
        try:
            decoder = git_proto.body_decoder(header(request, b"content-encoding"))
        except git_proto.UnsupportedEncoding as exc:
            await conn.respond_text(415, f"unsupported Content-Encoding {exc}")
            return
        if route.service is not Service.RECEIVE_PACK:
            await self._serve_rpc(conn, request, route, repo_dir, transfer, decoder)
            return
        # A peer's transfer adds objects too: replicas get optimized like primaries.
        try:
            async with self._housekeeper.pushing(route.repo):
                await self._serve_rpc(conn, request, route, repo_dir, transfer, decoder)
        finally:
            self._housekeeper.push_ended(route.repo)

    async def _serve_rpc(
        self,
        conn: HttpConn,
        request: h11.Request,
        route: Rpc,
        repo_dir: Path,
        transfer: bool,
        decoder: git_proto.BodyDecoder,
    ) -> None:
        with self.metrics.track(str(route.service), _kind("rpc", transfer)) as process:
            process.returncode = await serve_git(
                conn,
                self._argv(git_proto.rpc_argv(route.service, repo_dir), transfer),
                env=self._env(request),
                volume=self._store.root,
                content_type=git_proto.result_type(route.service),
                decoder=decoder,
            )


def _kind(kind: str, transfer: bool) -> str:
    """The metrics' `kind`: a peer's replication fetch is "transfer", not a client's."""
    return "transfer" if transfer else kind


def _git_op(
    conn: HttpConn, request: h11.Request, route: GitRoute | SshSession, transfer: bool
) -> NodeGitOp:
    """What the log line says of a git request, from its route and the edge's headers."""
    if isinstance(route, SshSession):
        kind = "ssh"
    else:
        kind = _kind("info_refs" if isinstance(route, InfoRefs) else "rpc", transfer)
    # The edge appends the address it saw last (edge/http/proxy.py).
    forwarded = (header(request, b"x-forwarded-for") or b"").rpartition(b",")[2].strip()
    return NodeGitOp(
        service=str(route.service),
        repo=route.repo.path,
        kind=kind,
        user=git_proto.user_from_header(header(request, b"gitedge-user")),
        protocol=protocol_version(header(request, b"git-protocol")),
        client=forwarded.decode("latin-1") or None,
        peer=_peer(conn.stream),
    )


def _peer(stream: trio.abc.Stream) -> str:
    """`host:port` of whoever is connected (through TLS too), or "-"."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return "-"
    try:
        return address_text(stream.socket.getpeername())
    except OSError:
        return "-"  # already disconnected
