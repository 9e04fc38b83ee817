"""One client SSH session: what it may ask for, and how it ends.

`vet_session` is a pure function from what the client asked for (exec command
or shell, env) to a `GitRequest` or a `SessionRefused` carrying the one line
the client sees. `GitSession` (trio) then routes the request, has the session
carried to the owning node (edge/ssh/relay.py) and ends it the way git
expects: all output, EOF, the exit status; or one line and status 1.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from edge.errors import EdgeError, NodeUnavailable
from edge.ssh.channel import ClientGone
from edge.ssh.relay import ClientStream, NodeLost, RelayResult, SessionRequest
from gitproto.protocol import accept_git_protocol
from gitproto.ssh_command import CommandRefused, GitCommand, parse_command
from plumbing.logsafe import printable
from routing.model import NodeRecord

log = logging.getLogger("edge.access")

# Debian's ssh_config sends these by default (SendEnv LANG LC_*): dropped, not refused.
_IGNORED_ENV = re.compile(rb"LANG|LC_[A-Za-z0-9_]*")
_PRINTABLE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
COMMAND_LOG_LIMIT = 200


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


class SessionChannel(ClientStream, Protocol):
    """The client's channel as a session sees it (edge.ssh.channel.ClientChannel)."""

    command: str | None
    subsystem: str | None

    @property
    def environment(self) -> Mapping[bytes, bytes]: ...

    def exit(self, status: int) -> None:
        """EOF, then the exit status; ClientGone if too late."""
        ...

    def refuse(self, line: str, status: int) -> None: ...


class Backend(Protocol):
    """What a session needs from the edge (trio)."""

    async def route(self, command: GitCommand, user: str, client_ip: str) -> NodeRecord:
        """The node to run `command` on for `user`; raises EdgeError (a rate limit too)."""
        ...

    async def carry(
        self, node: NodeRecord, request: SessionRequest, client: ClientStream, client_ip: str
    ) -> RelayResult:
        """Run the session on the node once admitted; raises TooManyOperations (before the
        node is asked), NodeUnavailable, NodeLost, ClientGone."""
        ...


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
    service: str = "-"
    repo: str = "-"
    protocol: str | None = None
    """The client's GIT_PROTOCOL, as vetted."""
    region: str = "-"


class GitSession:
    """Serves one client session from its first request to its exit status."""

    def __init__(
        self, channel: SessionChannel, user: str, backend: Backend, client_ip: str
    ) -> None:
        self._channel = channel
        self._user = user
        self._backend = backend
        self._client_ip = client_ip
        """The client's real address, as the front decided it: what the limits count."""
        self.outcome = SessionOutcome()

    async def run(self) -> None:
        channel, outcome = self._channel, self.outcome
        started = time.monotonic()
        # What the client asked for, as it asked (escaped): the log shows refusals too.
        outcome.what = printable(channel.command, COMMAND_LOG_LIMIT)
        try:
            if channel.subsystem is not None:
                outcome.what = f"subsystem {printable(channel.subsystem, COMMAND_LOG_LIMIT)}"
                raise subsystem_refusal(channel.subsystem)
            request = vet_session(user=self._user, command=channel.command, env=channel.environment)
            outcome.what = f"{request.command.service} {request.command.repo}"
            outcome.service, outcome.repo = str(request.command.service), request.command.repo.path
            outcome.protocol = request.git_protocol
            node = await self._backend.route(request.command, self._user, self._client_ip)
            outcome.node, outcome.region = node.node_id, node.region
            result = await self._backend.carry(
                node,
                SessionRequest(request.command, request.git_protocol, self._user, self._client_ip),
                channel,
                self._client_ip,
            )
        except SessionRefused as exc:
            outcome.refused = True
            outcome.note = exc.line
            self._finish(exc.line, exc.status)
        except EdgeError as exc:
            # Access, routing, limits, or no connection to the node: nothing ran.
            outcome.refused = True
            outcome.note = exc.detail
            self._finish(exc.ssh_message, exc.ssh_exit_status)
        except NodeLost as exc:
            outcome.note = f"node lost: {exc}"
            self._finish(NodeUnavailable().ssh_message, 1)
        except ClientGone:
            outcome.note = "client went away"
        else:
            outcome.status = result.status
            outcome.bytes_up, outcome.bytes_down = result.bytes_up, result.bytes_down
            try:
                channel.exit(result.status)
            except ClientGone:
                outcome.note = "client went away at exit"
        finally:
            log.info(
                "ssh %s %s node=%s status=%s %.3fs up=%d down=%d %s",
                self._user,
                outcome.what,
                outcome.node,
                outcome.status,
                time.monotonic() - started,
                outcome.bytes_up,
                outcome.bytes_down,
                printable(outcome.note, COMMAND_LOG_LIMIT),
            )

    def _finish(self, line: str, status: int) -> None:
        """Refuse: one line on stderr, EOF, a non-zero exit status."""
        self.outcome.status = status
        self._channel.refuse(line, status)
