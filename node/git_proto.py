"""Sans-IO pieces of serving smart HTTP with the git binary.

What git's own `http-backend.c` (git 2.39) decides, as pure functions: the argv
of each service, the `# service=` line before a v0/v1 advertisement, the child's
environment, and request bodies decoded from gzip in bounded pieces; and, for
SSH sessions, git's stderr with the volume's path rewritten out. No trio here.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from gitproto.protocol import CHUNK, Service, wants_v2
from plumbing.logsafe import printable
from routing.model import InvalidRepoName, parse_user_name

MAX_STDERR = 64 * 1024
STDERR_LOG_LIMIT = 2000


class BodyDecodeError(Exception):
    """A request body we cannot decode; answered with 400 if nothing was sent yet."""


class UnsupportedEncoding(Exception):
    """A Content-Encoding other than gzip; answered with 415."""


def pkt_line(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


FLUSH = b"0000"


def advertisement_prefix(service: Service, git_protocol: str | None) -> bytes:
    """What http-backend writes before the advertisement (gitprotocol-http "Smart
    Server Response"): `# service=...` and a flush, but not for protocol v2, whose
    capability advertisement stands alone. Decided on GIT_PROTOCOL alone, as git
    does, so receive-pack (v0 only) with `version=2` gets no prefix either."""
    if wants_v2(git_protocol):
        return b""
    return pkt_line(f"# service={service.value}\n".encode()) + FLUSH


def info_refs_argv(service: Service, repo_dir: Path) -> list[str]:
    # Exactly http-backend.c's get_info_refs() in git 2.39: no --stateless-rpc;
    # --http-backend-info-refs (formerly --advertise-refs) implies it.
    return ["git", service.verb, "--http-backend-info-refs", str(repo_dir)]


def rpc_argv(service: Service, repo_dir: Path) -> list[str]:
    # http-backend.c's service_rpc().
    return ["git", service.verb, "--stateless-rpc", str(repo_dir)]


def session_argv(service: Service, repo_dir: Path) -> list[str]:
    """An SSH-style session: what git-shell runs for `git-upload-pack '<repo>'`.

    Not --stateless-rpc: one git process serves the whole interactive session
    (v0 negotiation rounds, v2 commands) on one stdin and stdout.
    """
    return ["git", service.verb, str(repo_dir)]


def limit_push(argv: list[str], max_push_size: int) -> list[str]:
    """A client's receive-pack with git's receive.maxInputSize: index-pack (or
    unpack-objects) stops reading at that many bytes and dies with "pack exceeds
    maximum allowed size"; receive-pack relays that over the sideband, refuses
    every ref, and the quarantined objects are dropped, so nothing changes."""
    if max_push_size <= 0 or argv[1:2] != [Service.RECEIVE_PACK.verb]:
        return argv
    return [argv[0], "-c", f"receive.maxInputSize={max_push_size}", *argv[1:]]


def advertisement_type(service: Service) -> str:
    return f"application/x-{service.value}-advertisement"


def request_type(service: Service) -> str:
    return f"application/x-{service.value}-request"


def result_type(service: Service) -> str:
    return f"application/x-{service.value}-result"


def child_env(base: Mapping[str, str], home: Path, git_protocol: str | None) -> dict[str, str]:
    """A clean environment: nothing of the client's but a checked GIT_PROTOCOL.

    Passing client-controlled env to git has been an RCE (LD_PRELOAD, GIT_*);
    the node's own environment is not passed either, beyond PATH.
    """
    env = {
        "PATH": base.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(home),
        "LC_ALL": "C",  # git's messages in the log are English whatever the host says
        "GIT_CONFIG_NOSYSTEM": "1",
        # receive-pack may write reflogs; without an identity in a bare env git
        # can refuse. http-backend sets the same two variables.
        "GIT_COMMITTER_NAME": "gitedge",
        "GIT_COMMITTER_EMAIL": "gitedge@localhost",
    }
    if git_protocol:
        env["GIT_PROTOCOL"] = git_protocol
    return env


HIDDEN_REFS = "refs/gitedge/"
"""The node's own refs (replication's objects in flight): no user sees or moves them."""


def user_from_header(raw: bytes | None) -> str | None:
    """The `gitedge-user` an edge sends with a request made on a user's behalf."""
    if raw is None:
        return None
    try:
        return parse_user_name(raw.decode("ascii"))
    except (UnicodeDecodeError, InvalidRepoName):
        return None


def on_behalf_of(env: Mapping[str, str], user: str | None) -> dict[str, str]:
    """`env` for git serving a user through an edge: GITEDGE_USER for hooks, and
    refs/gitedge/ hidden (`transfer.hideRefs`): not advertised, and receive-pack
    rejects any update of it with git's own "deny updating a hidden ref", before
    the pre-receive vote sees the push. The node's own transfers between replicas
    carry no user, so they still write there (node/replication.py).

    As config in the environment (GIT_CONFIG_COUNT, git >= 2.31), appended to
    any already there.
    """
    out = dict(env)
    if user is None:
        return out
    out["GITEDGE_USER"] = user
    index = int(out.get("GIT_CONFIG_COUNT", "0"))
    out[f"GIT_CONFIG_KEY_{index}"] = "transfer.hideRefs"
    out[f"GIT_CONFIG_VALUE_{index}"] = HIDDEN_REFS
    out["GIT_CONFIG_COUNT"] = str(index + 1)
    return out


class BodyDecoder:
    """An identity request body: passes pieces through."""

    def feed(self, data: bytes) -> Iterator[bytes]:
        if data:
            yield data

    def finish(self) -> None:
        """The body ended; raise BodyDecodeError if that is too early."""


class GzipBodyDecoder(BodyDecoder):
    """Inflates a gzip body in pieces of at most `max_piece` bytes.

    `max_length` bounds each output, so a gzip bomb costs one piece of memory at
    a time; the caller writes each piece to git (back-pressure) before asking for
    the next. Like http-backend, data after the end of the gzip stream is ignored.
    """

    def __init__(self, max_piece: int = CHUNK) -> None:
        self._inflate = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        self._max = max_piece

    def feed(self, data: bytes) -> Iterator[bytes]:
        pending = data
        while not self._inflate.eof:
            try:
                piece = self._inflate.decompress(pending, self._max)
            except zlib.error as exc:
                raise BodyDecodeError(f"bad gzip request body: {exc}") from None
            if piece:
                yield piece
            pending = self._inflate.unconsumed_tail
            # A full piece may leave output inside zlib even with no input left.
            if not pending and len(piece) < self._max:
                return

    def finish(self) -> None:
        if not self._inflate.eof:
            raise BodyDecodeError("request ended in the middle of the gzip stream")


def body_decoder(content_encoding: bytes | None) -> BodyDecoder:
    """The decoder for a request's Content-Encoding; raises UnsupportedEncoding."""
    coding = (content_encoding or b"").strip().lower()
    if coding in (b"", b"identity"):
        return BodyDecoder()
    if coding in (b"gzip", b"x-gzip"):
        return GzipBodyDecoder()
    raise UnsupportedEncoding(coding.decode("ascii", "replace"))


class StderrTail:
    """Keeps the first `limit` bytes of a child's stderr and counts the rest."""

    def __init__(self, limit: int = MAX_STDERR) -> None:
        self._limit = limit
        self._kept = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> None:
        room = self._limit - len(self._kept)
        self._kept += data[:room]
        self.dropped += max(0, len(data) - room)

    def text(self) -> str:
        text = self._kept.decode("utf-8", "replace").strip()
        if self.dropped:
            text += f"\n[{self.dropped} more bytes of stderr dropped]"
        return text

    def for_log(self) -> str:
        """The text on one log line: git's stderr may quote what a client sent."""
        return printable(self.text(), STDERR_LOG_LIMIT) if self._kept or self.dropped else "-"
