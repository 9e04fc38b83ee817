"""The node's SSH listener: plain git-over-SSH, for edges only.

Edges authenticate with a public key listed in `[ssh] trusted_edge_keys_file`;
nothing else logs in (no password, keyboard-interactive, host-based or GSS).
Each session may only exec one of the three git services on a repository of
this volume, parsed by the edge's own `parse_command`; no shell, pty,
subsystem or forwarding. The edge multiplexes many sessions over one
long-lived connection, so a session is cheap and the connection is not.

asyncssh runs on a trio-asyncio loop; everything else is trio. A session is a
trio task in this server's nursery that copies bytes itself (asyncssh's
`redirect()` returns before the copy is done and truncates packs), calling
asyncssh's stream coroutines through `aio_as_trio`. git runs in its own
process group, SIGKILLed in `finally` unless it exited by itself.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import trio

from edge.ssh.aio import GIT_ONLY_SSH_SERVER, aio_as_trio, open_aio_loop
from gitproto.protocol import CHUNK, accept_git_protocol
from gitproto.ssh_command import CommandRefused, GitCommand, parse_command
from node.config import SshConfig
from node.git_proto import StderrTail
from node.git_pump import REAP_TIMEOUT, reap_git
from node.repos import RepoStore
from routing.model import InvalidRepoName, parse_user_name

log = logging.getLogger(__name__)

# Lets the edge send a whole pump CHUNK per packet (asyncssh's default is 32 KiB).
MAX_PKTSIZE = CHUNK
KEEPALIVE_INTERVAL = 30.0  # an edge that vanished without a FIN is dropped in ~2 min
LOGIN_TIMEOUT = 10.0
EXIT_TIMEOUT = 30.0  # git closed its stdout; its exit (and stderr) follow at once
NOT_FOUND = b"ERROR: Repository not found.\n"  # what git prints, gitlab style
# asyncssh pauses a channel's writer above this many unsent bytes (its default
# high-water mark); below it `drain()` returns at once, so it is not called.
WRITE_HIGH_WATER = 64 * 1024
# git's stdout keeps the default 64 KiB pipe, so the edge gets <= 64 KiB packets:
# with a 256 KiB pipe (256 KiB packets) the node saved ~0.02 CPU-s per 100 MiB
# clone but the edge spent 0.09-0.13 s more in 2 of 3 paired runs (asyncssh
# rebuilds its input buffer with `+=` for every read of a packet split across reads).

# The peer went away or the channel broke: routine, logged quietly.
_SESSION_GONE = (asyncssh.Error, ConnectionError)


class SshSetupError(Exception):
    """The SSH keys are unusable; the message names the [ssh] key at fault."""


@dataclass(frozen=True)
class SshKeys:
    host_key: asyncssh.SSHKey
    trusted_edges: asyncssh.SSHAuthorizedKeys

    @property
    def host_key_line(self) -> str:
        """`ssh-ed25519 AAAA...` without a comment: what the node publishes in etcd."""
        line = self.host_key.export_public_key("openssh").decode()
        return " ".join(line.split()[:2])


def load_ssh_keys(config: SshConfig) -> SshKeys:
    """The host key (made on first start) and the trusted edge keys. Blocking."""
    return SshKeys(_host_key(config.host_key_file), _trusted_keys(config.trusted_edge_keys_file))


def _host_key(path: Path) -> asyncssh.SSHKey:
    try:
        return asyncssh.read_private_key(path)
    except FileNotFoundError:
        pass
    except (OSError, asyncssh.KeyImportError) as exc:
        raise SshSetupError(f"[ssh] host_key_file: cannot use {path}: {exc}") from None
    # A node keeps one host key for its lifetime: edges pin it (via etcd).
    key = asyncssh.generate_private_key("ssh-ed25519")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
            out.flush()
            os.fsync(out.fileno())
    except FileExistsError:
        return _host_key(path)  # another process made it first
    except OSError as exc:
        raise SshSetupError(f"[ssh] host_key_file: cannot write {path}: {exc}") from None
    log.info("new SSH host key %s", path)
    return key


def _trusted_keys(path: Path) -> asyncssh.SSHAuthorizedKeys:
    # asyncssh refuses a file with no keys ("No valid entries found"): a listener
    # nobody may use is a misconfiguration, so that is an error here too.
    try:
        return asyncssh.read_authorized_keys(path)
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise SshSetupError(f"[ssh] trusted_edge_keys_file: cannot use {path}: {exc}") from None


@dataclass(frozen=True)
class SshListening:
    """What the listener reports once it accepts connections."""

    address: str
    """`host:port` for etcd: `[ssh] advertise`, or the bound address."""
    host_key: str


class NodeSshServer:
    def __init__(self, config: SshConfig, keys: SshKeys, store: RepoStore) -> None:
        self._config = config
        self._keys = keys
        self._store = store
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._sessions: trio.Nursery | None = None

    async def serve(
        self, *, task_status: trio.TaskStatus[SshListening] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until cancelled; `started(SshListening)` once accepting."""
        async with open_aio_loop(), trio.open_nursery() as sessions:
            self._sessions = sessions
            acceptor = await aio_as_trio(asyncssh.listen)(
                self._config.listen_host,
                self._config.listen_port,
                server_factory=lambda: _EdgeConnection(self),
                server_host_keys=[self._keys.host_key],
                authorized_client_keys=self._keys.trusted_edges,
                **GIT_ONLY_SSH_SERVER,
                window=self._config.window,
                max_pktsize=MAX_PKTSIZE,
                login_timeout=LOGIN_TIMEOUT,
                keepalive_interval=KEEPALIVE_INTERVAL,
            )
            try:
                address = self._config.advertise or _bound_address(acceptor)
                log.info("SSH listening on %s for edges", address)
                task_status.started(SshListening(address, self._keys.host_key_line))
                await trio.sleep_forever()
            finally:
                # asyncssh's close() leaves accepted connections open; close them too.
                acceptor.close()
                for conn in list(self._connections):
                    conn.close()
                sessions.cancel_scope.cancel()

    def _start_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """asyncssh's process factory (an asyncio callback): hand over to trio."""
        assert self._sessions is not None
        try:
            self._sessions.start_soon(self._serve_session, process)
        except RuntimeError:  # the nursery closed: we are shutting down
            process.channel.abort()

    async def _serve_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """One session, start to end; never raises but Cancelled (shutdown)."""
        what = repr(process.command)[:80]
        try:
            await self._run_session(process)
        except* _SESSION_GONE as group:
            log.info("%s: edge went away: %r", what, group.exceptions[0])
        except* Exception:
            # One broken session (git missing, a bug) must not take the listener down.
            log.exception("%s: session failed", what)
            process.channel.abort()

    async def _run_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        try:
            command = parse_command(process.command)
        except CommandRefused as exc:
            _finish(process, f"ERROR: {exc}\n".encode(), 1)
            return
        repo_dir = self._store.existing(command.repo)
        if repo_dir is None:
            _finish(process, NOT_FOUND, 1)
            return
        env = self._git_env(process)
        argv = ["git", command.service.removeprefix("git-"), str(repo_dir)]
        session = GitSshSession(process, argv, env, volume=self._store.root)
        try:
            await session.run()
        finally:
            session.log_outcome(_describe(command, env))

    def _git_env(self, process: asyncssh.SSHServerProcess[bytes]) -> dict[str, str]:
        # Exactly the two names we allow (DESIGN: client env into git has been an RCE).
        sent = process.channel.get_environment_bytes()
        env = self._store.env(accept_git_protocol(sent.get(b"GIT_PROTOCOL")))
        user = _user_name(sent.get(b"GITEDGE_USER"))
        if user is not None:
            env["GITEDGE_USER"] = user
        return env


def _user_name(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return parse_user_name(raw.decode("ascii"))
    except (UnicodeDecodeError, InvalidRepoName):
        return None


def _describe(command: GitCommand, env: dict[str, str]) -> str:
    return f"{command.service} {command.repo} for {env.get('GITEDGE_USER', '-')}"


def _finish(process: asyncssh.SSHServerProcess[bytes], stderr: bytes, status: int) -> None:
    """Refuse a session with a message git shows, and an exit status."""
    process.stderr.write(stderr)
    process.stdout.write_eof()
    process.exit(status)


def _bound_address(acceptor: asyncssh.SSHAcceptor) -> str:
    host, port = acceptor.get_addresses()[0][:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _EdgeConnection(asyncssh.SSHServer):
    """One edge's connection: counts its sessions and refuses all but git sessions."""

    def __init__(self, server: NodeSshServer) -> None:
        self._server = server
        self._conn: asyncssh.SSHServerConnection | None = None
        self._open_sessions = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._server._connections.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._server._connections.discard(self._conn)

    def auth_completed(self) -> None:
        assert self._conn is not None
        log.info("edge connected from %s", self._conn.get_extra_info("peername"))

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[bytes], asyncssh.SSHServerSession[bytes]]:
        assert self._conn is not None
        config = self._server._config
        if self._open_sessions >= config.max_sessions:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, f"more than {config.max_sessions} sessions"
            )
        self._open_sessions += 1
        channel = self._conn.create_server_channel(
            encoding=None, window=config.window, max_pktsize=MAX_PKTSIZE
        )
        return channel, _GitOnlySession(self._server._start_session, self._session_closed)

    def _session_closed(self) -> None:
        self._open_sessions -= 1


class _GitOnlySession(asyncssh.SSHServerProcess[bytes]):
    """Exec only: every other session request is refused at the SSH level."""

    def __init__(
        self,
        process_factory: asyncssh.SSHServerProcessFactory[bytes],
        on_close: Callable[[], None],
    ) -> None:
        super().__init__(process_factory, None, 0, False)
        self._on_close = on_close

    def pty_requested(self, *_: object) -> bool:
        return False

    def shell_requested(self) -> bool:
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._on_close()


class PathScrubber:
    """Rewrites the volume's path out of git's stderr (sans-IO).

    git names the repository by its path on the node (`fatal: '/srv/vol/a/b.git'
    ...`); the client asked for `a/b.git` and learns nothing about our disks.
    Text is held back to the last line end so a path split across two reads is
    still found, but never more than `hold` bytes.
    """

    def __init__(self, volume: Path, hold: int = 4096) -> None:
        root = str(volume).rstrip("/").encode()
        self._replacements = [(root + b"/", b""), (root, b"<volume>")]
        self._pending = b""
        self._hold = hold

    def feed(self, data: bytes) -> bytes:
        text = self._pending + data
        cut = max(text.rfind(b"\n"), text.rfind(b"\r")) + 1
        if cut == 0 and len(text) < self._hold:
            self._pending = text
            return b""
        if cut == 0:
            cut = len(text)
        self._pending = text[cut:]
        return self._scrub(text[:cut])

    def finish(self) -> bytes:
        text, self._pending = self._pending, b""
        return self._scrub(text)

    def _scrub(self, text: bytes) -> bytes:
        for old, new in self._replacements:
            text = text.replace(old, new)
        return text


class GitSshSession:
    """Runs one git service for one SSH session and copies bytes both ways."""

    def __init__(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        argv: list[str],
        env: dict[str, str],
        *,
        volume: Path,
    ) -> None:
        self._process = process
        self._argv = argv
        self._env = env
        self._scrubber = PathScrubber(volume)
        self.stderr = StderrTail()
        self.returncode: int | None = None
        self.killed = False

    async def run(self) -> None:
        proc = await trio.lowlevel.open_process(
            self._argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env,
            start_new_session=True,
        )
        try:
            await self._exchange(proc)
        finally:
            await self._reap(proc)
        # gitlab-shell's order: all output flushed, EOF, then the exit status.
        # Not guarded by is_closing(): that is true right after write_eof().
        self._process.stdout.write_eof()
        self._process.exit(self.returncode if self.returncode is not None else 255)

    async def _exchange(self, proc: trio.Process) -> None:
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        async with trio.open_nursery() as nursery:
            # git may read all its input before it answers, or answer first: copy
            # both directions at once, or a negotiation can deadlock.
            nursery.start_soon(self._channel_to_git, proc.stdin)
            stderr_done = trio.Event()
            nursery.start_soon(self._stderr_to_channel, proc.stderr, stderr_done)
            await self._stdout_to_channel(proc.stdout)
            with trio.move_on_after(EXIT_TIMEOUT):
                await stderr_done.wait()
                self.returncode = await proc.wait()
            # git is done: input the client still sends has no reader.
            nursery.cancel_scope.cancel()

    async def _channel_to_git(self, stdin: trio.abc.SendStream) -> None:
        read = aio_as_trio(self._process.stdin.read)
        try:
            while data := await read(CHUNK):
                try:
                    await stdin.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return  # git stopped reading; its output says why
        finally:
            # The client's EOF is git's EOF: without it a clone waits forever.
            with trio.move_on_after(REAP_TIMEOUT, shield=True):
                await stdin.aclose()

    async def _stdout_to_channel(self, stdout: trio.abc.ReceiveStream) -> None:
        writer = self._process.stdout
        channel = self._process.channel
        drain = aio_as_trio(writer.drain)
        while chunk := bytes(await stdout.receive_some(CHUNK)):
            writer.write(chunk)
            # Back-pressure: a slow edge slows git. Each aio_as_trio call is an
            # asyncio task and two loop hops, so only when the channel holds data
            # back (the edge's window is full); then drain() waits.
            if channel.get_write_buffer_size() > WRITE_HIGH_WATER:
                await drain()

    async def _stderr_to_channel(self, stderr: trio.abc.ReceiveStream, done: trio.Event) -> None:
        writer = self._process.stderr
        drain = aio_as_trio(writer.drain)
        try:
            while chunk := bytes(await stderr.receive_some(CHUNK)):
                self.stderr.feed(chunk)
                if text := self._scrubber.feed(chunk):
                    writer.write(text)
                    await drain()
            if text := self._scrubber.finish():
                writer.write(text)
                await drain()
        finally:
            done.set()

    async def _reap(self, proc: trio.Process) -> None:
        # Edge gone, shutdown, a hung git: killed with its helpers (pack-objects...).
        exited = self.returncode is not None
        self.killed = self.killed or not exited
        await reap_git(proc, exited=exited)

    def log_outcome(self, what: str) -> None:
        if self.killed:
            log.info("%s: git killed before it finished: %s", what, self.stderr.text() or "-")
        elif self.returncode:
            log.warning(
                "%s: git exited with %d: %s", what, self.returncode, self.stderr.text() or "-"
            )
        else:
            log.debug("%s: done", what)
