"""The client-facing SSH front: git over SSH on port 22, and nothing else.

asyncssh runs on the trio-asyncio loop of `run_edge`. Authentication is by
public key only: the key's SHA256 fingerprint names its user in the routing
cache (etcd on a miss), and any SSH user name is accepted (git uses `git`).
A session may exec one git service (`edge.ssh.session.vet_session` decides); pty,
subsystems, port, agent and X11 forwarding are refused.

Each session is a trio task in the `sessions` nursery the front is given:
asyncssh's callbacks only start it (edge/ssh/channel.py); routing, access and
the relay to the node (edge/ssh/relay.py, over the HTTPS front's node pool)
are trio code. Only the key check runs inside an asyncssh callback, reaching
the routing cache through `trio_as_aio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import asyncssh
import trio

from edge.auth import authorize, routing_errors
from edge.config import OpLimits, ProxyMode, SshFrontConfig
from edge.errors import NodeUnavailable, RoutingUnavailable
from edge.limits import Limits
from edge.metrics import FAILED, OK, REFUSED, GitOp, GitOps, protocol_version
from edge.proxy_accept import with_client_address
from edge.ssh.aio import GIT_ONLY_SSH_SERVER, aio_as_trio, trio_as_aio
from edge.ssh.asyncssh_gap import (
    skip_empty_ignore_packets,
    skip_unlogged_packet_logs,
    use_sodium_chacha,
)
from edge.ssh.channel import Activity, ClientChannel
from edge.ssh.relay import ClientStream, NodeSessions, RelayResult, SessionRequest
from edge.ssh.session import GitSession
from gitproto.ssh_command import GitCommand
from plumbing.connlimit import ConnLimiter, Refusal
from plumbing.drain import RequestTracker
from plumbing.listen import address_text, bind_listeners, client_ip
from plumbing.sshkeys import load_or_create_key
from routing.cache import RoutingCache
from routing.errors import StoreUnavailable
from routing.model import NodeRecord, Region

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 10.0
"""Access check and routing: a dict lookup, or one etcd read on a miss."""
SHUTDOWN_GRACE = 5.0
CLOSE_GRACE = 5.0
"""How long a finished session waits for the client to close its channel."""


@dataclass
class SshStats:
    connections: int = 0
    connections_active: int = 0
    auth_rejected: int = 0
    authenticated: int = 0
    """Connections through key exchange and authentication (handshakes done)."""
    sessions: int = 0
    sessions_active: int = 0
    sessions_refused: int = 0
    unauthenticated: int = 0
    """Connections not yet authenticated, which MaxStartups counts."""
    refused_listener_full: int = 0
    refused_address_full: int = 0
    refused_max_startups: int = 0


class SshFront:
    """Listens for SSH clients and serves their git sessions.

    Sessions run in `sessions`, a nursery the caller keeps open beyond `serve()`:
    a draining edge stops listening and lets them finish.
    """

    def __init__(
        self,
        config: SshFrontConfig,
        cache: RoutingCache,
        nodes: NodeSessions,
        requests: RequestTracker,
        sessions: trio.Nursery,
        *,
        region: Region,
        read_wait: float = 0.0,
        limiter: ConnLimiter | None = None,
        limits: Limits | None = None,
        git_ops: GitOps | None = None,
    ) -> None:
        self._config = config
        self._git_ops = git_ops
        # Shared with the HTTPS front (EdgeState.limits): one budget per user and address.
        self.limits = limits or Limits(OpLimits())
        # `[ssh] max_connections*`; the edge passes one that exempts its trusted proxies.
        self._limiter = limiter or ConnLimiter(
            config.max_connections, config.max_connections_per_address
        )
        # A replicated repository is served by its in-sync replica nearest this
        # edge's region (`RoutingCache.resolve_read`), as on the HTTPS front.
        self._region = region
        self._read_wait = read_wait
        self._cache = cache
        self._nodes = nodes
        self._requests = requests
        self._sessions = sessions
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._clients: set[_ClientConnection] = set()
        self.draining = False
        self._idle = trio.Event()
        self._idle.set()
        self._acceptors: list[asyncssh.SSHAcceptor] = []
        self._options: dict[str, Any] = {}
        """asyncssh's server options; a SIGHUP replaces the host keys in them."""
        self.stats = SshStats()

    def stats_dict(self) -> dict[str, int]:
        counters = {f"ssh_{key}": value for key, value in asdict(self.stats).items()}
        # The sessions' share of the shared node pool (node_connects / node_reuses
        # count all of it): a warm edge moves only ssh_pool_reuses.
        counters["ssh_pool_connects"] = self._nodes.stats.connects
        counters["ssh_pool_reuses"] = self._nodes.stats.reuses
        counters["ssh_pool_retries"] = self._nodes.stats.retries
        return counters

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept clients until cancelled; `started([host:port, ...])` once listening.

        Cancelling stops only the listener: sessions run on until `aclose()`,
        so that a draining edge lets them finish.
        """
        cfg = self._config
        if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
            # asyncssh logs ~15 INFO lines per session; the access log has one.
            logging.getLogger("asyncssh").setLevel(logging.WARNING)
        host_keys = await trio.to_thread.run_sync(
            lambda: [load_or_create_key(path) for path in cfg.host_key_files]
        )
        options = {
            "server_host_keys": host_keys,
            # Ptys are refused at the SSH level: `ssh -t` then fails with
            # OpenSSH's "PTY allocation request failed", while a plain
            # `ssh git@edge` typed in a terminal (pty requested, not
            # required) still gets the greeting.
            **GIT_ONLY_SSH_SERVER,
            "window": cfg.window,
            "encryption_algs": cfg.ciphers,  # () is asyncssh's defaults
            "login_timeout": cfg.login_grace_time,
        }
        # Bound here: asyncio would set IPV6_V6ONLY on `[::]` (plumbing/listen.py).
        sockets = [s for a in cfg.listen for s in bind_listeners(a.host, a.port)]
        addresses = [address_text(sock.getsockname()) for sock in sockets]
        self._options = options
        if cfg.proxy_protocol.mode is not ProxyMode.OFF:
            await self._serve_proxied(sockets, addresses, task_status)
            return
        acceptors = self._acceptors = []
        try:
            for sock in sockets:
                # One acceptor per socket: asyncssh.listen(sock=...) keeps our options.
                acceptors.append(
                    await aio_as_trio(asyncssh.listen)(
                        sock=sock, server_factory=lambda: _ClientConnection(self), **options
                    )
                )
            log.info("SSH listening on %s", " ".join(addresses))
            task_status.started(addresses)
            await trio.sleep_forever()
        finally:
            for sock in sockets[len(acceptors) :]:
                sock.close()
            for acceptor in acceptors:
                acceptor.close()  # new connections only: open ones are closed by aclose()

    async def _serve_proxied(
        self,
        sockets: list[socket.socket],
        addresses: list[str],
        task_status: trio.TaskStatus[list[str]],
    ) -> None:
        """Accept in trio, read the PROXY header, then hand the socket to asyncssh.

        The header comes before the SSH banner, where asyncssh's own accept loop
        cannot look. After it, asyncssh drives the socket itself
        (`asyncssh.run_server`), as `listen()` does: no copy per packet.
        """
        listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(s)) for s in sockets]
        policy = self._config.proxy_protocol

        async def start(stream: trio.SocketStream, client: str) -> None:
            sock = stream.socket
            own = socket.socket(sock.family, sock.type, sock.proto, fileno=sock.detach())
            try:
                # Returns once the client has authenticated (or raises); the
                # connection then lives on asyncio, as listen()'s do.
                await aio_as_trio(asyncssh.run_server)(
                    own, server_factory=lambda: _ClientConnection(self, client), **self._options
                )
            except Exception as exc:
                # A failed login. asyncssh has closed the socket, unless it failed
                # before taking it; closing the same socket object twice is harmless.
                own.close()
                log.debug("SSH connection from %s ended before login: %r", client, exc)

        log.info("SSH listening on %s (PROXY protocol %s)", " ".join(addresses), policy.mode)
        task_status.started(addresses)
        await trio.serve_listeners(with_client_address(policy, "ssh", start), listeners)

    async def aclose(self) -> None:
        """Disconnect every client; their sessions end (and close their node connections)."""
        with trio.move_on_after(SHUTDOWN_GRACE, shield=True):
            for conn in list(self._connections):
                conn.close()
            await self._idle.wait()

    def begin_drain(self) -> None:
        """A drain (SIGTERM): clients without a session are disconnected now, and no
        new session opens; running sessions go on (`aclose()` ends what is left)."""
        self.draining = True
        for client in list(self._clients):
            client.close_if_idle()

    async def reload_host_keys(self) -> None:
        """SIGHUP: the host keys are read again; new connections get them, open ones
        keep theirs. Raises OSError or ValueError (the old keys stay) on a bad file."""
        paths = self._config.host_key_files
        keys = await trio.to_thread.run_sync(lambda: [load_or_create_key(p) for p in paths])
        self._options = {**self._options, "server_host_keys": keys}  # PROXY-protocol accepts
        for acceptor in self._acceptors:  # on the loop's thread, as asyncssh expects
            acceptor.update(server_host_keys=keys)

    # -- called from asyncssh (asyncio) ------------------------------------------

    def admit(self, ip: str) -> str | None:
        """Count a new connection from `ip`, unauthenticated; or why it is refused.

        Refused: over `max_connections` or `max_connections_per_address`, or
        dropped by `max_startups` (OpenSSH's random early drop, counted over the
        connections not yet authenticated, so a flood of banner-only
        connections cannot lock out clients that do authenticate).
        """
        refused = self._limiter.admit(ip)
        if refused is not None:
            if refused is Refusal.LISTENER_FULL:
                self.stats.refused_listener_full += 1
            else:
                self.stats.refused_address_full += 1
            return refused.value
        if self._config.max_startups.should_drop(self.stats.unauthenticated):
            self._limiter.release(ip)
            self.stats.refused_max_startups += 1
            return f"past MaxStartups {self._config.max_startups}"
        self.stats.unauthenticated += 1
        return None

    def authenticated(self) -> None:
        self.stats.unauthenticated -= 1

    def released(self, ip: str, *, authenticated: bool) -> None:
        """An admitted connection ended."""
        if not authenticated:
            self.stats.unauthenticated -= 1
        self._limiter.release(ip)

    async def key_owner(self, key: asyncssh.SSHKey) -> str | None:
        fingerprint = key.get_fingerprint("sha256")
        try:
            return await trio_as_aio(self._key_owner)(fingerprint)
        except (StoreUnavailable, trio.TooSlowError) as exc:
            log.warning("SSH key %s not checked, etcd unavailable: %r", fingerprint, exc)
            return None

    async def _key_owner(self, fingerprint: str) -> str | None:
        with trio.fail_after(LOOKUP_TIMEOUT):
            return await self._cache.key_owner(fingerprint)

    def start_session(self, channel: ClientChannel, user: str, client_ip: str) -> None:
        """asyncssh's session_started callback: hand the session over to trio."""
        try:
            self._sessions.start_soon(self._serve_session, channel, user, client_ip)
        except RuntimeError:  # the nursery is closed: we are shutting down
            channel.abort()
            return
        self.stats.sessions += 1
        self.stats.sessions_active += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle

    # -- trio -----------------------------------------------------------------------

    async def _serve_session(self, channel: ClientChannel, user: str, client_ip: str) -> None:
        session = GitSession(channel, user, self, client_ip)
        try:
            with self._requests.track():  # a draining edge waits for SSH sessions too
                with self._tracked(session, user, client_ip):
                    await session.run()
                # Until the client has closed its end too: a drain that disconnects
                # right after the exit status makes OpenSSH exit 255 instead of 0.
                with trio.move_on_after(CLOSE_GRACE):
                    await channel.wait_closed()
        except Exception:
            # One broken session must not take the front down; its client sees EOF.
            log.exception("SSH session for %s failed", user)
            channel.abort()
        finally:
            self.stats.sessions_active -= 1
            self.stats.sessions_refused += session.outcome.refused
            if self.stats.sessions_active == 0:
                self._idle.set()

    @contextlib.contextmanager
    def _tracked(self, session: GitSession, user: str, client_ip: str) -> Iterator[None]:
        """The session as a git operation for /metrics and the JSON log (edge/metrics.py)."""
        if self._git_ops is None:
            yield
            return
        op = GitOp("ssh", "-", client_ip, user=user)
        with self._git_ops.track(op):
            try:
                yield
            finally:
                outcome = session.outcome
                op.service, op.repo = outcome.service, outcome.repo
                op.protocol = protocol_version(outcome.protocol)
                op.region, op.node = outcome.region, outcome.node
                op.bytes_in, op.bytes_out = outcome.bytes_up, outcome.bytes_down
                op.status = str(outcome.status)
                op.result = REFUSED if outcome.refused else OK if outcome.status == 0 else FAILED

    async def route(self, command: GitCommand, user: str, client_ip: str) -> NodeRecord:
        self.limits.check_git_rate(user, client_ip)
        writes = command.service.writes
        with _lookup_deadline(LOOKUP_TIMEOUT + self._read_wait):
            await authorize(self._cache, command.repo, user, write=writes, anonymous_401=False)
            with routing_errors():
                location = await self._cache.resolve_read(
                    command.repo, self._region, wait=self._read_wait, push=writes
                )
        node = self._cache.nodes.get(location.node_id)
        if node is None:
            raise NodeUnavailable(f"{location.node_id}: not registered")
        return node

    async def carry(
        self, node: NodeRecord, request: SessionRequest, client: ClientStream, client_ip: str
    ) -> RelayResult:
        # Admitted before the node is asked: a refusal leaves no git behind.
        async with self.limits.git_operation(
            user=request.user,
            client_ip=client_ip,
            repo=request.command.repo.path,
            node_id=node.node_id,
        ):
            return await self._nodes.carry(node, request, client)


@contextlib.contextmanager
def _lookup_deadline(seconds: float) -> Iterator[None]:
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError:
        raise RoutingUnavailable(f"lookup took over {seconds}s") from None


class _ClientConnection(asyncssh.SSHServer):
    """One client connection: its key's user, its sessions, its idle timer."""

    def __init__(self, front: SshFront, client_ip: str | None = None) -> None:
        self._front = front
        self._client_ip = client_ip
        """The client's address from a PROXY header; None: the socket's peer."""
        self._config = front._config
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer_ip = "-"
        """The client's address: what logs, connection caps and git operation limits use."""
        self._admitted = False
        self._authenticated = False
        self._user: str | None = None
        self._open_sessions = 0
        self._activity = Activity()
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        peer = conn.get_extra_info("peername")
        # The PROXY header's address when there was one: limits and logs count clients.
        self._peer_ip = self._client_ip or (client_ip(peer[0]) if peer else "-")
        refused = self._front.admit(self._peer_ip)
        if refused is not None:
            # Before our version line is sent (asyncssh sends it after this returns,
            # and not on an aborted transport): the client sees the connection
            # closed with no banner, as OpenSSH's MaxStartups drop does.
            log.info("SSH connection from %s refused: %s", self._peer_ip, refused)
            conn.abort()
            return
        self._admitted = True
        # Before key exchange: no empty SSH_MSG_IGNORE before every packet (1.2-1.3x
        # the CPU per byte sent, measured; see asyncssh_gap).
        skip_empty_ignore_packets(conn)
        skip_unlogged_packet_logs(conn)
        use_sodium_chacha(conn)  # chacha20-poly1305 at a third of the cost per small packet
        self._conn = conn
        self._front._connections.add(conn)
        self._front._clients.add(self)
        self._front.stats.connections += 1
        self._front.stats.connections_active += 1
        self._arm_idle_timer(self._config.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            return
        self._front.released(self._peer_ip, authenticated=self._authenticated)
        if self._conn is not None:
            self._front._connections.discard(self._conn)
        self._front._clients.discard(self)
        self._front.stats.connections_active -= 1
        if self._idle_timer is not None:
            self._idle_timer.cancel()

    def close_if_idle(self) -> None:
        if self._open_sessions == 0 and self._conn is not None:
            log.info("SSH connection of %s closed: draining", self._user or "-")
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, "server shutting down")

    def _arm_idle_timer(self, delay: float) -> None:
        self._idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        idle_for = time.monotonic() - self._activity.last
        timeout = self._config.idle_timeout
        if idle_for < timeout:
            self._arm_idle_timer(timeout - idle_for)
        elif self._conn is not None:
            log.info("SSH connection of %s idle for %.0fs: closing", self._user or "-", idle_for)
            self._conn.disconnect(asyncssh.DISC_BY_APPLICATION, "idle timeout")

    # -- authentication: public key only ---------------------------------------

    def begin_auth(self, username: str) -> bool:
        return True  # the user name is not the identity: the key is

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        limits = self._front.limits
        if limits.auth_blocked(self._peer_ip):
            # Before the key is looked up; OpenSSH shows the reason ("Received
            # disconnect from ...: too many failed authentications ...").
            log.info("SSH login from %s refused: too many failed authentications", self._peer_ip)
            if self._conn is not None:
                self._conn.disconnect(
                    asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                    "too many failed authentications from your address, try again later",
                )
            return False
        owner = await self._front.key_owner(key)
        if owner is None:
            self._front.stats.auth_rejected += 1
            limits.auth_failed(self._peer_ip)
            log.info("SSH key %s: unknown, rejected", key.get_fingerprint("sha256"))
            return False
        # asyncssh calls this for a key query and again, right before checking the
        # signature, for the key that then succeeds (a new request cancels a pending
        # one), so the last owner set is the authenticated key's.
        self._user = owner
        return True

    def auth_completed(self) -> None:
        self._activity.touch()
        self._authenticated = True
        self._front.stats.authenticated += 1
        self._front.authenticated()
        log.info("SSH %s authenticated from %s", self._user, self.client_ip)

    @property
    def client_ip(self) -> str:
        """Where the client is: its PROXY header's address, else the socket's peer."""
        return self._peer_ip

    # -- what an authenticated client may open --------------------------------

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[bytes], asyncssh.SSHServerSession[bytes]]:
        assert self._conn is not None and self._user is not None
        if self._front.draining:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "gitedge: server shutting down"
            )
        if self._open_sessions >= self._config.max_sessions:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE,
                f"gitedge: at most {self._config.max_sessions} sessions per connection",
            )
        self._open_sessions += 1
        channel = self._conn.create_server_channel(encoding=None, window=self._config.window)
        user, front, address = self._user, self._front, self._peer_ip
        return channel, ClientChannel(
            lambda session: front.start_session(session, user, address),
            self._session_closed,
            self._activity,
            write_timeout=self._config.per_write_timeout,
        )

    def _session_closed(self) -> None:
        self._open_sessions -= 1
        if self._front.draining:
            self.close_if_idle()

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "gitedge: port forwarding is not supported"
        )

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.info("SSH %s: remote forwarding of port %d refused", self._user, listen_port)
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        raise asyncssh.ChannelOpenError(
            asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "gitedge: socket forwarding is not supported"
        )

    def unix_server_requested(self, listen_path: str) -> bool:
        return False
