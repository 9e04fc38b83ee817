"""TLS over a trio socket with OpenSSL driving the non-blocking fd itself.

The edge serves its clients with it, the node serves edges with it, and the
edge dials TLS nodes with it (client side; the caller checks the certificate
pin, see edge/http/pool.py). It lives here because node must not import edge.

trio.SSLStream runs OpenSSL over memory BIOs: every record takes an extra copy
and each call goes through a lock and a retry loop, and receive_some returns
one TLS record (~16 KiB) per call. With it the edge spent 0.20-0.31 CPU-s per
100 MiB cloned and 0.68 per 100 MiB pushed (bench/http_clone.py). Here
OpenSSL reads and writes the socket itself, trio only says when the fd is
ready, and one receive_some returns every record that has already arrived.

Two tasks use one stream at once (proxy.py uploads the request body while the
response comes down), and either OpenSSL direction may need the other one:
a read can owe a write (an alert) and a write can need a read (a handshake
still running). trio lets one task at a time wait on each direction of an fd,
so each direction has one waiter and the other task queues behind it (see
_Readiness). OpenSSL itself is never entered by two tasks at once: trio runs
one task at a time and no await happens inside an OpenSSL call.
"""

from __future__ import annotations

import operator
import socket
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType

import trio

# Enough records per call to keep per-call Python work off the push path;
# the same size as edge.http.stream.CHUNK.
DEFAULT_RECEIVE_SIZE = 256 * 1024
# trio.SocketStream sets 16 KiB: the fd then reads as writable, and a send is
# accepted, only while less than one TLS record waits unsent, so a slow
# reader (git's index-pack) costs one wake-up per record. 256 KiB measured
# 0.16-0.19 -> 0.14 edge CPU-s per 100 MiB cloned (bench/http_clone.py) and
# 0.084 -> 0.061 in a TLS-only loop; it bounds the unsent bytes the kernel
# queues for one client, as trio's setting does.
NOTSENT_LOWAT = 256 * 1024


class _Conflict:
    """Raises trio.BusyResourceError when a second task enters the same method."""

    __slots__ = ("_busy", "_what")

    def __init__(self, what: str) -> None:
        self._busy = False
        self._what = what

    def __enter__(self) -> None:
        if self._busy:
            raise trio.BusyResourceError(f"another task is already in {self._what}")
        self._busy = True

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._busy = False


class _Readiness:
    """Waits for one direction of the fd; one task on the fd, the others behind it.

    A task that finds the direction taken must not wait on the fd itself (trio
    raises BusyResourceError) and must not assume its own OpenSSL call is still
    blocked when the first task wakes: that task's call may have moved the
    shared TLS state on. So it parks until the first task's wait ends and then
    retries its OpenSSL call, which either succeeds or says what to wait for.
    """

    __slots__ = ("_fd", "_lot", "_wait", "busy")

    def __init__(self, fd: int, wait: Callable[[int], Awaitable[None]]) -> None:
        self._fd = fd
        self._wait = wait
        self._lot = trio.lowlevel.ParkingLot()
        self.busy = False

    async def wait(self) -> None:
        if self.busy:
            await self._lot.park()
            return
        self.busy = True
        try:
            await self._wait(self._fd)
        finally:
            self.busy = False
            self._lot.unpark_all()


class SocketTLSStream(trio.abc.Stream):
    """One end of a TLS connection over a trio.SocketStream: the server end of
    an accepted one, or with `server_side=False` the client end of a dialled one.

    Takes the transport's fd over: after construction the SocketStream is
    closed (closing it again is harmless) and this stream alone closes the fd.
    Like trio.SSLStream with https_compatible=True, a TCP EOF without
    close_notify is a plain EOF (git clients do that) and aclose does not send
    close_notify.
    """

    def __init__(
        self,
        transport: trio.SocketStream,
        context: ssl.SSLContext,
        *,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        # detach() leaves the trio socket closed without closing the fd, so the
        # SSLSocket below is its only owner and closes it exactly once.
        raw = socket.socket(fileno=transport.socket.detach())
        try:
            raw.setblocking(False)
            if raw.family in (socket.AF_INET, socket.AF_INET6):
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if hasattr(socket, "TCP_NOTSENT_LOWAT"):  # Linux, macOS
                    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)
            # wrap_socket moves the fd into the SSLSocket (raw is detached).
            self._sock = context.wrap_socket(
                raw,
                server_side=server_side,
                server_hostname=server_hostname,
                do_handshake_on_connect=False,
            )
        except BaseException:
            raw.close()  # a no-op once wrap_socket has taken the fd
            raise
        self._fd = self._sock.fileno()
        self._readable = _Readiness(self._fd, trio.lowlevel.wait_readable)
        self._writable = _Readiness(self._fd, trio.lowlevel.wait_writable)
        self._send_conflict = _Conflict("send_all or wait_send_all_might_not_block")
        self._receive_conflict = _Conflict("receive_some")
        self._handshake_conflict = _Conflict("do_handshake")
        self._handshake_done = False
        self._eof = False
        self._closed = False
        # Set when the TLS stream is unusable: an OpenSSL error, or a send or
        # handshake interrupted with OpenSSL midway through a record.
        self._broken: BaseException | None = None

    @property
    def socket(self) -> ssl.SSLSocket:
        """The TLS socket, for its peer address, cipher or ALPN choice; do no I/O on it."""
        return self._sock

    def _check_usable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("TLS stream is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("TLS stream is broken") from self._broken

    def _fail(self, exc: BaseException) -> trio.BrokenResourceError:
        self._broken = exc
        return trio.BrokenResourceError(f"TLS failed: {exc!r}")

    async def do_handshake(self) -> None:
        """Complete the handshake; the caller bounds it with a deadline.

        Optional: the first receive_some or send_all would run it too, but
        without a deadline of its own. Raises trio.BrokenResourceError when the
        peer speaks something other than TLS, refuses the handshake or hangs up.
        """
        with self._handshake_conflict:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            if not self._handshake_done:
                waited = await self._drive(self._handshake_step)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    def _handshake_step(self) -> bool:
        self._sock.do_handshake()
        self._handshake_done = True
        return True

    async def _drive(self, step: Callable[[], bool]) -> bool:
        """Call `step` (one OpenSSL call) until it returns True, waiting on the fd
        whenever OpenSSL asks to; returns whether it waited.

        For the handshake and sends, which OpenSSL cannot resume from another
        state: interrupted midway (cancelled, or an error), the stream is broken.
        """
        waited = False
        try:
            while True:
                self._check_usable()
                try:
                    if step():
                        return waited
                except ssl.SSLWantReadError:
                    await self._readable.wait()
                except ssl.SSLWantWriteError:
                    await self._writable.wait()
                except OSError as exc:  # ssl.SSLError included
                    raise self._fail(exc) from exc
                waited = True
        except BaseException as exc:
            if self._broken is None and not self._closed:
                self._broken = exc
            raise

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to max_bytes of plaintext, at least one byte; b"" at EOF.

        Waits for the first record, then adds every record already decrypted
        or already in the kernel's buffer, so a fast upload comes up in a few
        large pieces instead of one call per 16 KiB record.
        """
        with self._receive_conflict:
            size = DEFAULT_RECEIVE_SIZE if max_bytes is None else operator.index(max_bytes)
            if size < 1:
                raise ValueError("max_bytes must be >= 1")
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            sock = self._sock
            waited = False
            data = b""
            while not self._eof:
                self._check_usable()
                if self._readable.busy and not sock.pending():
                    # The sender waits for bytes its handshake step needs; reading
                    # them here would leave it waiting on an fd with nothing left.
                    await self._readable.wait()
                    waited = True
                    continue
                try:
                    data = sock.recv(size)
                except ssl.SSLWantReadError:
                    await self._readable.wait()
                    waited = True
                    continue
                except ssl.SSLWantWriteError:
                    await self._writable.wait()
                    waited = True
                    continue
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    # close_notify, or a TCP EOF without one (https-compatible).
                    data = b""
                except OSError as exc:  # ssl.SSLError included
                    raise self._fail(exc) from exc
                break
            if not data:
                self._eof = True
            elif len(data) < size:
                data = self._receive_arrived(data, size)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def _receive_arrived(self, first: bytes, size: int) -> bytes:
        """first plus what can be read without waiting, up to size bytes in all."""
        chunks = [first]
        got = len(first)
        sock = self._sock
        while got < size:
            try:
                more = sock.recv(size - got)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                more = b""
            except OSError as exc:
                # Hand over the records that arrived intact; the next call raises.
                self._broken = exc
                break
            if not more:
                self._eof = True
                break
            chunks.append(more)
            got += len(more)
        return first if len(chunks) == 1 else b"".join(chunks)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of data; if interrupted, the stream is broken for good.

        OpenSSL runs without SSL_MODE_ENABLE_PARTIAL_WRITE (CPython does not
        set it), so after SSL_write says want-write it has already sent part of
        the buffer and must be called again with the same bytes; a send
        cancelled at that point cannot be resumed or taken back.
        """
        with self._send_conflict:
            self._check_usable()
            await trio.lowlevel.checkpoint_if_cancelled()
            with memoryview(data) as view, view.cast("B") as octets:
                total = len(octets)
                sent = 0

                def send_step() -> bool:
                    nonlocal sent
                    # Same offset after a want-write: the same bytes again.
                    sent += self._sock.send(octets[sent:])
                    return sent >= total

                waited = await self._drive(send_step) if total else False
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict:
            self._check_usable()
            await self._writable.wait()

    async def aclose(self) -> None:
        """Close the socket now (https-compatible: no close_notify)."""
        if not self._closed:
            self._closed = True
            # Wakes any task waiting on the fd with ClosedResourceError, and must
            # come before close() so trio forgets the fd before its number is reused.
            trio.lowlevel.notify_closing(self._fd)
            self._sock.close()
        await trio.lowlevel.checkpoint()
