"""Carrying one SSH git session to its node: one HTTP/1.1 request on a pooled connection.

    POST /<owner>/<name>.git/ssh-upload-pack HTTP/1.1     (gitproto.routes.ssh_session_target)
    authorization: Bearer ...                            (conn.auth_line: every request has it)
    git-protocol: version=2                              (the client's vetted GIT_PROTOCOL)
    gitedge-user: alice
    x-forwarded-for: 203.0.113.7                         (the client's address, for the log)
    transfer-encoding: chunked

The client's stdin streams up as the chunked request body while the node's
framed stdout, stderr and exit status (gitproto.ssh_frame) stream down as the
response body, at once: a v0 negotiation is many round trips inside the one
request. One CHUNK in flight per direction: nothing is read from the node
until the client's channel took the last frame, nothing from the client until
the node's socket took the last chunk. The client's EOF ends the request body
(the node turns it into git's EOF); after the exit status the edge ends the
body itself, and then the connection goes back to the pool
(gitlab-shell carries SSH sessions to Gitaly the same way, as streaming RPCs).

h11 writes the request and reads the response head (`h11.Connection(h11.CLIENT)`);
the response body, the whole download, is decoded by the edge's own strict
framer (`BodyFramer.decode`, edge/proto/body.py), which hands the frame decoder
views of each read instead of h11's copies and per-chunk events: for a 100 MiB
clone, h11 and the frames cost 50-130 ms of edge CPU, the framer and the frames
~10 ms (bench/results/ssh_clone_*). Runs on trio: the client side is a `ClientStream`
(edge/ssh/channel.py over asyncssh, or a test's fake).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

import h11
import trio

from edge.http.pool import NodeConn, NodePool
from edge.proto.body import BodyError, BodyFramer
from edge.ssh.channel import ClientGone
from gitproto.routes import ssh_session_target
from gitproto.ssh_command import GitCommand
from gitproto.ssh_frame import CONTENT_TYPE, FrameDecoder, FrameError, Stderr, Stdout
from routing.model import NodeRecord

log = logging.getLogger(__name__)

END_GRACE = 5.0
"""After the exit status: how long ending the request body may take before the
connection is given up instead of pooled."""

_NODE_IO_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class ClientStream(Protocol):
    """The client's side of a session, as the relay uses it (edge.ssh.channel.ClientChannel)."""

    async def receive(self) -> bytes:
        """Client data; b"" at its EOF; ClientGone if it went away."""
        ...

    async def send(self, data: bytes) -> None:
        """To the client's stdout, with back-pressure; ClientGone if it went away."""
        ...

    async def send_stderr(self, data: bytes) -> None: ...

    async def wait_closed(self) -> None: ...


@dataclass(frozen=True)
class SessionRequest:
    command: GitCommand
    git_protocol: str | None
    user: str
    client_ip: str = ""
    """The client's address as the front decided it (PROXY header included): the
    node's log line names it (X-Forwarded-For, as the HTTPS front sends)."""


class NodeLost(Exception):
    """The node broke off, or answered other than with a session, before the exit
    status. The message is for the log; the client sees NodeUnavailable's line."""


class _StaleConnection(NodeLost):
    """A pooled connection was closed by the node before it answered anything,
    and nothing of the client's was sent on it: the session may start again."""


@dataclass
class RelayResult:
    status: int
    reusable: bool
    """Both messages complete and keep-alive: the connection may carry another request."""
    bytes_up: int = 0
    bytes_down: int = 0


@dataclass
class RelayStats:
    """How SSH sessions got their node connection (all come from the shared NodePool)."""

    connects: int = 0
    reuses: int = 0
    retries: int = 0
    """Sessions started again on a fresh connection after a pooled one was found dead."""


@dataclass
class NodeSessions:
    """Carries sessions over `pool`, the HTTPS front's pool of node connections."""

    pool: NodePool
    head_timeout: float
    """The longest wait for a node's response head (it answers before git says anything)."""
    stats: RelayStats = field(default_factory=RelayStats)

    async def carry(
        self, node: NodeRecord, request: SessionRequest, client: ClientStream
    ) -> RelayResult:
        """Run the session on `node`. Raises NodeUnavailable (no connection), NodeLost
        or ClientGone; the connection is pooled again only after a clean exchange."""
        for attempt in range(2):
            conn = await self.pool.acquire(node.http_url, attempt > 0, node_id=node.node_id)
            if conn.reused:
                self.stats.reuses += 1
            else:
                self.stats.connects += 1
            try:
                result = await relay_session(conn, request, client, head_timeout=self.head_timeout)
            except _StaleConnection:
                await conn.stream.aclose()
                if attempt == 0:
                    # It raced the node's idle close (DESIGN, "Pooled keep-alive"):
                    # nothing of the session was lost, so start it on a fresh one.
                    log.info("node %s closed a pooled connection; retrying", node.node_id)
                    self.stats.retries += 1
                    continue
                raise
            except BaseException:
                await conn.stream.aclose()
                raise
            if not (result.reusable and self.pool.release(conn)):
                await conn.stream.aclose()
            return result
        raise AssertionError("unreachable")


async def relay_session(
    conn: NodeConn, request: SessionRequest, client: ClientStream, *, head_timeout: float
) -> RelayResult:
    """One session as one exchange on `conn` (which the caller owns and closes)."""
    return await _Exchange(conn, client).run(request, head_timeout)


def _response_body(headers: dict[bytes, bytes]) -> BodyFramer:
    """The response body's framing, from the head h11 read (it checked that a chunked
    response has no Content-Length too)."""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        return BodyFramer.chunked()
    if (length := headers.get(b"content-length")) is not None:
        return BodyFramer.length(int(length))
    return BodyFramer.until_close()


def request_head(conn: NodeConn, request: SessionRequest) -> h11.Request:
    headers = [(b"host", conn.host_header)]
    if conn.auth_line:
        name, _, value = conn.auth_line.partition(b":")
        headers.append((name.strip(), value.strip()))
    if request.git_protocol:
        headers.append((b"git-protocol", request.git_protocol.encode()))
    if request.client_ip:
        headers.append((b"x-forwarded-for", request.client_ip.encode()))
    headers += [(b"gitedge-user", request.user.encode()), (b"transfer-encoding", b"chunked")]
    target = ssh_session_target(request.command.repo, request.command.service)
    return h11.Request(method=b"POST", target=target, headers=headers)


class _Exchange:
    def __init__(self, conn: NodeConn, client: ClientStream) -> None:
        self._conn = conn
        self._stream = conn.stream
        self._received_before = conn.stream.bytes_in
        self._client = client
        self._http = h11.Connection(h11.CLIENT)
        self._body: BodyFramer | None = None
        """The response body's framer, once the head is read (h11 reads no further)."""
        self._extra_after_body = False
        self._frames = FrameDecoder()
        self._stopping = False
        self._client_wait: trio.CancelScope | None = None
        self._upload_done = trio.Event()
        self._request_complete = False
        self._client_gone: ClientGone | None = None
        self._node_lost: NodeLost | None = None
        self.result = RelayResult(status=-1, reusable=False)

    async def run(self, request: SessionRequest, head_timeout: float) -> RelayResult:
        try:
            await self._stream.send_all(self._http.send(request_head(self._conn, request)) or b"")
        except _NODE_IO_ERRORS as exc:
            raise self._lost_early(f"sending the request: {exc!r}") from None
        # The node answers before git says anything; until then nothing of the
        # client's is taken, so a dead pooled connection can be retried.
        await self._response_head(head_timeout)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_client, nursery.cancel_scope)
            nursery.start_soon(self._upload, nursery.cancel_scope)
            try:
                await self._download()
            except NodeLost as exc:
                self._node_lost = exc
            except ClientGone as exc:
                self._client_gone = exc
            else:
                self._end_upload()
                with trio.move_on_after(END_GRACE):
                    await self._upload_done.wait()
            nursery.cancel_scope.cancel()
        if self._client_gone is not None:
            raise self._client_gone
        if self._node_lost is not None:
            raise self._node_lost
        assert self._frames.status is not None
        http = self._http
        self.result.status = self._frames.status
        self.result.reusable = (
            self._request_complete
            # DONE, not MUST_CLOSE: h11 read the response head's keep-alive too.
            and http.our_state is h11.DONE
            and not self._extra_after_body
        )
        return self.result

    def _lost_early(self, what: str) -> NodeLost:
        if self._conn.reused and self._stream.bytes_in == self._received_before:
            return _StaleConnection(f"pooled connection to {self._conn.address}: {what}")
        return NodeLost(f"node {self._conn.address}: {what}")

    async def _next_event(self) -> h11.Event:
        """The next event from the node, reading as needed."""
        while True:
            try:
                event = self._http.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._lost_early(f"bad response: {exc}") from None
            if isinstance(event, h11.ConnectionClosed):
                raise self._lost_early("connection closed")
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:  # a client is paused only after a whole response
                raise NodeLost(f"node {self._conn.address}: data after its response")
            try:
                data = await self._stream.receive()
            except _NODE_IO_ERRORS as exc:
                raise self._lost_early(f"receive: {exc!r}") from None
            self._http.receive_data(data)  # b"" is EOF: next_event() then says so

    async def _response_head(self, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while True:
                event = await self._next_event()
                if isinstance(event, h11.InformationalResponse):
                    continue
                assert isinstance(event, h11.Response)
                break
            if event.status_code != 200:
                raise NodeLost(f"node {self._conn.address} answered {event.status_code}")
            headers = dict(event.headers)
            content_type = headers.get(b"content-type", b"")
            if content_type != CONTENT_TYPE.encode():
                raise NodeLost(f"node {self._conn.address}: not a session ({content_type!r})")
            self._body = _response_body(headers)
            return
        raise NodeLost(f"node {self._conn.address}: no answer in {timeout}s")

    async def _download(self) -> None:
        """Frames to the client until the response ends; NodeLost if it ends badly."""
        body = self._body
        assert body is not None
        data, closed = self._http.trailing_data  # what h11 read past the head
        while True:
            try:
                used, payload = body.decode(data)
            except BodyError as exc:
                raise NodeLost(f"node {self._conn.address}: {exc.detail}") from None
            for piece in payload:
                await self._to_client(piece)
            if body.done:
                self._extra_after_body = used < len(data)
                break
            if closed:
                try:
                    body.eof()
                except BodyError as exc:
                    raise NodeLost(f"node {self._conn.address}: {exc.detail}") from None
                break  # a close-delimited body ended (then not reusable)
            try:
                data = await self._stream.receive()
            except _NODE_IO_ERRORS as exc:
                raise NodeLost(f"node {self._conn.address}: receive: {exc!r}") from None
            closed = not data
        try:
            self._frames.finish()
        except FrameError as exc:
            raise NodeLost(f"node {self._conn.address}: {exc}") from None

    async def _to_client(self, piece: memoryview) -> None:
        try:
            frames = self._frames.feed(piece)
        except FrameError as exc:
            raise NodeLost(f"node {self._conn.address}: {exc}") from None
        for frame in frames:
            if isinstance(frame, Stdout):
                self.result.bytes_down += len(frame.data)
                await self._client.send(frame.data)
            elif isinstance(frame, Stderr):
                await self._client.send_stderr(frame.data)

    async def _upload(self, scope: trio.CancelScope) -> None:
        """Client stdin to the request body, until the client's EOF or the exit status."""
        try:
            while not self._stopping:
                with trio.CancelScope() as self._client_wait:
                    data = await self._client.receive()
                if self._client_wait.cancelled_caught or not data:
                    break
                await self._stream.send_all(self._http.send(h11.Data(data=data)) or b"")
                self.result.bytes_up += len(data)
            await self._stream.send_all(self._http.send(h11.EndOfMessage()) or b"")
            self._request_complete = True
        except ClientGone as exc:
            self._client_gone = exc
            scope.cancel()
        except (*_NODE_IO_ERRORS, h11.LocalProtocolError):
            # The node stopped taking the body: its response still says how git ended.
            pass
        finally:
            self._upload_done.set()

    def _end_upload(self) -> None:
        """git has exited: what the client may still send has no reader."""
        self._stopping = True
        if self._client_wait is not None:
            self._client_wait.cancel()

    async def _watch_client(self, scope: trio.CancelScope) -> None:
        await self._client.wait_closed()
        self._client_gone = ClientGone()
        scope.cancel()
