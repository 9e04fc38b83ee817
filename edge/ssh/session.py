"""One client SSH session: what it may ask for, and the relay of its git run.

`vet_session` is a pure function from what the client asked for (exec command
or shell, env) to a `GitRequest` or a `SessionRefused` carrying the one line
the client sees. `GitSession` then routes the request, opens a channel to
the owning node and copies bytes both ways until git exits.

The relay runs on asyncio (the trio-asyncio loop), not in trio: both of its
ends are asyncssh channels, so every chunk would otherwise cross the loop
boundary twice (read and write). It is still explicit loops with
back-pressure, one chunk in flight per direction (`drain()` after each
write), never asyncssh's `redirect()`, which returns before the copy is done
and truncates packs (DESIGN, "asyncssh on trio").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import asyncssh

from edge.errors import EdgeError, NodeUnavailable
from edge.ssh.nodes import NodeSSHUnavailable
from gitproto.protocol import CHUNK, accept_git_protocol
from gitproto.ssh_command import CommandRefused, GitCommand, parse_command
from routing.model import NodeRecord

log = logging.getLogger("edge.access")

EXIT_TIMEOUT = 30.0
"""git closed its stdout and stderr: its exit status follows at once."""

# Debian's ssh_config sends these by default (SendEnv LANG LC_*): dropped, not refused.
_IGNORED_ENV = re.compile(rb"LANG|LC_[A-Za-z0-9_]*")
_PRINTABLE_NAME = re.compile(r"[^A-Za-z0-9_.-]")

# asyncssh surfaces these client requests as exceptions from read(); none ends the run.
_CLIENT_NOTICES = (asyncssh.BreakReceived, asyncssh.SignalReceived, asyncssh.TerminalSizeChanged)
# A broken channel or connection to the client, or to the node.
_CHANNEL_ERRORS = (asyncssh.Error, OSError)
_NODE_ERRORS = (NodeSSHUnavailable, *_CHANNEL_ERRORS)


class SessionRefused(Exception):
    """The session runs nothing; `line` is what the client sees on stderr."""

    def __init__(self, line: str, status: int = 1) -> None:
        super().__init__(line)
        self.line = line
        self.status = status


@dataclass(frozen=True)
class GitRequest:
    command: GitCommand
    git_protocol: str | None


def shell_greeting(user: str) -> str:
    # GitHub's wording: `ssh -T` is how users check that their key works.
    return (
        f"Hi {user}! You've successfully authenticated, but gitedge does not provide shell access."
    )


def vet_session(*, user: str, command: str | None, env: Mapping[bytes, bytes]) -> GitRequest:
    """What one exec or shell session asked for, as a git request; SessionRefused otherwise.

    Env first: a session that sent `LD_PRELOAD` is refused whatever it runs
    (passing client env into git has been an RCE in peers).
    """
    git_protocol: str | None = None
    for name, value in env.items():
        if name == b"GIT_PROTOCOL":
            git_protocol = accept_git_protocol(value)
            if git_protocol is None:
                raise SessionRefused("gitedge: GIT_PROTOCOL has a value that is not accepted")
        elif not _IGNORED_ENV.fullmatch(name):
            raise SessionRefused(
                f"gitedge: environment variable {_safe_name(name)} is not accepted"
            )
    if command is None:
        raise SessionRefused(shell_greeting(user))
    try:
        return GitRequest(parse_command(command), git_protocol)
    except CommandRefused as exc:
        raise SessionRefused(f"gitedge: {exc}") from None


def subsystem_refusal(subsystem: str) -> SessionRefused:
    return SessionRefused(
        f"gitedge: subsystem {_safe_name(subsystem.encode())} is not supported"
        " (no sftp or scp, only git)"
    )


def _safe_name(raw: bytes) -> str:
    """A client-chosen name, safe to echo on one line."""
    return _PRINTABLE_NAME.sub("?", raw[:64].decode("ascii", "replace")) or "''"


class NodeChannel(Protocol):
    """A git process on a node, reached over the edge's pooled SSH connection."""

    async def read_stdout(self, n: int) -> bytes: ...
    async def read_stderr(self, n: int) -> bytes: ...
    async def write_stdin(self, data: bytes) -> None: ...
    def write_eof(self) -> None: ...
    async def wait(self) -> int: ...
    def close(self) -> None: ...


class Backend(Protocol):
    """What a session needs from the edge (asyncio coroutines)."""

    async def route(self, command: GitCommand, user: str) -> NodeRecord:
        """The node to run `command` on for `user`; raises EdgeError."""
        ...

    async def open_git(self, node: NodeRecord, request: GitRequest, user: str) -> NodeChannel:
        """Start git on the node; raises NodeUnavailable."""
        ...


class Activity:
    """When git data last moved on a connection (for its idle timeout)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


class ClientGone(Exception):
    """The client's channel or connection closed under us."""


class NodeLost(Exception):
    """The node's channel broke before git's exit status arrived."""


@dataclass
class SessionOutcome:
    what: str = "-"
    node: str = "-"
    status: int | None = None
    note: str = ""
    refused: bool = False
    """Ran nothing: refused by vet_session, access, routing or the node's reachability."""
    bytes_up: int = 0
    bytes_down: int = 0


class GitSession:
    """Serves one client session from its first request to its exit status."""

    def __init__(
        self,
        process: asyncssh.SSHServerProcess[bytes],
        user: str,
        backend: Backend,
        activity: Activity,
    ) -> None:
        self._process = process
        self._user = user
        self._backend = backend
        self._activity = activity
        self.outcome = SessionOutcome()

    async def run(self) -> None:
        process = self._process
        started = time.monotonic()
        try:
            request = vet_session(
                user=self._user,
                command=process.command,
                env=process.channel.get_environment_bytes(),
            )
            self.outcome.what = f"{request.command.service} {request.command.repo}"
            node = await self._backend.route(request.command, self._user)
            self.outcome.node = node.node_id
            git = await self._backend.open_git(node, request, self._user)
        except SessionRefused as exc:
            self.outcome.refused = True
            self.outcome.note = exc.line
            self._finish(exc.line, exc.status)
        except EdgeError as exc:
            self.outcome.refused = True
            self.outcome.note = exc.detail
            self._finish(exc.ssh_message, 1)
        else:
            try:
                await self._relay_and_exit(git)
            finally:
                # Client gone, node lost, shutdown: the node kills git when its
                # channel closes (no orphan git processes).
                git.close()
        finally:
            o = self.outcome
            log.info(
                "ssh %s %s node=%s status=%s %.3fs up=%d down=%d %s",
                self._user,
                o.what,
                o.node,
                o.status,
                time.monotonic() - started,
                o.bytes_up,
                o.bytes_down,
                o.note,
            )

    async def _relay_and_exit(self, git: NodeChannel) -> None:
        status: int | None = None
        client_gone = node_lost = False
        try:
            status = await self._relay(git)
        except* ClientGone:
            client_gone = True
        except* (NodeLost, TimeoutError) as group:
            node_lost = True
            cause = group.exceptions[0]
            self.outcome.note = f"node lost: {cause.__cause__ or cause!r}"
        if client_gone:
            self.outcome.note = "client went away"
            return
        if node_lost or status is None:
            self._finish(NodeUnavailable().ssh_message, 1)
            return
        self.outcome.status = status
        # Order matters (DESIGN): output drained (each write was), EOF, then the
        # exit status, or git reports "remote transport reported error". Not
        # guarded by is_closing(): that is true right after write_eof().
        try:
            self._process.stdout.write_eof()
            self._process.exit(status)
        except _CHANNEL_ERRORS:
            self.outcome.note = "client went away at exit"

    async def _relay(self, git: NodeChannel) -> int:
        process = self._process
        async with asyncio.TaskGroup() as tasks:
            watch = tasks.create_task(self._client_closed())
            upload = tasks.create_task(self._client_to_node(git))
            errors = tasks.create_task(self._node_to_client(git.read_stderr, process.stderr))
            self.outcome.bytes_down = await self._node_to_client(git.read_stdout, process.stdout)
            await errors
            try:
                async with asyncio.timeout(EXIT_TIMEOUT):
                    status = await git.wait()
            except NodeSSHUnavailable as exc:
                raise NodeLost() from exc
            # git is done: what the client still sends has no reader.
            watch.cancel()
            upload.cancel()
        return status

    async def _client_closed(self) -> None:
        await self._process.channel.wait_closed()
        raise ClientGone()

    async def _client_to_node(self, git: NodeChannel) -> None:
        stdin = self._process.stdin
        while True:
            try:
                data = await stdin.read(CHUNK)
            except _CLIENT_NOTICES:
                continue
            except _CHANNEL_ERRORS as exc:
                raise ClientGone() from exc
            if not data:
                break
            self._activity.touch()
            self.outcome.bytes_up += len(data)
            try:
                await git.write_stdin(data)  # back-pressure: a slow node slows the client
            except _NODE_ERRORS:
                return  # git stopped reading; its output and exit status say why
        # The client's EOF is git's EOF: without it a clone waits forever.
        with contextlib.suppress(*_NODE_ERRORS):
            git.write_eof()

    async def _node_to_client(
        self, read: Callable[[int], Awaitable[bytes]], writer: asyncssh.SSHWriter[bytes]
    ) -> int:
        copied = 0
        while True:
            try:
                data = await read(CHUNK)
            except _NODE_ERRORS as exc:
                raise NodeLost() from exc
            if not data:
                return copied
            self._activity.touch()
            copied += len(data)
            try:
                writer.write(data)
                await writer.drain()  # back-pressure: a slow client slows git
            except _CHANNEL_ERRORS as exc:
                raise ClientGone() from exc

    def _finish(self, line: str, status: int) -> None:
        """Refuse: one line on stderr, EOF, a non-zero exit status."""
        self.outcome.status = status
        with contextlib.suppress(*_CHANNEL_ERRORS):
            self._process.stderr.write(f"{line}\n".encode())
            self._process.stdout.write_eof()
            self._process.exit(status)
