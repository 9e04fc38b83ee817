"""Run one git service for one HTTP request and stream it both ways.

The request body goes to git's stdin and git's stdout comes back as a chunked
response, in two concurrent tasks: git reads all of a request before it answers
only in some protocol phases, so pumping one direction at a time can deadlock.
Memory per request is a few CHUNK-sized buffers, whatever the pack size.

No git outlives its request: it runs in its own process group, and unless it
has exited by itself the whole group (with `pack-objects`, `index-pack`...) is
SIGKILLed in `finally`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import h11
import trio

from gitproto.protocol import CHUNK
from node.git_proto import BodyDecodeError, BodyDecoder, StderrTail
from node.http_conn import Header, HttpConn
from node.scrub import PktLineScrubber

log = logging.getLogger(__name__)

NO_CACHE: list[Header] = [
    # What http-backend sends (hdr_nocache): advertisements and results are live.
    ("cache-control", "no-cache, max-age=0, must-revalidate"),
    ("expires", "Fri, 01 Jan 1980 00:00:00 GMT"),
    ("pragma", "no-cache"),
]
# git closes stdout as it exits; its stderr may trail by a moment.
EXIT_TIMEOUT = 30.0
STDERR_GRACE = 5.0
REAP_TIMEOUT = 5.0
_F_SETPIPE_SZ = 1031  # Linux: a bigger pipe lets one read take a whole CHUNK


class RequestAborted(Exception):
    """The exchange failed after the response began: the connection must close."""


class GitExchange:
    def __init__(
        self,
        conn: HttpConn,
        proc: trio.Process,
        *,
        content_type: str,
        prefix: bytes,
        decoder: BodyDecoder | None,
        volume: Path,
    ) -> None:
        self._conn = conn
        self._scrubber = PktLineScrubber(volume)
        self._proc = proc
        self._content_type = content_type
        self._prefix = prefix
        self._decoder = decoder
        self._stdin_scope = trio.CancelScope()
        self._stderr_done = trio.Event()
        self.stderr = StderrTail()
        self.returncode: int | None = None
        self.body_error: BodyDecodeError | None = None

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._drain_stderr)
            if self._decoder is not None:
                nursery.start_soon(self._feed_stdin, self._decoder)
            await self._relay_stdout()
            with trio.move_on_after(EXIT_TIMEOUT):
                self.returncode = await self._proc.wait()
            if self.returncode is None:
                log.error("git closed its output but did not exit in %ss", EXIT_TIMEOUT)
                raise RequestAborted("git hung")
            # git is done; an unread rest of the body only means the connection closes.
            self._stdin_scope.cancel()
            await self._finish_response()
            with trio.move_on_after(STDERR_GRACE):
                await self._stderr_done.wait()
            nursery.cancel_scope.cancel()

    async def _relay_stdout(self) -> None:
        stdout = self._proc.stdout
        assert stdout is not None
        pending = self._prefix
        # Not paced (node.ssh_http.ReadPacer): here the client, not an SSH front, takes the pack
        # as fast as git makes it, and pacing measured slower (bench/results/
        # http_clone_pace-vs-4ea4f0d-run2.md: 1.37x the direct clone time).
        # bytes() of a bytes object is the object itself: no copy.
        while read := bytes(await stdout.receive_some(CHUNK)):
            # git's ERR and side-band text packets name the repository by its path here.
            if not (chunk := self._scrubber.feed(read)):
                continue
            if not self._conn.response_started:
                headers = [("content-type", self._content_type), *NO_CACHE]
                await self._conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
            await self._conn.send(h11.Data(data=pending + chunk if pending else chunk))
            pending = b""
        if (rest := self._scrubber.finish()) and self._conn.response_started:
            await self._conn.send(h11.Data(data=rest))

    async def _finish_response(self) -> None:
        if self._conn.response_started:
            # Even after a failure: git's own pkt-line error is what the client reads.
            await self._conn.send(h11.EndOfMessage())
        elif self.returncode == 0:
            await self._conn.respond(
                200, self._prefix, content_type=self._content_type, headers=NO_CACHE
            )
        else:
            await self._conn.respond_text(500, "git failed on the node")

    async def _feed_stdin(self, decoder: BodyDecoder) -> None:
        stdin = self._proc.stdin
        assert stdin is not None
        with self._stdin_scope:
            try:
                while (piece := await self._conn.next_body_piece()) is not None:
                    for decoded in decoder.feed(piece):
                        try:
                            await stdin.send_all(decoded)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return  # git stopped reading; its output says why
                decoder.finish()
            except BodyDecodeError as exc:
                self.body_error = exc
                self._nursery.cancel_scope.cancel()
            finally:
                # The end of the request body is git's end of input.
                with trio.move_on_after(REAP_TIMEOUT, shield=True):
                    await stdin.aclose()

    async def _drain_stderr(self) -> None:
        stderr = self._proc.stderr
        assert stderr is not None
        try:
            while data := bytes(await stderr.receive_some(CHUNK)):
                self.stderr.feed(data)
        finally:
            self._stderr_done.set()


async def serve_git(
    conn: HttpConn,
    argv: Sequence[str],
    *,
    env: dict[str, str],
    content_type: str,
    volume: Path,
    prefix: bytes = b"",
    decoder: BodyDecoder | None = None,
) -> int | None:
    """Run `argv`, feed it the request body (if `decoder`), stream its stdout back;
    git's exit status (None: killed before it exited)."""
    proc = await spawn_git(argv, env=env, stdin=decoder is not None)
    exchange = GitExchange(
        conn, proc, content_type=content_type, prefix=prefix, decoder=decoder, volume=volume
    )
    try:
        await exchange.run()
    finally:
        await reap_git(proc, exited=exchange.returncode is not None)
        _log_outcome(argv, exchange)
    if exchange.body_error is not None:
        if conn.response_started:
            raise RequestAborted(str(exchange.body_error))
        await conn.respond_text(400, str(exchange.body_error))
    return exchange.returncode


async def spawn_git(
    argv: Sequence[str], *, env: dict[str, str], stdin: bool, stdout_pipe: int = CHUNK
) -> trio.Process:
    """Start git in its own process group (so `reap_git` can kill its helpers too),
    with pipes for stdout (of `stdout_pipe` bytes, where Linux allows), stderr and,
    if `stdin`, stdin. Raises OSError."""
    proc = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    if isinstance(proc.stdout, trio.lowlevel.FdStream):
        _grow_pipe(proc.stdout.fileno(), stdout_pipe)
    return proc


async def reap_git(proc: trio.Process, *, exited: bool) -> None:
    """Wait for git (killing its process group first unless it `exited`), close its pipes."""
    with trio.move_on_after(REAP_TIMEOUT, shield=True):
        if not exited:
            # Still running (client gone, timeout, bug): kill git and its helpers.
            # The group id is git's pid, which cannot be reused before we reap it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                await pipe.aclose()


def _grow_pipe(fd: int, size: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)


def _log_outcome(argv: Sequence[str], exchange: GitExchange) -> None:
    command = " ".join(argv[:2])
    if exchange.returncode is None:
        log.info("%s killed before it finished: %s", command, exchange.stderr.for_log())
    elif exchange.returncode != 0:
        log.warning(
            "%s exited with %d: %s", command, exchange.returncode, exchange.stderr.for_log()
        )
