"""The SSH front without a network: its session rules, its config, and the front
itself in-process with asyncssh clients and a scripted node.

Routing comes from an in-memory routing cache (no etcd); the node is a
loopback HTTP server scripted here, reached through a real NodePool as in
production. The end-to-end behaviour with OpenSSH, git and real nodes is in
tests/e2e/test_ssh.py; the relay's own cases in tests/edge/test_ssh_relay.py.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import asyncssh
import h11
import pytest
import trio

from edge.config import SSH_CIPHERS, ConfigError, Listener, SshFrontConfig, load_edge_config
from edge.http.pool import NodePool
from edge.ssh.aio import aio_as_trio, open_aio_loop
from edge.ssh.channel import ClientChannel
from edge.ssh.front import SshFront, SshStats
from edge.ssh.relay import NodeSessions
from edge.ssh.session import SessionRefused, shell_greeting, vet_session
from gitproto.ssh_frame import CONTENT_TYPE, encode_exit, encode_stderr, encode_stdout
from plumbing.drain import RequestTracker
from plumbing.sshkeys import KeyFileError, load_or_create_key, public_key_line
from routing.cache import RoutingCache
from routing.etcd import EtcdClient, KeyValue
from routing.etcd_codec import WatchEvent
from routing.model import (
    KeyRecord,
    NodeId,
    NodeRecord,
    Region,
    RepoName,
    RepoRecord,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
)
from routing.schema import Keys, encode_key_record, encode_node, encode_repo, encode_volume

T = TypeVar("T")

# -- vet_session: what a session may ask for ----------------------------------------------


def _vet(command: str | None, env: dict[bytes, bytes] | None = None) -> str:
    """The refusal line, or "ok <service> <repo> <git_protocol>"."""
    try:
        request = vet_session(user="alice", command=command, env=env or {})
    except SessionRefused as exc:
        assert exc.status == 1
        assert "\n" not in exc.line
        return exc.line
    return f"ok {request.command.service} {request.command.repo} {request.git_protocol}"


def test_git_commands_pass_with_their_protocol() -> None:
    assert _vet("git-upload-pack '/alice/x.git'") == "ok git-upload-pack alice/x None"
    assert (
        _vet("git-receive-pack 'alice/x.git'", {b"GIT_PROTOCOL": b"version=2"})
        == "ok git-receive-pack alice/x version=2"
    )


def test_shell_gets_the_greeting() -> None:
    assert _vet(None) == shell_greeting("alice")
    assert shell_greeting("alice") == (
        "Hi alice! You've successfully authenticated, but gitedge does not provide shell access."
    )


@pytest.mark.parametrize(
    "env",
    [
        {b"LANG": b"C.UTF-8"},
        {b"LC_ALL": b"C.UTF-8", b"LC_CTYPE": b"en_US.UTF-8", b"LC_": b"x"},
        {},
    ],
)
def test_locale_env_is_ignored(env: dict[bytes, bytes]) -> None:
    assert _vet("git-upload-pack 'a/b.git'", env) == "ok git-upload-pack a/b None"


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({b"LD_PRELOAD": b"/tmp/x.so"}, "environment variable LD_PRELOAD is not accepted"),
        ({b"GIT_CONFIG_PARAMETERS": b"x"}, "environment variable GIT_CONFIG_PARAMETERS"),
        ({b"LANGUAGE": b"de"}, "environment variable LANGUAGE is not accepted"),
        ({b"git_protocol": b"version=2"}, "environment variable git_protocol"),
        ({b"A\nB": b"x"}, "environment variable A?B is not accepted"),
        ({b"\xff" * 100: b"x"}, "environment variable " + "?" * 64 + " is not accepted"),
        ({b"GIT_PROTOCOL": b"version=2;id"}, "GIT_PROTOCOL has a value that is not accepted"),
        ({b"GIT_PROTOCOL": b""}, "GIT_PROTOCOL has a value that is not accepted"),
        ({b"GIT_PROTOCOL": b"v" * 257}, "GIT_PROTOCOL has a value that is not accepted"),
    ],
)
def test_other_env_refuses_the_session_even_for_a_shell(env: dict[bytes, bytes], line: str) -> None:
    for command in ("git-upload-pack 'a/b.git'", None):
        refusal = _vet(command, {b"LANG": b"C", **env})
        assert refusal.startswith("gitedge: ") and line in refusal


@pytest.mark.parametrize(
    ("command", "line"),
    [
        ("id", "gitedge: command not allowed: 'id'"),
        ("git-upload-pack 'a/b.git' ; id", "gitedge: exactly one repository path is allowed"),
        ("git-upload-pack '../etc/x.git'", "gitedge: bad repository path:"),
        ("git-upload-pack '-a/b.git'", "gitedge: bad repository path:"),
        ("git-upload-pack", "gitedge: git-upload-pack needs a repository path"),
        ("", "gitedge: interactive shells are not supported"),
    ],
)
def test_commands_outside_the_list_are_refused(command: str, line: str) -> None:
    assert _vet(command).startswith(line)


# -- [ssh] in the edge config ---------------------------------------------------------------

BASE = (
    '[edge]\nregion = "fra"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
    '[nodes]\nadmin_secret = "s"\n[http]\nlisten = "127.0.0.1:0"\n'
)


def _config(tmp_path: Path, ssh: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + ssh)
    return path


def _ssh_table(tmp_path: Path, extra: str = "") -> str:
    return f'[ssh]\nlisten = "127.0.0.1:0"\nhost_key_files = ["{tmp_path}/keys/host"]\n{extra}'


def test_no_ssh_table_no_ssh_front(tmp_path: Path) -> None:
    assert load_edge_config(_config(tmp_path, "")).ssh is None


def test_ssh_defaults_and_keys_made_once(tmp_path: Path) -> None:
    config = load_edge_config(_config(tmp_path, _ssh_table(tmp_path)))
    assert config.ssh == SshFrontConfig(
        listen=(Listener("127.0.0.1", 0),),
        host_key_files=(tmp_path / "keys" / "host",),
        login_grace_time=60.0,
        idle_timeout=600.0,
        max_sessions=10,
        window=16 * 2**20,
    )
    host = tmp_path / "keys" / "host"
    assert stat.S_IMODE(host.stat().st_mode) == 0o600
    assert host.with_name("host.pub").read_text().startswith("ssh-ed25519 ")
    first = load_or_create_key(host).get_fingerprint("sha256")
    load_edge_config(_config(tmp_path, _ssh_table(tmp_path)))  # a restart keeps the keys
    assert load_or_create_key(host).get_fingerprint("sha256") == first


def test_ssh_settings(tmp_path: Path) -> None:
    extra = "login_grace_time = 5\nidle_timeout = 30\nmax_sessions = 2\nwindow = 1048576\n"
    config = load_edge_config(_config(tmp_path, _ssh_table(tmp_path, extra)))
    assert config.ssh is not None
    assert (config.ssh.login_grace_time, config.ssh.idle_timeout) == (5.0, 30.0)
    assert (config.ssh.max_sessions, config.ssh.window) == (2, 2**20)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('node_client_key_file = "/k"\n', "node_client_key_file"),
        ("near_window = 2097152\n", "near_window"),
    ],
)
def test_keys_of_the_removed_node_ssh_hop_are_refused_by_name(
    tmp_path: Path, extra: str, key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"\[ssh\]: {key}: removed: .*delete it"):
        load_edge_config(_config(tmp_path, _ssh_table(tmp_path, extra)))


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("max_sessions = 0\n", "max_sessions"),
        ("window = 1024\n", "window"),
        ("idle_timeout = 'long'\n", "idle_timeout"),
        ("login_grace_time = -1\n", "login_grace_time"),
        ("max_session = 3\n", "max_session: unknown key"),
        ("ciphers = []\n", "ciphers: needs at least one"),
        ('ciphers = ["aes128-cbc"]\n', "ciphers: 'aes128-cbc' is not one of"),
        ('ciphers = ["aes128-gcm@openssh.com", "aes128-gcm@openssh.com"]\n', "ciphers: .*twice"),
    ],
)
def test_bad_ssh_settings_name_the_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[ssh\]: {key}"):
        load_edge_config(_config(tmp_path, _ssh_table(tmp_path, extra)))


def test_ciphers_default_to_asyncssh_s_and_may_be_narrowed(tmp_path: Path) -> None:
    config = load_edge_config(_config(tmp_path, _ssh_table(tmp_path)))
    assert config.ssh is not None and config.ssh.ciphers == ()
    extra = 'ciphers = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com"]\n'
    config = load_edge_config(_config(tmp_path, _ssh_table(tmp_path, extra)))
    assert config.ssh is not None
    assert config.ssh.ciphers == ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


def test_the_ciphers_allowed_are_asyncssh_s_defaults_and_none_is_cbc() -> None:
    # If asyncssh changes its defaults, SSH_CIPHERS must be looked at again: a CBC
    # cipher would need the IGNORE packets asyncssh_gap drops.
    from asyncssh.encryption import get_default_encryption_algs

    assert [name.encode() for name in SSH_CIPHERS] == get_default_encryption_algs()
    assert not [name for name in SSH_CIPHERS if "cbc" in name]


def test_unusable_key_files_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "host").write_text("not a key")
    with pytest.raises(ConfigError, match=r"\[ssh\]: host_key_files: cannot use .*host"):
        load_edge_config(_config(tmp_path, _ssh_table(tmp_path)))
    missing_listen = _ssh_table(tmp_path).replace('listen = "127.0.0.1:0"\n', "")
    with pytest.raises(ConfigError, match=r"\[ssh\]: listen: is required"):
        load_edge_config(_config(tmp_path, missing_listen))
    with pytest.raises(KeyFileError, match=r"cannot use .*below-a-file"):
        load_or_create_key(tmp_path / "keys" / "host" / "below-a-file")


# -- the front in-process ---------------------------------------------------------------------

ALICE_REPO = RepoName("alice", "x")
NODE_SECRET = "front-test-secret"


@dataclass
class ScriptedNode:
    """A node's HTTP listener that runs no git: it echoes a session's stdin once it
    ends (then a stderr line and exit status 7), or with `hang` answers nothing
    until the edge closes the connection."""

    hang: bool = False
    requests: list[tuple[bytes, dict[bytes, bytes]]] = field(default_factory=list)
    connections: int = 0
    closed: trio.Event = field(default_factory=trio.Event)

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        http = h11.Connection(h11.SERVER)

        async def event() -> h11.Event | type[h11.PAUSED]:
            while (ev := http.next_event()) is h11.NEED_DATA:
                http.receive_data(bytes(await stream.receive_some(65536)))
            return ev  # type: ignore[return-value]

        try:
            while True:
                request = await event()
                if not isinstance(request, h11.Request):
                    return
                self.requests.append((request.target, dict(request.headers)))
                head = h11.Response(status_code=200, headers=[("content-type", CONTENT_TYPE)])
                await stream.send_all(http.send(head) or b"")
                stdin = bytearray()
                while isinstance(piece := await event(), h11.Data):
                    if not self.hang:
                        stdin += piece.data
                frames = b"".join(
                    encode_stdout(bytes(stdin[i : i + 65536])) for i in range(0, len(stdin), 65536)
                )
                frames += encode_stderr(b"remote: hello from the node\n") + encode_exit(7)
                await stream.send_all(http.send(h11.Data(data=frames)) or b"")
                await stream.send_all(http.send(h11.EndOfMessage()) or b"")
                http.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError):
            pass  # the edge closed the connection
        finally:
            self.closed.set()


@dataclass
class Front:
    address: tuple[str, int]
    node: ScriptedNode
    front: SshFront
    cache: RoutingCache
    client_key: asyncssh.SSHKey
    host_key_line: str

    async def call(self, fn: Callable[[asyncssh.SSHClientConnection], Awaitable[T]]) -> T:
        """Run `fn` (asyncio) on a fresh connection as alice."""

        async def session() -> T:
            conn = await self.connect(self.client_key)
            try:
                return await fn(conn)
            finally:
                conn.close()

        return await aio_as_trio(session)()

    async def settled(self) -> SshStats:
        """The front's counters once every session has finished on the server side.

        The client sees the exit status before the server's session task ends
        (it still waits for the channel to close), so counters lag by a moment.
        """
        with trio.fail_after(5):
            while self.front.stats.sessions_active:
                await trio.sleep(0.01)
        return self.front.stats

    async def connect(self, key: asyncssh.SSHKey) -> asyncssh.SSHClientConnection:
        host, port = self.address
        return await asyncssh.connect(
            host,
            port,
            username="git",
            client_keys=[key],
            known_hosts=([asyncssh.import_public_key(self.host_key_line)], [], []),
            config=None,
            agent_path=None,
            preferred_auth="publickey",
        )


def _node_record(url: str) -> NodeRecord:
    return NodeRecord(NodeId("n1"), Region("fra"), url, (VolumeInfo(VolumeId("v1"), 0),))


@pytest.fixture
def ciphers() -> tuple[str, ...]:
    """`[ssh] ciphers` of the front (a test parametrizes it to change it)."""
    return ()


@pytest.fixture
async def front(tmp_path: Path, ciphers: tuple[str, ...]) -> AsyncIterator[Front]:
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    fingerprint = client_key.get_fingerprint("sha256")
    config = SshFrontConfig(
        listen=(Listener("127.0.0.1", 0),),
        host_key_files=(tmp_path / "host",),
        login_grace_time=1.0,
        idle_timeout=1.0,
        max_sessions=2,
        ciphers=ciphers,
    )
    etcd = EtcdClient("http://127.0.0.1:9")  # never reached: everything is cached
    keys = Keys("/t/")
    cache = RoutingCache(keys, etcd)
    fra = Region("fra")
    ssh_key = KeyRecord(fingerprint, "alice", "t", public_key_line(client_key), 0.0)
    repo = RepoRecord(ALICE_REPO, VolumeId("v1"), fra, 0.0, "alice")
    node = ScriptedNode()
    pool = NodePool(3.0, 30.0, 4, credential=NODE_SECRET)
    async with open_aio_loop(), trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, node.handle, 0, host="127.0.0.1"))
        node_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        # As the watch would deliver them: the cache's tables change only through it.
        records = [
            (keys.key(fingerprint), encode_key_record(ssh_key)),
            (keys.repo(ALICE_REPO), encode_repo(repo)),
            (keys.volume("v1"), encode_volume(VolumeRecord(VolumeId("v1"), fra, NodeId("n1")))),
            (keys.node("n1"), encode_node(_node_record(node_url))),
        ]
        cache.reset([KeyValue(key, value, 1, 1, 1, 0) for key, value in records], revision=1)
        async with trio.open_nursery() as sessions:
            nodes = NodeSessions(pool, head_timeout=5.0)
            ssh_front = SshFront(config, cache, nodes, RequestTracker(), sessions, region=fra)
            (address,) = await nursery.start(ssh_front.serve)
            host, _, port = address.rpartition(":")
            host_key = public_key_line(load_or_create_key(tmp_path / "host"))
            yield Front((host, int(port)), node, ssh_front, cache, client_key, host_key)
            await ssh_front.aclose()
            sessions.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    await pool.aclose()
    await etcd.aclose()


@dataclass
class Ran:
    status: int | None
    stdout: bytes
    stderr: bytes


async def _run(
    conn: asyncssh.SSHClientConnection, command: str | None, stdin: bytes = b"", **kw: object
) -> Ran:
    result = await conn.run(command, input=stdin, encoding=None, **kw)  # type: ignore[arg-type]
    assert isinstance(result.stdout, bytes) and isinstance(result.stderr, bytes)
    return Ran(result.exit_status, result.stdout, result.stderr)


def test_the_session_is_asyncssh_public_api() -> None:
    """An SSHServerSession subclass (asyncssh's documented callbacks), not an
    SSHServerProcess built through its private constructor."""
    assert issubclass(ClientChannel, asyncssh.SSHServerSession)
    assert not issubclass(ClientChannel, asyncssh.SSHServerProcess)


async def test_exec_relays_bytes_eof_stderr_and_exit_status(front: Front) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value: binary-clean both ways

    async def clone(conn: asyncssh.SSHClientConnection) -> Ran:
        return await _run(
            conn, "git-upload-pack '/alice/x.git'", payload, env={"GIT_PROTOCOL": "version=2"}
        )

    with trio.fail_after(20):
        ran = await front.call(clone)
    # The node echoes stdin only after the client's EOF ended the request body.
    assert (ran.status, ran.stdout, ran.stderr) == (7, payload, b"remote: hello from the node\n")
    ((target, headers),) = front.node.requests
    assert target == b"/alice/x.git/ssh-upload-pack"
    assert headers[b"git-protocol"] == b"version=2"
    assert headers[b"gitedge-user"] == b"alice"
    assert headers[b"authorization"] == b"Bearer " + NODE_SECRET.encode()
    stats = await front.settled()
    assert (stats.sessions, stats.sessions_active, stats.sessions_refused) == (1, 0, 0)


async def test_warm_sessions_reuse_the_pooled_node_connection(front: Front) -> None:
    async def twice(conn: asyncssh.SSHClientConnection) -> list[Ran]:
        return [await _run(conn, "git-upload-pack 'alice/x.git'", b"hi") for _ in range(2)]

    with trio.fail_after(20):
        runs = await front.call(twice)
        runs += await front.call(twice)  # and from another client connection
    assert [r.stdout for r in runs] == [b"hi"] * 4
    await front.settled()
    counters = front.front.stats_dict()
    assert (counters["ssh_pool_connects"], counters["ssh_pool_reuses"]) == (1, 3)
    assert front.node.connections == 1
    assert not [key for key in counters if key.startswith("ssh_node_")]


async def test_shell_greets_and_forwarding_and_pty_are_refused(front: Front) -> None:
    async def probe(conn: asyncssh.SSHClientConnection) -> tuple[Ran, Ran, list[int]]:
        greeting = await _run(conn, None)
        sftp = await _run(conn, None, subsystem="sftp")
        codes = []
        for attempt in (
            conn.run("git-upload-pack 'alice/x.git'", term_type="xterm", request_pty="force"),
            conn.open_connection("127.0.0.1", 22),
            conn.start_server(lambda: asyncssh.SSHTCPSession(), "", 0),
        ):
            try:
                await attempt
            except asyncssh.ChannelOpenError as exc:
                codes.append(exc.code)
            except asyncssh.ChannelListenError:
                codes.append(-1)
        return greeting, sftp, codes

    with trio.fail_after(20):
        greeting, sftp, codes = await front.call(probe)
    assert (greeting.status, greeting.stderr) == (1, shell_greeting("alice").encode() + b"\n")
    assert (sftp.status, sftp.stderr) == (
        1,
        b"gitedge: subsystem sftp is not supported (no sftp or scp, only git)\n",
    )
    assert codes == [
        asyncssh.OPEN_REQUEST_PTY_FAILED,
        asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
        -1,  # remote forwarding: the tcpip-forward request refused
    ]
    assert front.node.requests == []


async def test_unknown_key_is_rejected_at_auth(front: Front) -> None:
    async def attempt() -> None:
        await front.connect(asyncssh.generate_private_key("ssh-ed25519"))

    with pytest.raises(asyncssh.PermissionDenied):
        await aio_as_trio(attempt)()
    assert front.front.stats.auth_rejected == 1


async def test_node_down_is_one_line_and_exit_1(front: Front) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there any more
    # The node re-registers at an address where nothing listens (as the watch delivers it).
    moved = _node_record(f"http://127.0.0.1:{port}")
    event = WatchEvent("PUT", KeyValue(front.cache.keys.node("n1"), encode_node(moved), 1, 2, 2, 0))
    front.cache.apply([event], revision=2)

    async def clone(conn: asyncssh.SSHClientConnection) -> Ran:
        return await _run(conn, "git-upload-pack 'alice/x.git'")

    with trio.fail_after(10):
        ran = await front.call(clone)
    assert (ran.status, ran.stdout) == (1, b"")
    assert ran.stderr == b"ERROR: Repository temporarily unavailable, try again later.\n"
    assert (await front.settled()).sessions_refused == 1


async def test_client_gone_closes_the_node_connection(front: Front) -> None:
    front.node.hang = True

    async def vanish() -> None:
        conn = await front.connect(front.client_key)
        process = await conn.create_process("git-upload-pack 'alice/x.git'", encoding=None)
        process.stdin.write(b"0000")
        await process.stdin.drain()
        while not front.node.requests:
            await asyncio.sleep(0.01)
        conn.abort()  # no EOF, no close: the client just goes away

    with trio.fail_after(10):
        await aio_as_trio(vanish)()
        await front.node.closed.wait()  # and so the node would kill its git
    assert (await front.settled()).sessions_active == 0


async def test_sessions_per_connection_are_limited(front: Front) -> None:
    front.node.hang = True

    async def three(conn: asyncssh.SSHClientConnection) -> list[str]:
        outcomes = []
        for _ in range(3):
            try:
                await conn.create_process("git-upload-pack 'alice/x.git'")
                outcomes.append("open")
            except asyncssh.ChannelOpenError as exc:
                outcomes.append(exc.reason)
        return outcomes

    with trio.fail_after(10):
        outcomes = await front.call(three)
    assert outcomes == ["open", "open", "gitedge: at most 2 sessions per connection"]


async def test_idle_connection_is_closed(front: Front) -> None:
    async def idle(conn: asyncssh.SSHClientConnection) -> float:
        started = asyncio.get_running_loop().time()
        await conn.wait_closed()
        return asyncio.get_running_loop().time() - started

    with trio.fail_after(5):
        waited = await front.call(idle)
    assert 0.8 < waited < 3  # idle_timeout = 1 s


async def test_login_grace_time_drops_a_client_that_never_authenticates(front: Front) -> None:
    host, port = front.address
    stream = await trio.open_tcp_stream(host, port)
    banner = await stream.receive_some(256)
    assert banner.startswith(b"SSH-2.0-")
    started = trio.current_time()
    with trio.fail_after(5):
        while await stream.receive_some(4096):
            pass  # the server's kex init; we never answer it
    assert trio.current_time() - started > 0.8  # login_grace_time = 1 s
    await stream.aclose()


@pytest.mark.parametrize("ciphers", [("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")])
async def test_configured_ciphers_are_all_the_front_offers(front: Front) -> None:
    async def negotiated(conn: asyncssh.SSHClientConnection) -> object:
        return conn.get_extra_info("send_cipher")

    # The client's order decides among what both have (RFC 4253 section 7.1):
    # asyncssh's is chacha20, aes256-gcm, aes128-gcm.
    assert await front.call(negotiated) == "aes256-gcm@openssh.com"

    async def chacha_only() -> None:
        host, port = front.address
        conn = await asyncssh.connect(
            host,
            port,
            username="git",
            client_keys=[front.client_key],
            known_hosts=None,
            config=None,
            agent_path=None,
            encryption_algs=["chacha20-poly1305@openssh.com"],
        )
        conn.close()

    with pytest.raises(asyncssh.KeyExchangeFailed):
        await aio_as_trio(chacha_only)()


async def test_by_default_the_front_offers_asyncssh_s_ciphers(front: Front) -> None:
    async def negotiated(conn: asyncssh.SSHClientConnection) -> object:
        return conn.get_extra_info("send_cipher")

    assert await front.call(negotiated) == "chacha20-poly1305@openssh.com"
