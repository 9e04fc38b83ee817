"""The edge's SSH connections to nodes: one long-lived, multiplexed connection each.

Every git-over-SSH request becomes one channel (one `git-*` exec) on the
owning node's connection. The connection is made on first use, shared by all
channels after that, and made again only once it has died; callers that
arrive while it is being made wait for that same attempt instead of opening
their own. The node is authenticated by the host key it published in etcd
(`NodeRecord.ssh_host_key`), never by trust-on-first-use.

asyncio code: it runs on the trio-asyncio loop with the rest of asyncssh, and
its coroutines are called from asyncssh code or through `edge.ssh.aio.aio_as_trio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from gitproto.protocol import CHUNK
from gitproto.ssh_command import GitCommand
from routing.model import NodeId, NodeRecord

log = logging.getLogger(__name__)

# A pump moves this much per read; the node's channels accept packets this big.
MAX_PKTSIZE = CHUNK
KEEPALIVE_COUNT_MAX = 3
CLOSE_TIMEOUT = 5.0
NO_EXIT_STATUS = 255  # what OpenSSH's client reports when a channel closes without one


INTERNAL_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


class NodeSSHUnavailable(Exception):
    """No git on the node over SSH: no SSH address, unreachable, wrong host key,
    session refused, or the connection broke mid-transfer. The message is for the log."""


class _DeadConnection(NodeSSHUnavailable):
    """A pooled connection turned out to be closed before anything was sent on it."""


@dataclass
class PoolStats:
    connects: int = 0
    """Connection attempts started (successful or not)."""
    reuses: int = 0
    """`open_git` calls served by a connection made (or being made) earlier."""


@dataclass(frozen=True)
class _NodeEndpoint:
    """What a pooled connection was made for: a change in etcd means a new connection."""

    node_id: NodeId
    host: str
    port: int
    host_key: str
    parsed_host_key: asyncssh.SSHKey = field(compare=False)


class _Entry:
    def __init__(
        self, endpoint: _NodeEndpoint, connect: asyncio.Task[asyncssh.SSHClientConnection]
    ):
        self.endpoint = endpoint
        self.connect = connect

    def connection(self) -> asyncssh.SSHClientConnection | None:
        """The connection, if it was made (and whether or not it is still open)."""
        done = self.connect.done() and not self.connect.cancelled()
        return self.connect.result() if done and self.connect.exception() is None else None

    def usable(self) -> bool:
        if not self.connect.done():
            return True  # being made: wait for it
        conn = self.connection()
        return conn is not None and not conn.is_closed()

    def close(self) -> None:
        self.connect.cancel()  # no-op once done
        if (conn := self.connection()) is not None:
            conn.close()


class NodeSSHPool:
    def __init__(
        self,
        client_key_file: Path,
        *,
        window: int = 16 * 2**20,
        near_window: int | None = None,
        region: str | None = None,
        connect_timeout: float = 3.0,
        keepalive_interval: float = 15.0,
        dial: Mapping[str, tuple[str, int]] | None = None,
    ) -> None:
        """`dial`: node id -> the address to connect to instead of its `ssh_address`
        (`[nodes.dial]`); the host key is still the one in etcd.

        Channels get `window` bytes of receive window, or `near_window` for a node
        in this edge's `region`: the window is what a far path needs in flight
        (DESIGN: 2 MiB caps a 100 ms-RTT path at ~10 MB/s; 16 MiB gave 61), and
        also what one session may buffer here for a client slower than the node.
        """
        self._client_key = asyncssh.read_private_key(client_key_file)
        self._window = window
        self._near_window = window if near_window is None else near_window
        self._region = region
        self._connect_timeout = connect_timeout
        self._keepalive_interval = keepalive_interval
        self._entries: dict[NodeId, _Entry] = {}
        self._dial = dict(dial or {})
        self._closed = False
        self.stats = PoolStats()

    async def open_git(
        self, node: NodeRecord, command: GitCommand, *, user: str, git_protocol: str | None
    ) -> NodeGitProcess:
        """Start `command` on `node`; raises NodeSSHUnavailable within ~connect_timeout."""
        endpoint = _endpoint(node, self._dial.get(node.node_id))
        env = {"GITEDGE_USER": user}
        if git_protocol:
            env["GIT_PROTOCOL"] = git_protocol
        window = self.window_for(node)
        conn, reused = await self._connection(endpoint)
        try:
            return await self._start(conn, endpoint, command.to_wire(), env, window)
        except _DeadConnection:
            # It died unnoticed (the node restarted). Nothing of the request was
            # sent yet, so one more try on a fresh connection is safe.
            if not reused:
                raise
            log.info("connection to node %s was dead; reconnecting", node.node_id)
        conn, _ = await self._connection(endpoint)
        return await self._start(conn, endpoint, command.to_wire(), env, window)

    def window_for(self, node: NodeRecord) -> int:
        """The receive window of a channel to `node`: smaller when it is near."""
        return self._near_window if node.region == self._region else self._window

    async def _start(
        self,
        conn: asyncssh.SSHClientConnection,
        endpoint: _NodeEndpoint,
        command: str,
        env: dict[str, str],
        window: int,
    ) -> NodeGitProcess:
        try:
            process = await asyncio.wait_for(
                conn.create_process(
                    command, env=env, encoding=None, window=window, max_pktsize=MAX_PKTSIZE
                ),
                self._connect_timeout,
            )
        except TimeoutError as exc:
            # A connection that cannot open a channel in time is as good as dead.
            self._forget(endpoint.node_id, conn)
            raise NodeSSHUnavailable(f"node {endpoint.node_id}: no session in time") from exc
        except (asyncssh.Error, OSError) as exc:
            if conn.is_closed():
                self._forget(endpoint.node_id, conn)
                raise _DeadConnection(f"node {endpoint.node_id}: connection lost: {exc!r}") from exc
            # The node is there and said no (more than max_sessions...).
            raise NodeSSHUnavailable(f"node {endpoint.node_id} refused a session: {exc}") from exc
        return NodeGitProcess(process)

    async def close(self) -> None:
        """Close every connection (running channels end with them)."""
        self._closed = True
        entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            entry.close()
        for entry in entries:
            if (conn := entry.connection()) is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(conn.wait_closed(), CLOSE_TIMEOUT)

    async def _connection(
        self, endpoint: _NodeEndpoint
    ) -> tuple[asyncssh.SSHClientConnection, bool]:
        """The node's connection, and whether it was made (or begun) by an earlier call."""
        if self._closed:
            raise NodeSSHUnavailable("the node pool is closed")
        entry = self._entries.get(endpoint.node_id)
        if entry is not None and (entry.endpoint != endpoint or not entry.usable()):
            # Dead, or the node re-registered elsewhere or with another key.
            self._entries.pop(endpoint.node_id)
            entry.close()
            entry = None
        reused = entry is not None
        if entry is None:
            self.stats.connects += 1
            entry = _Entry(endpoint, asyncio.ensure_future(self._connect(endpoint)))
            self._entries[endpoint.node_id] = entry
        else:
            self.stats.reuses += 1
        try:
            # Shielded: one caller giving up must not cancel the others' connect.
            return await asyncio.shield(entry.connect), reused
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if entry.connect.cancelled() and (task is None or not task.cancelling()):
                # Not us: the pool closed, or the node re-registered, mid-connect.
                raise NodeSSHUnavailable(f"node {endpoint.node_id}: connect abandoned") from None
            raise
        except asyncssh.HostKeyNotVerifiable as exc:
            self._forget_entry(endpoint.node_id, entry)
            raise NodeSSHUnavailable(
                f"node {endpoint.node_id}: host key does not match the one in etcd"
            ) from exc
        except (asyncssh.Error, OSError) as exc:  # TimeoutError is an OSError
            # Not cached: the next request tries again (the node may be back).
            self._forget_entry(endpoint.node_id, entry)
            via = f" (nodes.dial.{endpoint.node_id}.ssh)" if endpoint.node_id in self._dial else ""
            raise NodeSSHUnavailable(
                f"node {endpoint.node_id} at {endpoint.host}:{endpoint.port}{via}: {exc!r}"
            ) from exc

    async def _connect(self, endpoint: _NodeEndpoint) -> asyncssh.SSHClientConnection:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                endpoint.host,
                endpoint.port,
                username="gitedge",
                client_factory=lambda: _NodeClient(self, endpoint.node_id),
                client_keys=[self._client_key],
                # Exactly the key from etcd; no known_hosts file, no TOFU.
                known_hosts=([endpoint.parsed_host_key], [], []),
                agent_path=None,
                config=None,
                gss_host=None,
                password_auth=False,
                kbdint_auth=False,
                host_based_auth=False,
                preferred_auth="publickey",
                connect_timeout=self._connect_timeout,
                keepalive_interval=self._keepalive_interval,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                encoding=None,
                window=self._window,
                max_pktsize=MAX_PKTSIZE,
                # Both ends are ours: AES-GCM runs in OpenSSL with AES-NI, while
                # asyncssh's chacha20-poly1305 builds cipher objects per packet
                # (measured: ~29 us vs ~7 us per 32 KiB packet; bench/ssh_clone).
                encryption_algs=INTERNAL_CIPHERS,
            ),
            # asyncssh's connect_timeout covers TCP, kex and auth; this is the backstop.
            self._connect_timeout,
        )
        log.info("connected to node %s at %s:%d", endpoint.node_id, endpoint.host, endpoint.port)
        return conn

    def _forget(self, node_id: NodeId, conn: asyncssh.SSHClientConnection) -> None:
        entry = self._entries.get(node_id)
        if entry is not None and entry.connection() is conn:
            self._entries.pop(node_id)
            conn.close()

    def _forget_entry(self, node_id: NodeId, entry: _Entry) -> None:
        if self._entries.get(node_id) is entry:
            self._entries.pop(node_id)


def _endpoint(node: NodeRecord, dial: tuple[str, int] | None = None) -> _NodeEndpoint:
    if not node.ssh_address or not node.ssh_host_key:
        raise NodeSSHUnavailable(f"node {node.node_id} has no SSH listener in etcd")
    host, sep, port = node.ssh_address.rpartition(":")
    if not sep or not port.isdigit():
        raise NodeSSHUnavailable(f"node {node.node_id}: bad ssh_address {node.ssh_address!r}")
    try:
        host_key = asyncssh.import_public_key(node.ssh_host_key)
    except ValueError:  # asyncssh.KeyImportError
        raise NodeSSHUnavailable(f"node {node.node_id}: bad ssh_host_key in etcd") from None
    address = dial or (host.strip("[]"), int(port))
    return _NodeEndpoint(node.node_id, *address, node.ssh_host_key, host_key)


class _NodeClient(asyncssh.SSHClient):
    def __init__(self, pool: NodeSSHPool, node_id: NodeId) -> None:
        self._pool = pool
        self._node_id = node_id
        self._conn: asyncssh.SSHClientConnection | None = None

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        # Drop it now so the next request reconnects without first failing a channel.
        if self._conn is not None:
            log.info("connection to node %s closed: %s", self._node_id, exc or "clean")
            self._pool._forget(self._node_id, self._conn)


class NodeGitProcess:
    """One git service running on a node, as seen by the edge's SSH front.

    Pump stdout and stderr concurrently (they share the channel's window: an
    unread stderr stalls stdout too), and stdin in a third task. Every I/O
    method raises NodeSSHUnavailable if the node's connection breaks.
    """

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process

    async def read_stdout(self, n: int = CHUNK) -> bytes:
        """Up to `n` bytes of git's stdout; b"" at its end."""
        with _node_errors():
            return await self._process.stdout.read(n)

    async def read_stderr(self, n: int = CHUNK) -> bytes:
        """Up to `n` bytes of git's stderr; b"" at its end."""
        with _node_errors():
            return await self._process.stderr.read(n)

    async def write_stdin(self, data: bytes) -> None:
        """Send to git's stdin; returns once the channel can take more (back-pressure)."""
        with _node_errors():
            self._process.stdin.write(data)
            await self._process.stdin.drain()

    def write_eof(self) -> None:
        """The client's end of input is git's: without it a clone waits forever."""
        with _node_errors():
            self._process.stdin.write_eof()

    async def wait(self) -> int:
        """git's exit status, once the channel closed; 255 if the node sent none."""
        with _node_errors():
            await self._process.wait_closed()
        status = self._process.exit_status
        return NO_EXIT_STATUS if status is None or status < 0 else status

    def close(self) -> None:
        """Abandon the channel (the client went away): the node kills its git."""
        self._process.close()


@contextlib.contextmanager
def _node_errors() -> Iterator[None]:
    try:
        yield
    except (asyncssh.Error, OSError) as exc:
        raise NodeSSHUnavailable(f"connection to the node broke: {exc!r}") from exc
