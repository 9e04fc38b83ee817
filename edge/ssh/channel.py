"""One client session channel, as trio sees it.

asyncssh runs on asyncio (the trio-asyncio loop of `run_edge`) and reports a
session's events through the public `asyncssh.SSHServerSession` callbacks;
the session's relay (edge/ssh/relay.py) runs on trio. `ClientChannel` is that
session object: its callbacks fill one bounded buffer and set trio events,
its awaitables are what the relay calls. Both run on the same thread, so a
callback touching trio state needs no lock, and a chunk costs no loop hop:
`receive()` wakes when data arrived, `send()` writes straight into the
channel and waits only while asyncssh says its buffer is full.

Back-pressure both ways, one CHUNK per direction: past CHUNK bytes of unread
client data the channel stops reading (`pause_reading`, so the client's SSH
window closes); past asyncssh's write buffer high-water mark `send()` waits
for `resume_writing`, for at most `write_timeout` (`[ssh] per_write_timeout`,
Gitea's SSH_PER_WRITE_TIMEOUT): a client that stops reading (its window stays
shut) has its whole connection aborted, and the relay then closes the node's
request, which kills git there.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping

import asyncssh
import trio

from edge.ssh.asyncssh_gap import send_full_packets, skip_unlogged_packet_logs
from gitproto.protocol import CHUNK

log = logging.getLogger(__name__)

# A broken channel or connection to the client.
_CHANNEL_ERRORS = (asyncssh.Error, OSError)


class ClientGone(Exception):
    """The client's channel or connection closed under us."""


class ClientStalled(ClientGone):
    """The client took no output for `write_timeout`: its connection was aborted."""


class Activity:
    """When git data last moved on a connection (for its idle timeout)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def touch(self) -> None:
        self.last = time.monotonic()


class ClientChannel(asyncssh.SSHServerSession[bytes]):
    """A session channel: what the client asked for, its stdin, and its output."""

    def __init__(
        self,
        on_start: Callable[[ClientChannel], None],
        on_close: Callable[[], None],
        activity: Activity,
        *,
        read_limit: int = CHUNK,
        write_timeout: float = math.inf,
    ) -> None:
        self._on_start = on_start
        self._write_timeout = write_timeout
        self._on_close = on_close
        self._activity = activity
        self._read_limit = read_limit
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.command: str | None = None
        """The exec request's command; None for a shell or subsystem."""
        self.subsystem: str | None = None
        self._inbox = bytearray()
        self._reading_paused = False
        self._eof = False
        self._readable = trio.Event()
        self._writable = trio.Event()
        self._writable.set()
        self._closed = trio.Event()

    # -- asyncssh's callbacks (asyncio) ----------------------------------------------

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan
        send_full_packets(chan)  # no short packets into a nearly closed window
        skip_unlogged_packet_logs(chan)

    def shell_requested(self) -> bool:
        return True  # answered with the greeting

    def exec_requested(self, command: str) -> bool:
        self.command = command  # vetted by the session
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        # Accepted only to be answered with a sentence and exit status 1: a bare
        # channel failure reads as "subsystem request failed" and 255.
        self.subsystem = subsystem
        return True

    def session_started(self) -> None:
        self._on_start(self)

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype is not None:
            return  # extended data from a client means nothing to git
        self._inbox += data
        self._readable.set()
        if len(self._inbox) >= self._read_limit and not self._reading_paused and self._chan:
            self._reading_paused = True
            self._chan.pause_reading()  # the client's window stops opening

    def eof_received(self) -> bool:
        self._eof = True
        self._readable.set()
        return True  # half-open: git's output still flows to the client

    def pause_writing(self) -> None:
        if self._writable.is_set():
            self._writable = trio.Event()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed.set()
        self._readable.set()
        self._writable.set()
        self._on_close()

    # -- the session's view (trio) ---------------------------------------------------

    @property
    def environment(self) -> Mapping[bytes, bytes]:
        """The env the client sent, as bytes (vet_session decides what is allowed)."""
        return self._chan.get_environment_bytes() if self._chan else {}

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def receive(self) -> bytes:
        """What the client sent since the last call; b"" once it sent EOF.

        Raises ClientGone if the channel closed without an EOF.
        """
        while not self._inbox:
            if self._eof:
                return b""
            if self._closed.is_set():
                raise ClientGone()
            # Callbacks run on this thread between awaits: no event is missed here.
            self._readable = trio.Event()
            await self._readable.wait()
        data = bytes(self._inbox)
        self._inbox.clear()
        self._activity.touch()
        if self._reading_paused and self._chan is not None:
            self._reading_paused = False
            self._chan.resume_reading()  # may deliver buffered data at once
        return data

    async def send(self, data: bytes) -> None:
        """Write to the client's stdout; returns once asyncssh can take more."""
        await self._write(data, None)

    async def send_stderr(self, data: bytes) -> None:
        await self._write(data, asyncssh.EXTENDED_DATA_STDERR)

    async def _write(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if self._chan is None or self._closed.is_set():
            raise ClientGone()
        try:
            self._chan.write(data, datatype)
        except _CHANNEL_ERRORS as exc:
            raise ClientGone() from exc
        self._activity.touch()
        if not self._writable.is_set():
            with trio.move_on_after(self._write_timeout):
                await self._writable.wait()  # back-pressure: a slow client slows git
            if not self._writable.is_set():
                self._abort_connection()
                raise ClientStalled(f"client took no output for {self._write_timeout}s")
            if self._closed.is_set():
                raise ClientGone()

    def _abort_connection(self) -> None:
        """The whole connection, not the channel: its socket's unsent bytes must go too."""
        if self._chan is None:
            return
        conn = self._chan.get_connection()
        log.info(
            "SSH client %s took no output for %.0fs: connection aborted",
            conn.get_extra_info("peername", ("-",))[0],
            self._write_timeout,
        )
        conn.abort()

    def exit(self, status: int) -> None:
        """End the session: EOF, then the exit status (then asyncssh closes the channel).

        This order, after all output was written, or git reports "remote
        transport reported error" (DESIGN). Not guarded by `is_closing()`: that
        is true right after `write_eof()`. Raises ClientGone if it is too late.
        """
        if self._chan is None:
            raise ClientGone()
        try:
            self._chan.write_eof()
            self._chan.exit(status)
        except _CHANNEL_ERRORS as exc:
            raise ClientGone() from exc

    def refuse(self, line: str, status: int) -> None:
        """One line on stderr, EOF, a non-zero exit status; quietly if the client is gone."""
        if self._chan is None:
            return
        with contextlib.suppress(*_CHANNEL_ERRORS):
            self._chan.write_stderr(f"{line}\n".encode())
        with contextlib.suppress(ClientGone):
            self.exit(status)

    def abort(self) -> None:
        if self._chan is not None:
            self._chan.abort()

    async def wait_closed(self) -> None:
        await self._closed.wait()
