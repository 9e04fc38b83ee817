"""What every part that moves git data agrees on: the service names, the
`GIT_PROTOCOL` rule, and the size of one piece of pumped data.

Sans-IO, shared by the edge and the node.
"""

from __future__ import annotations

import re
from enum import StrEnum

# Large reads keep per-chunk Python work off the hot path; at most a few such
# chunks are in flight per direction of a connection, so memory stays bounded
# (DESIGN: "Stream, never buffer", <= 1 MiB per direction).
CHUNK = 256 * 1024

# gitprotocol-v2: a colon-separated list of key[=value]. Anything else is
# refused or dropped rather than passed to git, because it is client-controlled.
_GIT_PROTOCOL = re.compile(r"[A-Za-z0-9=:._-]{1,256}")


class Service(StrEnum):
    """A git service a client may run: over HTTP the first two, over SSH all three."""

    UPLOAD_PACK = "git-upload-pack"
    RECEIVE_PACK = "git-receive-pack"
    UPLOAD_ARCHIVE = "git-upload-archive"

    @property
    def writes(self) -> bool:
        return self is Service.RECEIVE_PACK

    @property
    def verb(self) -> str:
        """The git subcommand: `upload-pack`."""
        return self.value.removeprefix("git-")


HTTP_SERVICES = frozenset({Service.UPLOAD_PACK, Service.RECEIVE_PACK})


def valid_git_protocol(value: str) -> bool:
    return _GIT_PROTOCOL.fullmatch(value) is not None


def accept_git_protocol(raw: bytes | None) -> str | None:
    """A `Git-Protocol` header (or `GIT_PROTOCOL` env value) if it is safe to
    hand to git as GIT_PROTOCOL, else None."""
    if raw is None:
        return None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    return text if valid_git_protocol(text) else None


def wants_v2(git_protocol: str | None) -> bool:
    """git's `determine_protocol_version_server()`: the highest `version=N` wins."""
    if not git_protocol:
        return False
    return any(item == "version=2" for item in git_protocol.split(":"))
