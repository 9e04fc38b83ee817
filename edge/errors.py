"""Errors the edge answers with, each knowing its wire form.

What the client sees is one of these fixed sentences; the detail (node
address, etcd error, internal paths) goes to the log only.
"""

from __future__ import annotations

import math


class EdgeError(Exception):
    http_status = 500
    public_message = "internal error"
    headers: tuple[tuple[bytes, bytes], ...] = ()
    ssh_exit_status = 1
    """The exit status an SSH client gets with `ssh_message` (git shows neither's cause)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.public_message)
        self.detail = detail or self.public_message

    @property
    def ssh_message(self) -> str:
        """The one line an SSH client sees on stderr."""
        text = self.public_message
        return f"ERROR: {text[:1].upper()}{text[1:]}."


class BadRequest(EdgeError):
    http_status = 400
    public_message = "bad request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # A bad request's reason is the client's own input: safe to show.
        self.public_message = message


class RepoNotFound(EdgeError):
    http_status = 404
    public_message = "repository not found"


class AuthRequired(EdgeError):
    """No or wrong credentials: 401 makes git ask for a user name and token."""

    http_status = 401
    public_message = "authentication required"
    headers = ((b"www-authenticate", b'Basic realm="gitedge"'),)


class Forbidden(EdgeError):
    http_status = 403

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.public_message = reason


class RepoExists(EdgeError):
    http_status = 409
    public_message = "repository already exists"


class Conflict(EdgeError):
    """A replica-set change, repair or verify that does not apply now; the reason
    names only the repository, its regions and volumes, which the caller may see."""

    http_status = 409

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.public_message = reason


class NoCapacity(EdgeError):
    """No live volume to place a new repository on."""

    http_status = 503

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        # Names only a region, which the client chose or was told.
        self.public_message = reason


class NodeUnavailable(EdgeError):
    http_status = 503
    public_message = "repository temporarily unavailable, try again later"


class NoReplicaInSync(EdgeError):
    """No replica of a replicated repository is at its latest push, even after the wait."""

    http_status = 503
    public_message = (
        "no replica of this repository is in sync with its latest push yet; try again in a moment"
    )
    headers = ((b"retry-after", b"5"),)
    ssh_exit_status = 75  # EX_TEMPFAIL (sysexits.h): try again later


class ConsensusUnavailable(EdgeError):
    """A push to a replicated repository while etcd (the consensus) is unreachable."""

    http_status = 503
    public_message = (
        "the consensus store is unreachable: pushes to replicated repositories are refused"
        " until it is back (reads still work); nothing was changed"
    )
    ssh_exit_status = 75


class RoutingUnavailable(EdgeError):
    http_status = 503
    public_message = "routing store unavailable, try again later"


class BadGateway(EdgeError):
    http_status = 502
    public_message = "bad response from the repository's node"


class TooManyOperations(EdgeError):
    """A concurrency limit (user, repository, node, address) and its queue are full,
    or the queue wait ran out. Refused before the node is asked: no git ran."""

    http_status = 429
    public_message = "too many concurrent operations, try again later"
    ssh_exit_status = 1
    RETRY_AFTER = 5
    """Seconds a client is told to wait: long enough for a short operation to end."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.headers = ((b"retry-after", str(self.RETRY_AFTER).encode()),)

    @property
    def ssh_message(self) -> str:
        # The exact line (lowercase, no full stop), as gitlab-shell words its refusals.
        return f"ERROR: {self.public_message}"


class RateLimited(EdgeError):
    """A token bucket (git operations, failed authentications, API writes) is empty."""

    http_status = 429
    ssh_exit_status = 1

    def __init__(self, what: str, retry_after: float, detail: str = "") -> None:
        seconds = max(1, math.ceil(retry_after))
        self.retry_after = seconds
        self.public_message = f"too many {what}, try again in {seconds} seconds"
        super().__init__(detail or self.public_message)
        self.headers = ((b"retry-after", str(seconds).encode()),)

    @property
    def ssh_message(self) -> str:
        return f"ERROR: {self.public_message}"
