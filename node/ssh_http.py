"""SSH sessions the edge carries to the node over HTTP: one request each.

    POST /<owner>/<name>.git/ssh-upload-pack      (ssh-receive-pack, ssh-upload-archive)
    authorization: Bearer <admin secret>
    git-protocol: version=2                       (optional: the client's GIT_PROTOCOL)
    gitedge-user: alice                           (optional: for hooks, as GITEDGE_USER)
    transfer-encoding: chunked

The edge terminated the client's SSH and checked its access; here git runs as
git-shell would run it (`git upload-pack <repo>`, not --stateless-rpc): one
interactive process for the whole session. The request body is its stdin and
ends where the client's stdin ended; the response body is `gitproto.ssh_frame`
frames: stdout and stderr as they come, then the exit status.

Both directions run at once (v0 negotiation is many round trips on one
process), one CHUNK in flight each way. No git outlives its session: if the
edge goes away (its connection closes, mid-body or after it), the exchange
fails and `reap_git` kills git's process group.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import h11
import trio

from gitproto.protocol import CHUNK, Service, accept_git_protocol
from gitproto.routes import SshSession
from gitproto.ssh_frame import (
    CONTENT_TYPE,
    MAX_PAYLOAD,
    FrameType,
    encode_exit,
    encode_stderr,
    frame_header,
)
from node.git_proto import (
    StderrTail,
    limit_push,
    on_behalf_of,
    session_argv,
    user_from_header,
)
from node.git_pump import NO_CACHE, REAP_TIMEOUT, RequestAborted, reap_git, spawn_git
from node.housekeeper import Housekeeper
from node.http_conn import HttpConn, header
from node.metrics import GitProcessMetrics
from node.repos import RepoStore
from node.scrub import PathScrubber, PktLineScrubber
from plumbing.tcp import enable_keepalive

log = logging.getLogger(__name__)

# What SSH clients saw from the node's own SSH listener before: git's wording, gitlab style.
NOT_FOUND = b"ERROR: Repository not found.\n"
NOT_FOUND_STATUS = 1
# OpenSSH's own status for a session that ended without one (git killed by a signal).
NO_EXIT_STATUS = 255
# git closed its stdout: its stderr and exit follow at once.
EXIT_TIMEOUT = 30.0
# After the exit status the edge ends its request body at once; reading that end
# is what lets this connection carry the next request.
BODY_DRAIN_TIMEOUT = 10.0


COALESCE_STEP = 0.001
"""The first wait for git's stdout to fill while it streams; each next one doubles."""
COALESCE_MAX = 0.004
"""The longest such wait, reached while a pack streams."""
STDOUT_PIPE = 2 * CHUNK
"""git's stdout pipe on a session: room for more than one CHUNK, so a pipe that
filled while the reader waited gives a full read, and the next read follows at
once. A pipe of CHUNK bytes never did: git's 8 KiB writes and sideband headers
leave pages part-used, and it held at most ~217 KB (no read reached CHUNK, so
every read was followed by a wait while git sat blocked on the full pipe).
With this pipe clones took 0.88x the time, side by side in one run
(bench/results/ssh_clone_pipe-vs-c841e1e.md)."""


class ReadPacer:
    """How long git's stdout may fill before the next read (sans-IO).

    git writes 8 KiB at a time (upload-pack relays pack-objects in 8 KiB
    pieces), and reading each at once costs a chunk or frame, a send and a
    wakeup here and at the edge, and short SSH packets to the client. So while
    the output streams (a read found data waiting in the pipe), the pipe fills
    a moment before the next read: COALESCE_STEP, doubling to COALESCE_MAX.
    Output that git had to be waited for (an advertisement, each message of a
    negotiation, progress) is passed on and read again at once, and so is a
    full read: the pipe holds more already.
    """

    def __init__(self, step: float = COALESCE_STEP, longest: float = COALESCE_MAX) -> None:
        self._step = step
        self._longest = longest
        self._delay = 0.0

    def after_read(self, size: int, waited: float) -> float:
        """The wait before the next read, after one of `size` bytes for which git
        was waited for `waited` seconds."""
        if size >= CHUNK:
            return 0.0
        if waited >= self._step:
            self._delay = 0.0  # git had paused: an exchange, not a stream
        else:
            self._delay = min(self._longest, max(self._step, 2 * self._delay))
        return self._delay


class SshSessions:
    """Serves `SshSession` routes for the node's HTTP server."""

    def __init__(
        self,
        store: RepoStore,
        housekeeper: Housekeeper,
        max_push_size: int = 0,
        metrics: GitProcessMetrics | None = None,
    ) -> None:
        self._store = store
        self._housekeeper = housekeeper
        self._max_push_size = max_push_size
        self._metrics = metrics or GitProcessMetrics()

    async def serve(self, conn: HttpConn, request: h11.Request, route: SshSession) -> None:
        """One session, already admitted by `EdgeAuth`: only the edge may run git
        as a user it vouches for."""
        _detect_dead_peer(conn.stream)
        user = user_from_header(header(request, b"gitedge-user"))
        what = f"ssh {route.service} {route.repo} for {user or '-'}"
        with self._store.serving(route.repo) as repo_dir:
            if repo_dir is None:
                log.info("%s: no such repository here", what)
                frames = encode_stderr(NOT_FOUND) + encode_exit(NOT_FOUND_STATUS)
                await _respond_frames(conn, frames)
            else:
                env = on_behalf_of(
                    self._store.env(accept_git_protocol(header(request, b"git-protocol"))), user
                )
                argv = limit_push(session_argv(route.service, repo_dir), self._max_push_size)
                if route.service is Service.RECEIVE_PACK:
                    try:
                        async with self._housekeeper.pushing(route.repo):
                            await self._run(conn, route, argv, env, what)
                    finally:
                        self._housekeeper.push_ended(route.repo)
                else:
                    await self._run(conn, route, argv, env, what)
        await _drain_body(conn)

    async def _run(
        self, conn: HttpConn, route: SshSession, argv: list[str], env: dict[str, str], what: str
    ) -> None:
        with self._metrics.track(str(route.service), "ssh") as process:
            process.returncode = await run_session(conn, argv, env, self._store.root, what)


async def run_session(
    conn: HttpConn, argv: list[str], env: dict[str, str], volume: Path, what: str
) -> int | None:
    """Run git for one session and relay it; git's exit status (None: killed). Raises
    RequestAborted and friends when the exchange cannot complete (the connection then
    closes)."""
    # OSError: the server answers 500.
    proc = await spawn_git(argv, env=env, stdin=True, stdout_pipe=STDOUT_PIPE)
    session = _Session(conn, proc, volume)
    try:
        await conn.send(_response_head())
        await session.run()
    finally:
        await reap_git(proc, exited=session.returncode is not None)
        session.log_outcome(what)
    return session.returncode


def _response_head() -> h11.Response:
    # No length: h11 sends the frames chunked, and the connection stays reusable.
    headers = [("content-type", CONTENT_TYPE), *NO_CACHE]
    return h11.Response(status_code=200, headers=headers, reason=b"OK")


async def _respond_frames(conn: HttpConn, frames: bytes) -> None:
    await conn.send(_response_head())
    await conn.send(h11.Data(data=frames))
    await conn.send(h11.EndOfMessage())


async def _drain_body(conn: HttpConn) -> None:
    """Read what is left of the request body (the edge ends it after the exit status)."""
    with trio.move_on_after(BODY_DRAIN_TIMEOUT):
        try:
            while conn.h11.their_state is h11.SEND_BODY:
                if await conn.next_body_piece() is None:
                    return
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return  # not reusable: the server closes it


def _detect_dead_peer(stream: trio.abc.Stream) -> None:
    """TCP keepalive on a session's connection: an edge that vanished without a FIN
    (a partition, a dead host) fails a receive within ~60 s, and git is killed. A
    session's stdin may be silent for as long as its client likes, so nothing else
    would notice (the SSH listener this replaces sent SSH keepalives for the same
    reason)."""
    if not isinstance(stream, trio.SocketStream):
        return  # TLS wraps a socket stream of its own: its owner sets this
    enable_keepalive(stream)


class _Session:
    def __init__(self, conn: HttpConn, proc: trio.Process, volume: Path) -> None:
        self._conn = conn
        self._proc = proc
        self._scrubber = PathScrubber(volume)
        self._stdout_scrubber = PktLineScrubber(volume)
        self._stdin_scope = trio.CancelScope()
        self.stderr = StderrTail()
        self.returncode: int | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            stderr_done = trio.Event()
            # git may read all its input before it answers, or answer first: copy
            # both directions at once, or a negotiation can deadlock.
            nursery.start_soon(self._body_to_stdin)
            nursery.start_soon(self._stderr_out, stderr_done)
            await self._stdout_out()
            with trio.move_on_after(EXIT_TIMEOUT):
                await stderr_done.wait()
                self.returncode = await self._proc.wait()
            if self.returncode is None:
                raise RequestAborted(f"git closed its output but did not exit in {EXIT_TIMEOUT}s")
            # git is done: what the client still sends has no reader (drained later).
            self._stdin_scope.cancel()
            status = self.returncode if self.returncode >= 0 else NO_EXIT_STATUS
            # gitlab-shell's order: all output flushed, then the exit status.
            await self._conn.send(h11.Data(data=encode_exit(status)))
            await self._conn.send(h11.EndOfMessage())
            nursery.cancel_scope.cancel()

    async def _body_to_stdin(self) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        with self._stdin_scope:
            try:
                # No deadline: a session's stdin is silent while a pack comes down.
                while (piece := await self._conn.next_body_piece(math.inf)) is not None:
                    try:
                        await stdin.send_all(piece)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        break  # git stopped reading; its output and status say why
            finally:
                # The client's EOF is git's EOF: without it a clone waits forever.
                with trio.move_on_after(REAP_TIMEOUT, shield=True):
                    await stdin.aclose()
            await self._watch_for_hangup()

    async def _watch_for_hangup(self) -> None:
        """The body is complete; the edge closing its connection now still ends git
        (it would notice only at its next write, which may be minutes away)."""
        if self._conn.h11.their_state is h11.SEND_BODY:
            return  # git stopped reading early; the rest is drained after the exit
        data = await self._conn.stream.receive_some(CHUNK)
        if not data:
            raise RequestAborted("the edge closed the connection")
        self._conn.h11.receive_data(bytes(data))  # a next request: h11 keeps it

    async def _stdout_out(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        pacer = ReadPacer()
        while True:
            started = trio.current_time()
            # bytes() of a bytes object is the object itself: no copy.
            read = bytes(await stdout.receive_some(CHUNK))
            if not read:
                break
            waited = trio.current_time() - started
            # git's error and progress packets name the repository by its path here.
            await self._send_frames(FrameType.STDOUT, self._stdout_scrubber.feed(read))
            if delay := pacer.after_read(len(read), waited):
                await trio.sleep(delay)
        await self._send_frames(FrameType.STDOUT, self._stdout_scrubber.finish())

    async def _stderr_out(self, done: trio.Event) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        try:
            while chunk := bytes(await stderr.receive_some(CHUNK)):
                self.stderr.feed(chunk)
                await self._send_frames(FrameType.STDERR, self._scrubber.feed(chunk))
            await self._send_frames(FrameType.STDERR, self._scrubber.finish())
        finally:
            done.set()

    async def _send_frames(self, kind: FrameType, data: bytes) -> None:
        """`data` as frames of at most MAX_PAYLOAD. A scrubber may hand out more than
        one read: what it held back of the read before (a line of stderr, a pkt-line
        header or text packet of stdout) comes out in front of this one. Empty `data`
        sends nothing; a slice of all of `data` is `data` itself, not a copy."""
        for start in range(0, len(data), MAX_PAYLOAD):
            piece = data[start : start + MAX_PAYLOAD]
            await self._conn.send_body(frame_header(kind, len(piece)), piece)

    def log_outcome(self, what: str) -> None:
        if self.returncode is None:
            log.info("%s: git killed before it finished: %s", what, self.stderr.for_log())
        elif self.returncode:
            log.warning("%s: git exited with %d: %s", what, self.returncode, self.stderr.for_log())
        else:
            log.debug("%s: done", what)
