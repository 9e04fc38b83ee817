"""The SSH session relay (edge/ssh/relay.py) over in-memory streams, and over the pool.

The node's side is either scripted here with h11 (to make it misbehave on
cue) or the real node's HTTP server (`node.git_http.GitHttpServer`) running
real git on the far end of a memory stream; the client's side is `FakeClient`,
a `ClientStream` the test feeds and reads. OpenSSH and a whole network are in
tests/e2e/test_ssh.py.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from edge.errors import NodeUnavailable
from edge.http.pool import NodeConn, NodePool
from edge.http.stream import BufferedStream
from edge.ssh.channel import ClientGone
from edge.ssh.relay import NodeLost, NodeSessions, SessionRequest, relay_session
from gitproto.protocol import CHUNK
from gitproto.ssh_command import parse_command
from gitproto.ssh_frame import (
    CONTENT_TYPE,
    encode_exit,
    encode_stderr,
    encode_stdout,
)
from node.git_http import GitHttpServer
from node.repos import RepoStore
from routing.model import NodeId, NodeRecord, Region, RepoName

SECRET = "relay-test-secret"
AUTH_LINE = b"authorization: Bearer " + SECRET.encode()
UPLOAD = SessionRequest(parse_command("git-upload-pack 'alice/proj.git'"), None, "alice")
HEAD_TIMEOUT = 5.0


class FakeClient:
    """The client's end of a session: stdin the test pushes, output it reads."""

    def __init__(self) -> None:
        self.stdin, self._stdin = trio.open_memory_channel[bytes](64)
        self.stdout = bytearray()
        self.stderr = bytearray()
        self.received = 0
        """How many times the relay took client data."""
        self.gate: trio.Event | None = None
        """While set to an unset Event, send() blocks: a client that stopped reading."""
        self._closed = trio.Event()
        self._changed = trio.Event()

    async def receive(self) -> bytes:
        try:
            data = await self._stdin.receive()
        except trio.EndOfChannel:
            return b""
        self.received += 1
        return data

    async def send(self, data: bytes) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self._closed.is_set():
            raise ClientGone()
        self.stdout += data
        self._changed.set()

    async def send_stderr(self, data: bytes) -> None:
        self.stderr += data
        self._changed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def vanish(self) -> None:
        self._closed.set()

    async def wait_stdout(self, ends_with: bytes) -> None:
        while not self.stdout.endswith(ends_with):
            self._changed = trio.Event()
            await self._changed.wait()


class ScriptedNode:
    """The node's end of a connection, driven by the test through h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.http = h11.Connection(h11.SERVER)

    async def event(self) -> h11.Event:
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(bytes(await self.stream.receive_some(CHUNK)))
                continue
            assert isinstance(event, h11.Event), event
            return event

    async def request(self) -> h11.Request:
        if self.http.our_state is h11.DONE:
            self.http.start_next_cycle()
        event = await self.event()
        assert isinstance(event, h11.Request)
        return event

    async def body_piece(self) -> bytes | None:
        event = await self.event()
        if isinstance(event, h11.EndOfMessage):
            return None
        assert isinstance(event, h11.Data)
        return bytes(event.data)

    async def send(self, event: h11.Event) -> None:
        await self.stream.send_all(self.http.send(event) or b"")

    async def head(self, status: int = 200, content_type: str = CONTENT_TYPE) -> None:
        headers = [("content-type", content_type)] if content_type else []
        await self.send(h11.Response(status_code=status, headers=headers))

    async def frames(self, data: bytes) -> None:
        await self.send(h11.Data(data=data))

    async def end(self) -> None:
        await self.send(h11.EndOfMessage())


def node_conn(stream: trio.abc.Stream, *, reused: bool = False) -> NodeConn:
    return NodeConn(("node", 80), BufferedStream(stream), AUTH_LINE, reused=reused)


Script = Callable[[ScriptedNode], Awaitable[None]]


@asynccontextmanager
async def scripted(script: Script) -> AsyncIterator[NodeConn]:
    """A NodeConn whose far end runs `script`; closed (as its owner would) on the way out,
    after which the script must end (an h11 error at the EOF counts as its end)."""
    edge_end, node_end = trio.testing.memory_stream_pair()

    async def run() -> None:
        with contextlib.suppress(h11.RemoteProtocolError, trio.BrokenResourceError):
            await script(ScriptedNode(node_end))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        try:
            yield node_conn(edge_end)
        finally:
            await edge_end.aclose()


# -- the exchange -------------------------------------------------------------------------


async def test_a_session_is_one_full_duplex_request() -> None:
    """The node answers piece by piece and the client sends only after each answer:
    the request body and the response body stream at once (a v0 negotiation)."""
    seen: dict[str, object] = {}

    async def node(peer: ScriptedNode) -> None:
        request = await peer.request()
        seen["target"] = request.target
        seen["headers"] = dict(request.headers)
        await peer.head()
        await peer.frames(encode_stdout(b"advertisement\n"))
        pieces = []
        while (piece := await peer.body_piece()) is not None:
            pieces.append(piece)
            await peer.frames(encode_stdout(b"ack " + piece))
        seen["body"] = pieces
        await peer.frames(encode_stderr(b"remote: bye\n") + encode_exit(3))
        await peer.end()

    client = FakeClient()
    request = SessionRequest(
        parse_command("git-receive-pack 'alice/proj.git'"), "version=2", "alice", "203.0.113.7"
    )

    async def converse() -> None:
        await client.wait_stdout(b"advertisement\n")
        for word in (b"want", b"have", b"done"):
            await client.stdin.send(word)
            await client.wait_stdout(b"ack " + word)
        await client.stdin.aclose()  # the client's EOF

    with trio.fail_after(5):
        async with scripted(node) as conn, trio.open_nursery() as nursery:
            nursery.start_soon(converse)
            result = await relay_session(conn, request, client, head_timeout=HEAD_TIMEOUT)
    assert seen["target"] == b"/alice/proj.git/ssh-receive-pack"
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers[b"authorization"] == b"Bearer " + SECRET.encode()
    assert headers[b"git-protocol"] == b"version=2"
    assert headers[b"gitedge-user"] == b"alice"
    assert headers[b"x-forwarded-for"] == b"203.0.113.7"
    assert headers[b"transfer-encoding"] == b"chunked"
    assert seen["body"] == [b"want", b"have", b"done"]
    assert client.stdout == b"advertisement\nack wantack haveack done"
    assert client.stderr == b"remote: bye\n"
    assert (result.status, result.reusable, result.bytes_up) == (3, True, 12)


async def test_the_exit_status_ends_the_request_body_and_the_connection_carries_on() -> None:
    """git exits while the client still holds its stdin open: the edge ends the body
    (the node drains it), and the same connection serves the next session."""
    ends: list[str] = []

    async def node(peer: ScriptedNode) -> None:
        for status in (0, 1):
            await peer.request()
            await peer.head()
            await peer.frames(encode_stdout(b"x" * 10) + encode_exit(status))
            await peer.end()
            while await peer.body_piece() is not None:
                pass
            ends.append("body ended")

    with trio.fail_after(5):
        async with scripted(node) as conn:
            first = await relay_session(conn, UPLOAD, FakeClient(), head_timeout=HEAD_TIMEOUT)
            second = await relay_session(conn, UPLOAD, FakeClient(), head_timeout=HEAD_TIMEOUT)
    assert (first.status, first.reusable, second.status, second.reusable) == (0, True, 1, True)
    assert ends == ["body ended", "body ended"]


async def test_stdout_of_every_size_and_split_arrives_whole() -> None:
    pack = os.urandom(3 * CHUNK + 123)

    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.head()
        frames = b"".join(
            encode_stdout(pack[i : i + CHUNK]) for i in range(0, len(pack), CHUNK)
        ) + encode_exit(0)
        # Node chunks that cut frames (and their headers) anywhere.
        for i in range(0, len(frames), 70_001):
            await peer.frames(frames[i : i + 70_001])
        await peer.end()

    client = FakeClient()
    with trio.fail_after(5):
        async with scripted(node) as conn:
            await client.stdin.aclose()
            result = await relay_session(conn, UPLOAD, client, head_timeout=HEAD_TIMEOUT)
    assert client.stdout == pack
    assert (result.status, result.bytes_down) == (0, len(pack))


async def _one_session_raw(response: bytes) -> tuple[bool, FakeClient]:
    """A node that answers one session with `response` bytes as they are (head and
    body framed by hand); (reusable, the client)."""

    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.stream.send_all(response)
        while await peer.body_piece() is not None:
            pass

    client = FakeClient()
    with trio.fail_after(5):
        async with scripted(node) as conn:
            await client.stdin.aclose()
            result = await relay_session(conn, UPLOAD, client, head_timeout=HEAD_TIMEOUT)
    assert result.status == 0
    return result.reusable, client


def _session_response(body: bytes, *, headers: bytes = b"") -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-type: " + CONTENT_TYPE.encode() + b"\r\n" + headers
    return head + b"\r\n" + body


_FRAMES = encode_stdout(b"pack") + encode_exit(0)
_CHUNKED = b"transfer-encoding: chunked\r\n"
_ONE_CHUNK = b"%x\r\n" % len(_FRAMES) + _FRAMES + b"\r\n0\r\n\r\n"


async def test_a_chunked_session_response_leaves_the_connection_reusable() -> None:
    reusable, client = await _one_session_raw(_session_response(_ONE_CHUNK, headers=_CHUNKED))
    assert (reusable, client.stdout) == (True, bytearray(b"pack"))


async def test_a_content_length_session_response_is_decoded_too() -> None:
    length = b"content-length: %d\r\n" % len(_FRAMES)
    reusable, client = await _one_session_raw(_session_response(_FRAMES, headers=length))
    assert (reusable, client.stdout) == (True, bytearray(b"pack"))


async def test_connection_close_from_the_node_is_not_pooled() -> None:
    headers = _CHUNKED + b"connection: close\r\n"
    reusable, client = await _one_session_raw(_session_response(_ONE_CHUNK, headers=headers))
    assert (reusable, client.stdout) == (False, bytearray(b"pack"))


async def test_bytes_after_the_response_body_are_not_pooled() -> None:
    body = _ONE_CHUNK + b"HTTP/1.1 200 OK\r\n"
    reusable, _ = await _one_session_raw(_session_response(body, headers=_CHUNKED))
    assert reusable is False


async def test_a_chunk_line_http_does_not_allow_is_node_lost() -> None:
    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        body = b"%x\n" % len(_FRAMES) + _FRAMES + b"\r\n0\r\n\r\n"  # bare LF
        await peer.stream.send_all(_session_response(body, headers=_CHUNKED))

    assert "bare LF" in await _lost(node)


# -- a node that breaks off or answers something else -------------------------------------


async def _lost(script: Script, client: FakeClient | None = None) -> str:
    with trio.fail_after(5):
        async with scripted(script) as conn:
            with pytest.raises(NodeLost) as info:
                await relay_session(conn, UPLOAD, client or FakeClient(), head_timeout=1.0)
    return str(info.value)


async def test_a_response_cut_before_the_exit_status_is_node_lost() -> None:
    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.head()
        await peer.frames(encode_stdout(b"half a pack"))
        await peer.stream.aclose()

    client = FakeClient()
    assert "node" in await _lost(node, client)
    assert client.stdout == b"half a pack"  # what came, came; the session reports the loss


async def test_a_response_that_ends_without_an_exit_status_is_node_lost() -> None:
    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.head()
        await peer.frames(encode_stdout(b"all"))
        await peer.end()

    assert "without an exit status" in await _lost(node)


@pytest.mark.parametrize(
    ("status", "content_type", "expected"),
    [
        (401, "text/plain", "answered 401"),  # no credential: a misconfigured edge
        (404, "text/plain", "answered 404"),  # an old node without the route
        (200, "application/x-git-upload-pack-result", "not a session"),
    ],
)
async def test_answers_other_than_a_session_are_node_lost(
    status: int, content_type: str, expected: str
) -> None:
    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.head(status, content_type)
        await peer.end()

    assert expected in await _lost(node)


async def test_malformed_frames_are_node_lost() -> None:
    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.head()
        await peer.frames(bytes([9]) + (1).to_bytes(4, "big") + b"?")
        await peer.end()

    assert "unknown frame type 9" in await _lost(node)


async def test_a_silent_node_is_node_lost_after_the_head_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.event()  # silent until the edge gives up and closes

    assert "no answer in 1.0s" in await _lost(node)


async def test_a_pooled_connection_closed_before_any_answer_may_be_retried() -> None:
    edge_end, node_end = trio.testing.memory_stream_pair()
    await node_end.aclose()  # the node's idle timeout won the race
    client = FakeClient()
    for reused, retryable in ((True, True), (False, False)):
        with pytest.raises(NodeLost) as info:
            await relay_session(
                node_conn(edge_end, reused=reused), UPLOAD, client, head_timeout=1.0
            )
        assert (type(info.value).__name__ == "_StaleConnection") == retryable
    assert client.received == 0  # nothing of the client's was taken


# -- the client going away, and back-pressure ---------------------------------------------


async def test_a_client_gone_mid_transfer_ends_the_exchange() -> None:
    node_saw_close = trio.Event()

    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.head()
        await peer.frames(encode_stdout(b"0000"))
        with contextlib.suppress(h11.RemoteProtocolError):
            await peer.event()  # body or EOF: the edge closes its end on the way out
        node_saw_close.set()

    client = FakeClient()

    async def vanish() -> None:
        await client.wait_stdout(b"0000")
        client.vanish()

    edge_end, node_end = trio.testing.memory_stream_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node, ScriptedNode(node_end))
            nursery.start_soon(vanish)
            conn = node_conn(edge_end)
            with pytest.raises(ClientGone):
                await relay_session(conn, UPLOAD, client, head_timeout=HEAD_TIMEOUT)
            await conn.stream.aclose()  # what NodeSessions does with it
            await node_saw_close.wait()


async def test_a_client_that_stops_reading_stops_the_relay_reading_the_node() -> None:
    """One CHUNK in flight: over a lockstep stream (no buffer at all) the node can get
    at most the frame the relay holds and the one it is writing ahead of it."""
    sent = 0
    all_sent = trio.Event()

    async def node(peer: ScriptedNode) -> None:
        nonlocal sent
        await peer.request()
        await peer.head()
        for _ in range(20):
            await peer.frames(encode_stdout(b"p" * CHUNK))
            sent += 1
        await peer.frames(encode_exit(0))
        await peer.end()
        all_sent.set()

    client = FakeClient()
    client.gate = trio.Event()
    await client.stdin.aclose()
    edge_end, node_end = trio.testing.lockstep_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node, ScriptedNode(node_end))
            relay = partial(relay_session, node_conn(edge_end), UPLOAD, client)
            nursery.start_soon(partial(relay, head_timeout=HEAD_TIMEOUT))
            await trio.testing.wait_all_tasks_blocked()
            assert sent <= 2 and not all_sent.is_set()
            client.gate.set()
            await all_sent.wait()
    assert len(client.stdout) == 20 * CHUNK


async def test_a_node_that_stops_reading_stops_the_relay_reading_the_client() -> None:
    release = trio.Event()

    async def node(peer: ScriptedNode) -> None:
        await peer.request()
        await peer.head()
        await release.wait()  # git is busy: nothing of the body is read
        while await peer.body_piece() is not None:
            pass
        await peer.frames(encode_exit(0))
        await peer.end()

    client = FakeClient()
    edge_end, node_end = trio.testing.lockstep_stream_pair()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node, ScriptedNode(node_end))
            relay = partial(relay_session, node_conn(edge_end), UPLOAD, client)
            nursery.start_soon(partial(relay, head_timeout=HEAD_TIMEOUT))
            for _ in range(10):
                with trio.move_on_after(1):
                    await client.stdin.send(b"x" * CHUNK)
            await trio.testing.wait_all_tasks_blocked()
            # The relay took one piece and is stuck writing it; the rest waits in
            # the client's (bounded) channel, i.e. in the SSH window.
            assert client.received == 1
            release.set()
            await client.stdin.aclose()
    assert client.received == 10


# -- over the pool: reuse, the idle-close race, a node that is down -----------------------


@asynccontextmanager
async def tcp_node(script: Callable[[ScriptedNode, int], Awaitable[None]]) -> AsyncIterator[str]:
    """A scripted node on a loopback port; `script` gets each connection and its number."""
    count = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal count
        count += 1
        await script(ScriptedNode(stream), count)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


def record(url: str) -> NodeRecord:
    return NodeRecord(NodeId("n1"), Region("fra"), url, ())


async def serve_session(peer: ScriptedNode) -> None:
    await peer.request()
    await peer.head()
    await peer.frames(encode_stdout(b"ok") + encode_exit(0))
    await peer.end()
    while await peer.body_piece() is not None:
        pass


async def test_warm_sessions_reuse_one_pooled_connection() -> None:
    async def node(peer: ScriptedNode, number: int) -> None:
        while True:
            await serve_session(peer)

    async with tcp_node(node) as url:
        pool = NodePool(3.0, 30.0, 4, credential=SECRET)
        sessions = NodeSessions(pool, head_timeout=HEAD_TIMEOUT)
        with trio.fail_after(10):
            for _ in range(3):
                result = await sessions.carry(record(url), UPLOAD, FakeClient())
                assert result.status == 0
        await pool.aclose()
    assert (sessions.stats.connects, sessions.stats.reuses) == (1, 2)
    assert (pool.stats.connects, pool.stats.reuses) == (1, 2)


async def test_a_pooled_connection_the_node_closed_is_retried_on_a_fresh_one() -> None:
    async def node(peer: ScriptedNode, number: int) -> None:
        await serve_session(peer)
        if number == 1:
            await peer.request()  # the node's idle close crosses the next request
            await peer.stream.aclose()
            return
        while True:
            await serve_session(peer)

    async with tcp_node(node) as url:
        pool = NodePool(3.0, 30.0, 4, credential=SECRET)
        sessions = NodeSessions(pool, head_timeout=HEAD_TIMEOUT)
        with trio.fail_after(10):
            for _ in range(2):
                client = FakeClient()
                assert (await sessions.carry(record(url), UPLOAD, client)).status == 0
                assert client.stdout == b"ok"
        await pool.aclose()
    assert (sessions.stats.connects, sessions.stats.reuses, sessions.stats.retries) == (2, 1, 1)


async def test_a_node_that_is_down_is_unavailable_at_once() -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nobody listens there
    sessions = NodeSessions(NodePool(3.0, 30.0, 4), head_timeout=HEAD_TIMEOUT)
    with trio.fail_after(3):
        with pytest.raises(NodeUnavailable):
            await sessions.carry(record(f"http://127.0.0.1:{port}"), UPLOAD, FakeClient())


# -- against the real node and real git ---------------------------------------------------


def run_git(*args: str, cwd: Path) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "T",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "T",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def store(tmp_path: Path) -> RepoStore:
    """A volume with alice/proj: two commits on main."""
    store = RepoStore(tmp_path / "vol")
    store.prepare()
    bare = store.path(RepoName("alice", "proj"))
    run_git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    work = tmp_path / "work"
    run_git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    for name in ("one", "two"):
        (work / name).write_text(name + "\n")
        run_git("add", name, cwd=work)
        run_git("commit", "-q", "-m", name, cwd=work)
    run_git("push", "-q", str(bare), "main", cwd=work)
    return store


@asynccontextmanager
async def real_node(store: RepoStore) -> AsyncIterator[NodeConn]:
    edge_end, node_end = trio.testing.memory_stream_pair()
    server = GitHttpServer(store, SECRET, keepalive_timeout=75)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_connection, node_end)
        yield node_conn(edge_end)
        await edge_end.aclose()


def pkt(line: str) -> bytes:
    return b"%04x" % (len(line) + 4) + line.encode()


async def test_v0_fetch_negotiation_with_real_git(store: RepoStore, tmp_path: Path) -> None:
    """Rounds on one stdin and stdout: haves, git's ACKs and NAK, then done."""
    head = run_git("rev-parse", "main", cwd=tmp_path / "work")
    parent = run_git("rev-parse", "main~1", cwd=tmp_path / "work")
    client = FakeClient()

    async def negotiate() -> None:
        await client.wait_stdout(b"0000")  # the ref advertisement
        assert head.encode() + b" HEAD" in client.stdout
        want = pkt(f"want {head} multi_ack_detailed\n") + b"0000"
        await client.stdin.send(want + pkt(f"have {parent}\n") + b"0000")
        # git answers this round before it sees more: the next one waits for it.
        await client.wait_stdout(pkt("NAK\n"))
        assert pkt(f"ACK {parent} common\n") in client.stdout
        await client.stdin.send(pkt("done\n"))

    with trio.fail_after(20):
        async with real_node(store) as conn:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(negotiate)
                result = await relay_session(conn, UPLOAD, client, head_timeout=HEAD_TIMEOUT)
            # upload-pack exits after the pack, the client's stdin still open:
            # the edge ends the body and the connection stays usable.
            assert (result.status, result.reusable) == (0, True)
            pack = bytes(client.stdout).partition(pkt(f"ACK {parent}\n"))[2]
            assert pack.startswith(b"PACK")
            # The same connection carries the next session.
            again = FakeClient()
            await again.stdin.send(b"0000")  # wants nothing
            await again.stdin.aclose()
            second = await relay_session(conn, UPLOAD, again, head_timeout=HEAD_TIMEOUT)
    assert second.status == 0 and head.encode() in again.stdout


async def test_v2_ls_refs_with_real_git(store: RepoStore, tmp_path: Path) -> None:
    head = run_git("rev-parse", "main", cwd=tmp_path / "work")
    client = FakeClient()

    async def ls_refs() -> None:
        await client.wait_stdout(b"0000")  # the capability advertisement
        assert b"version 2\n" in client.stdout
        await client.stdin.send(pkt("command=ls-refs\n") + b"0001" + b"0000")
        await client.wait_stdout(b"refs/heads/main\n0000")
        await client.stdin.aclose()

    request = SessionRequest(UPLOAD.command, "version=2", "alice")
    with trio.fail_after(20):
        async with real_node(store) as conn, trio.open_nursery() as nursery:
            nursery.start_soon(ls_refs)
            result = await relay_session(conn, request, client, head_timeout=HEAD_TIMEOUT)
    assert result.status == 0
    assert f"{head} refs/heads/main".encode() in client.stdout


async def test_upload_archive_with_real_git(store: RepoStore, tmp_path: Path) -> None:
    client = FakeClient()
    request = SessionRequest(parse_command("git-upload-archive 'alice/proj.git'"), None, "alice")
    await client.stdin.send(pkt("argument --format=tar\n") + pkt("argument main\n") + b"0000")
    await client.stdin.aclose()
    with trio.fail_after(20):
        async with real_node(store) as conn:
            result = await relay_session(conn, request, client, head_timeout=HEAD_TIMEOUT)
    assert result.status == 0
    assert client.stdout.startswith(pkt("ACK\n") + b"0000")
    # The archive follows in side-band packets: the files' contents are in it.
    assert b"one\n" in client.stdout and b"two\n" in client.stdout


async def test_not_found_on_the_node_reads_as_over_ssh(store: RepoStore) -> None:
    client = FakeClient()
    request = SessionRequest(parse_command("git-upload-pack 'alice/gone.git'"), None, "alice")
    with trio.fail_after(10):
        async with real_node(store) as conn:
            result = await relay_session(conn, request, client, head_timeout=HEAD_TIMEOUT)
    assert (result.status, bytes(client.stdout)) == (1, b"")
    assert client.stderr == b"ERROR: Repository not found.\n"


async def test_a_wrong_credential_is_node_lost_and_runs_nothing(store: RepoStore) -> None:
    edge_end, node_end = trio.testing.memory_stream_pair()
    server = GitHttpServer(store, "another-secret", keepalive_timeout=75)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_connection, node_end)
            with pytest.raises(NodeLost, match="answered 401"):
                await relay_session(node_conn(edge_end), UPLOAD, FakeClient(), head_timeout=5)
            await edge_end.aclose()
