"""SSH sessions over the node's HTTP listener, against the real git CLI.

git talks to the node through `tests/node/ssh_bridge.py`, run as its ssh
command: what the edge does for an SSH client (one POST per session, stdin up,
framed stdout/stderr/exit status down), without the edge. The edge's relay
against a real node is in tests/edge/test_ssh_relay.py; the whole path with
OpenSSH in tests/e2e/test_ssh.py.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from gitproto.protocol import CHUNK, Service
from gitproto.routes import ssh_session_target
from gitproto.ssh_frame import CONTENT_TYPE, FrameDecoder, Stderr, Stdout
from node import ssh_http
from node.app import run_node
from node.config import ConfigError, load_node_config
from node.git_pump import reap_git, spawn_git
from node.http_conn import HttpConn
from node.ssh_http import ReadPacer
from routing.etcd import EtcdClient
from routing.model import RepoName
from routing.schema import decode_node
from tests.node.conftest import ADMIN_SECRET, ConfigFactory, RunningNode
from tests.node.gitutil import create_repo, git, git_descendants, git_env, pkt, wait_no_git_children

BRIDGE = Path(__file__).with_name("ssh_bridge.py")


class GitResult:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode = returncode
        self.stdout = stdout.decode(errors="replace")
        self.stderr = stderr.decode(errors="replace")


def bridge_env(node_url: str, home: Path, **extra: str) -> dict[str, str]:
    return {
        **git_env(home),
        "GITEDGE_NODE_URL": node_url,
        "GITEDGE_NODE_SECRET": ADMIN_SECRET,
        "GIT_SSH_COMMAND": shlex.join([sys.executable, str(BRIDGE)]),
        "GIT_SSH_VARIANT": "ssh",  # pass GIT_PROTOCOL and -p as to OpenSSH
        **extra,
    }


class BridgedGit:
    """The git CLI with ssh:// URLs reaching one node through the bridge."""

    def __init__(self, node: RunningNode, home: Path) -> None:
        self.node = node
        self.home = home

    def url(self, name: str) -> str:
        return f"ssh://git@node/{name}.git"

    async def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 30
    ) -> GitResult:
        with trio.fail_after(timeout):
            result = await trio.run_process(
                ["git", *args],
                cwd=cwd,
                env=bridge_env(self.node.url, self.home, **(env or {})),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
        return GitResult(result.returncode, result.stdout, result.stderr)

    async def ok(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        result = await self.run(*args, cwd=cwd, env=env)
        assert result.returncode == 0, f"git {' '.join(args)}:\n{result.stderr}"
        return result.stdout.strip()


@pytest.fixture
def bgit(node: RunningNode, tmp_path: Path) -> BridgedGit:
    return BridgedGit(node, tmp_path / "home")


async def seed_repo(node: RunningNode, tmp_path: Path, name: str, size: int = 1000) -> Path:
    """Create `name` through the node's internal API and push one commit over HTTP."""
    home = tmp_path / "home"
    assert (await create_repo(node.url, name)).status_code == 201
    work = tmp_path / f"seed-{name.replace('/', '-')}"
    await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
    (work / "README").write_text("over ssh\n")
    (work / "data.bin").write_bytes(os.urandom(size))
    await git("add", ".", cwd=work, home=home)
    await git("commit", "-q", "-m", "seed", cwd=work, home=home)
    await git(
        "-c", "pack.compression=0", "push", "-q", node.repo_url(name), "main",
        cwd=work, home=home, timeout=30,
    )  # fmt: skip
    return work


# --- git over the session route ----------------------------------------------------------


@pytest.mark.parametrize("version", ["0", "2"])
async def test_clone_push_and_fetch_round_trip(
    bgit: BridgedGit, tmp_path: Path, version: str
) -> None:
    node, home = bgit.node, bgit.home
    with trio.fail_after(60):
        seed = await seed_repo(node, tmp_path, "alice/proj", size=300_000)
        clone = tmp_path / "clone"
        trace = await bgit.run(
            "-c", f"protocol.version={version}", "clone", bgit.url("alice/proj"), str(clone),
            cwd=tmp_path, env={"GIT_TRACE_PACKET": "1"},
        )  # fmt: skip
        assert trace.returncode == 0, trace.stderr
        assert (clone / "data.bin").read_bytes() == (seed / "data.bin").read_bytes()
        # GIT_PROTOCOL went up as a header and the node's filter to git.
        assert ("version 2" in trace.stderr) == (version == "2")

        (clone / "more").write_text("pushed over a session\n")
        await git("add", "more", cwd=clone, home=home)
        await git("commit", "-q", "-m", "more", cwd=clone, home=home)
        await bgit.ok("-c", f"protocol.version={version}", "push", "-q", cwd=clone)
        pushed = await git("rev-parse", "main", cwd=clone, home=home)
        # What the session pushed, smart HTTP serves: the same repository.
        served = await git(
            "ls-remote", node.repo_url("alice/proj"), "main", cwd=tmp_path, home=home
        )
        assert served.split()[0] == pushed

        # A fetch that has something: negotiation sends haves and waits for ACKs
        # (in v0 many rounds on one stdin and stdout).
        await git("pull", "-q", node.repo_url("alice/proj"), "main", cwd=seed, home=home)
        (seed / "third").write_text("pushed over http\n")
        await git("add", "third", cwd=seed, home=home)
        await git("commit", "-q", "-m", "third", cwd=seed, home=home)
        await git("push", "-q", node.repo_url("alice/proj"), "main", cwd=seed, home=home)
        await bgit.ok("-c", f"protocol.version={version}", "pull", "-q", "--ff-only", cwd=clone)
        assert (clone / "third").read_text() == "pushed over http\n"
        await git("fsck", "--strict", cwd=clone, home=home)


async def test_upload_archive(bgit: BridgedGit, tmp_path: Path) -> None:
    with trio.fail_after(30):
        await seed_repo(bgit.node, tmp_path, "alice/arch")
        archive = tmp_path / "a.tar"
        await bgit.ok(
            "archive", f"--remote={bgit.url('alice/arch')}", "-o", str(archive), "main",
            cwd=tmp_path,
        )  # fmt: skip
        listing = await trio.run_process(["tar", "tf", str(archive)], capture_stdout=True)
    assert sorted(listing.stdout.decode().split()) == ["README", "data.bin"]


async def test_git_sees_the_edge_user(bgit: BridgedGit, tmp_path: Path) -> None:
    node = bgit.node
    with trio.fail_after(30):
        seed = await seed_repo(node, tmp_path, "alice/hook")
        hook = node.config.volume_dir / "alice" / "hook.git" / "hooks" / "pre-receive"
        seen = tmp_path / "hook-env"
        hook.write_text(f"#!/bin/sh\nenv > {seen}\n")
        hook.chmod(0o755)
        for user, expected in (("bob", "bob"), ("-bad name", None)):
            await git("commit", "-q", "--allow-empty", "-m", user, cwd=seed, home=bgit.home)
            await bgit.ok(
                "push", "-q", bgit.url("alice/hook"), "main", cwd=seed, env={"GITEDGE_USER": user}
            )
            env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
            assert env.get("GITEDGE_USER") == expected
            # Nothing of the caller's env (the bridge's own GIT_SSH_COMMAND). Not the
            # secret as the marker: the node gives its replication hooks that itself.
            assert "GIT_SSH_COMMAND" not in env
    assert env["LC_ALL"] == "C"


async def test_unknown_repo_says_not_found_like_ssh(bgit: BridgedGit, tmp_path: Path) -> None:
    result = await bgit.run("clone", bgit.url("no/such"), str(tmp_path / "c"), cwd=tmp_path)
    assert result.returncode != 0
    assert "ERROR: Repository not found." in result.stderr
    assert str(bgit.node.config.volume_dir) not in result.stderr
    session = await run_bridge(bgit.node, "git-upload-pack 'no/such.git'", tmp_path)
    assert (session.returncode, session.stdout, session.stderr) == (
        1,
        "",
        "ERROR: Repository not found.\n",
    )


async def test_git_errors_do_not_name_the_volume(bgit: BridgedGit, tmp_path: Path) -> None:
    broken = bgit.node.config.volume_dir / "alice" / "broken.git"
    broken.mkdir(parents=True)  # a directory, but no repository
    session = await run_bridge(bgit.node, "git-upload-pack 'alice/broken.git'", tmp_path)
    assert session.returncode == 128
    assert "'alice/broken.git' does not appear to be a git repository" in session.stderr
    assert str(bgit.node.config.volume_dir) not in session.stderr


async def run_bridge(node: RunningNode, command: str, tmp_path: Path) -> GitResult:
    with trio.fail_after(20):
        result = await trio.run_process(
            [sys.executable, str(BRIDGE), "node", command],
            env=bridge_env(node.url, tmp_path / "home"),
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return GitResult(result.returncode, result.stdout, result.stderr)


# --- HTTP: credential, keep-alive --------------------------------------------------------


def session_request(repo: str, *, secret: str | None = ADMIN_SECRET) -> bytes:
    """A whole session request whose stdin is one flush-pkt: a client that wants nothing."""
    target = ssh_session_target(RepoName.parse(repo), Service.UPLOAD_PACK)
    lines = [b"POST " + target + b" HTTP/1.1", b"host: node", b"transfer-encoding: chunked"]
    if secret is not None:
        lines.append(b"authorization: Bearer " + secret.encode())
    return b"\r\n".join(lines) + b"\r\n\r\n4\r\n0000\r\n0\r\n\r\n"


async def exchange(stream: trio.SocketStream, request: bytes) -> tuple[h11.Response, bytes]:
    """One request on `stream`; the response and its whole body."""
    http = h11.Connection(h11.CLIENT)
    http.send(h11.Request(method="POST", target="/", headers=[("host", "n")]))  # state only
    http.send(h11.EndOfMessage())
    await stream.send_all(request)
    response, body = None, b""
    while True:
        event = http.next_event()
        if event is h11.NEED_DATA:
            http.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            return response, body


async def test_sessions_need_the_edge_credential(node: RunningNode, tmp_path: Path) -> None:
    await seed_repo(node, tmp_path, "alice/proj")
    host, port = node.url.removeprefix("http://").split(":")
    with trio.fail_after(10):
        for secret, status in ((None, 401), ("wrong", 401)):
            async with await trio.open_tcp_stream(host, int(port)) as stream:
                response, _ = await exchange(stream, session_request("alice/proj", secret=secret))
            assert response.status_code == status
    assert git_descendants() == []


async def test_one_connection_carries_session_after_session(
    node: RunningNode, tmp_path: Path
) -> None:
    await seed_repo(node, tmp_path, "alice/proj")
    host, port = node.url.removeprefix("http://").split(":")
    with trio.fail_after(20):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            for repo in ("alice/proj", "no/such", "alice/proj"):
                response, body = await exchange(stream, session_request(repo))
                assert response.status_code == 200
                assert (b"content-type", CONTENT_TYPE.encode()) in response.headers
                decoder = FrameDecoder()
                frames = decoder.feed(body)
                decoder.finish()
                out = b"".join(f.data for f in frames if isinstance(f, Stdout))
                err = b"".join(f.data for f in frames if isinstance(f, Stderr))
                if repo == "no/such":
                    assert (decoder.status, out, err) == (1, b"", b"ERROR: Repository not found.\n")
                else:
                    # The ref advertisement, then git's exit on the client's flush.
                    assert (decoder.status, err) == (0, b"")
                    assert b"refs/heads/main" in out and out.endswith(b"0000")


# --- no git outlives its session ---------------------------------------------------------


async def start_stalled_clone(node: RunningNode, tmp_path: Path) -> trio.Process:
    """A 20 MiB repo, and the bridge fetching it without reading: git blocks writing."""
    seed = await seed_repo(node, tmp_path, "alice/big", size=20 * 2**20)
    oid = await git("rev-parse", "main", cwd=seed, home=tmp_path / "home")
    assert git_descendants() == []
    client = await trio.lowlevel.open_process(
        [sys.executable, str(BRIDGE), "node", "git-upload-pack 'alice/big.git'"],
        env=bridge_env(node.url, tmp_path / "home"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert client.stdin is not None and client.stdout is not None
    advertised = b""
    while not advertised.endswith(b"0000"):
        advertised += await client.stdout.receive_some(4096)
    assert oid.encode() in advertised
    await client.stdin.send_all(pkt(f"want {oid}\n") + b"0000" + pkt("done\n"))
    first = await client.stdout.receive_some(4096)
    assert first.startswith(pkt("NAK\n"))
    # 20 MiB fit in no buffer on the way: git on the node is blocked writing.
    assert git_descendants() != []
    return client


async def kill_client(client: trio.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(client.pid, signal.SIGKILL)
    await client.wait()
    for pipe in (client.stdin, client.stdout):
        if pipe is not None:
            await pipe.aclose()


async def test_client_killed_mid_clone_leaves_no_git(node: RunningNode, tmp_path: Path) -> None:
    """Regression guard: an aborted session must not leave upload-pack/pack-objects."""
    with trio.fail_after(50):
        client = await start_stalled_clone(node, tmp_path)
        await kill_client(client)
        assert await wait_no_git_children(10) == []


async def test_client_gone_after_its_eof_still_ends_git(bgit: BridgedGit, tmp_path: Path) -> None:
    """A push's stdin ends with its pack; while a slow hook runs, git writes nothing.
    The client vanishing then must still end git (not when git next writes)."""
    node = bgit.node
    with trio.fail_after(50):
        seed = await seed_repo(node, tmp_path, "alice/slow")
        hook = node.config.volume_dir / "alice" / "slow.git" / "hooks" / "pre-receive"
        started = tmp_path / "hook-started"
        hook.write_text(f"#!/bin/sh\ntouch {started}\nexec sleep 60\n")
        hook.chmod(0o755)
        # Or receive-pack sends a keep-alive every 5 s while hooks run, and learns then.
        bare = node.config.volume_dir / "alice" / "slow.git"
        await git("config", "receive.keepAlive", "0", cwd=bare, home=bgit.home)
        await git("commit", "-q", "--allow-empty", "-m", "2", cwd=seed, home=bgit.home)
        push = await trio.lowlevel.open_process(
            ["git", "push", "-q", bgit.url("alice/slow"), "main"],
            cwd=seed,
            env=bridge_env(node.url, bgit.home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            while not started.exists():
                await trio.sleep(0.05)
            assert git_descendants() != []  # receive-pack, waiting for its hook
        finally:
            await kill_client(push)  # git push and the bridge: the edge hangs up
        assert await wait_no_git_children(10) == []
        # Nothing was accepted: the hook never said yes.
        served = await git("ls-remote", node.repo_url("alice/slow"), cwd=tmp_path, home=bgit.home)
        assert served.split()[0] != await git("rev-parse", "main", cwd=seed, home=bgit.home)


async def test_shutdown_mid_session_kills_git(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config()
    with trio.fail_after(50):
        async with trio.open_nursery() as nursery:
            node = RunningNode(await nursery.start(run_node, config), config)
            client = await start_stalled_clone(node, tmp_path)
            nursery.cancel_scope.cancel()
        try:
            assert await wait_no_git_children(10) == []
            # The node closed the connection: the client sees the end, not a hang.
            assert await client.wait() != 0
        finally:
            await kill_client(client)


# --- no SSH listener any more -------------------------------------------------------------


async def test_node_publishes_no_ssh_listener(node: RunningNode, etcd: EtcdClient) -> None:
    with trio.fail_after(10):
        kv = await etcd.get(node.config.keys.node("fra-1"))
    assert kv is not None
    assert b"ssh" not in kv.value
    assert decode_node(kv.value).http_url == node.url
    assert set(node.runtime.ready_info()) == {
        "node_id",
        "region",
        "volume_id",
        "http_url",
        "listening",
    }


def test_an_ssh_table_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        '[node]\nid = "fra-1"\nregion = "fra"\nvolume_dir = "/srv/vol"\nadmin_secret = "s"\n'
        '[ssh]\nlisten = "127.0.0.1:2222"\n'
    )
    with pytest.raises(ConfigError, match=r"node\.toml: \[ssh\]: removed: the node has no SSH"):
        load_node_config(path)


async def test_session_connections_probe_for_a_vanished_edge() -> None:
    """An edge gone without a FIN (a partition) is found by TCP keepalive within a
    minute, not the kernel's two hours: until then git would wait on its stdin."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with await trio.open_tcp_stream("127.0.0.1", port):
        server = await listeners[0].accept()
        ssh_http._detect_dead_peer(server)
        sock = server.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        idle, interval, count = (
            sock.getsockopt(socket.IPPROTO_TCP, option)
            for option in (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
        )
        assert idle + interval * count <= 60
        await server.aclose()
    await listeners[0].aclose()


def test_the_read_pacer_waits_longer_while_a_pack_streams() -> None:
    pacer = ReadPacer(step=0.001, longest=0.004)
    # The pipe held data each time it was read: the waits double to the longest.
    waits = [pacer.after_read(40_000, waited=0.0) for _ in range(5)]
    assert waits == [0.001, 0.002, 0.004, 0.004, 0.004]
    # A full read means the pipe holds more already: read again at once.
    assert pacer.after_read(CHUNK, waited=0.0) == 0.0
    assert pacer.after_read(40_000, waited=0.0) == 0.004


def test_the_read_pacer_passes_an_exchange_on_at_once() -> None:
    pacer = ReadPacer(step=0.001, longest=0.004)
    # The advertisement, or a negotiation's messages: git was waited for each.
    assert [pacer.after_read(120, waited=w) for w in (0.030, 0.002, 0.001)] == [0.0] * 3
    for _ in range(3):
        pacer.after_read(40_000, waited=0.0)
    # However long a stream before it, output git paused for goes at once.
    assert pacer.after_read(120, waited=0.050) == 0.0
    assert pacer.after_read(120, waited=0.0) == 0.001


async def test_a_session_pipe_that_filled_gives_a_full_read() -> None:
    # upload-pack writes each sideband packet as two writes, its 5-byte header and
    # its data; the header takes a page of the pipe to itself. 40 such packets
    # (328 KB) fill 120 pages: more than a pipe of CHUNK bytes has (64), so git
    # would block on it with less than CHUNK in it, and the paced reader would
    # never see the full read that tells it to go on at once.
    writer = (
        "import os\n"
        "for _ in range(40):\n"
        "    os.write(1, b'2005\\x01')\n"
        "    os.write(1, b'P' * 8192)\n"
    )
    proc = await spawn_git(
        [sys.executable, "-c", writer],
        env=dict(os.environ),
        stdin=False,
        stdout_pipe=ssh_http.STDOUT_PIPE,
    )
    try:
        with trio.fail_after(10):
            assert await proc.wait() == 0  # all of it fit: the writer never blocked
        assert proc.stdout is not None
        assert len(await proc.stdout.receive_some(CHUNK)) == CHUNK
    finally:
        await reap_git(proc, exited=proc.returncode is not None)


async def test_output_held_back_by_the_scrubber_still_goes_in_frames_of_at_most_a_chunk(
    tmp_path: Path,
) -> None:
    # git's first write is a pkt-line header alone: the stdout scrubber holds it
    # until the packet's first byte comes. The next read is a full CHUNK, so what
    # the scrubber hands out is 4 bytes longer than any frame may be (CI saw it:
    # "a frame carries at most 262144 bytes, not 262148", and the clone failed).
    packet = b"2005\x01" + b"P" * 8192
    writer = (
        "import os, sys, time\n"
        "os.write(1, b'2005')\n"
        "time.sleep(0.3)\n"  # the node has read the header alone by now
        f"rest = {packet!r}[4:] + {packet!r} * 60\n"
        "while rest:\n"
        "    rest = rest[os.write(1, rest):]\n"
    )
    expected = packet * 61
    server_stream, client_stream = trio.testing.memory_stream_pair()
    conn = HttpConn(server_stream, keepalive_timeout=5)
    client = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method="POST", target="/alice/r.git/ssh-upload-pack",
        headers=[("host", "node"), ("content-length", "0")],
    )  # fmt: skip
    await client_stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
    received = bytearray()

    async def read_response() -> None:
        while chunk := await client_stream.receive_some(1 << 20):
            received.extend(chunk)

    with trio.fail_after(20):
        assert await conn.next_request() is not None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_response)
            status = await ssh_http.run_session(
                conn, [sys.executable, "-c", writer], dict(os.environ), tmp_path, "test"
            )
            await server_stream.aclose()
    assert status == 0
    client.receive_data(bytes(received))
    decoder, stdout = FrameDecoder(), bytearray()
    while isinstance(event := client.next_event(), h11.Response | h11.Data):
        if isinstance(event, h11.Data):
            for frame in decoder.feed(event.data):
                if isinstance(frame, Stdout):
                    stdout += frame.data
    assert decoder.status == 0
    assert bytes(stdout) == expected
