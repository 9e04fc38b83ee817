"""The node's SSH listener against real OpenSSH, real git, and asyncssh clients."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import pytest
import trio
import trio.testing

from edge.ssh.aio import aio_as_trio, open_aio_loop
from node.app import NodeRuntime, run_node
from node.config import ConfigError, load_node_config
from node.ssh_server import (
    WRITE_HIGH_WATER,
    GitSshSession,
    PathScrubber,
    SshSetupError,
    load_ssh_keys,
)
from routing.etcd import EtcdClient
from routing.schema import decode_node
from tests.node.conftest import ConfigFactory, RunningNode, make_ssh_key
from tests.node.gitutil import create_repo, git, git_descendants, git_env, pkt, wait_no_git_children


class GitResult:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode = returncode
        self.stdout = stdout.decode(errors="replace")
        self.stderr = stderr.decode(errors="replace")


class SshGit:
    """Runs the git CLI over OpenSSH against one node, pinning the host key from etcd."""

    def __init__(self, node: RunningNode, key: Path, home: Path, host_key: str) -> None:
        self.node = node
        self.home = home
        known_hosts = home.parent / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{node.ssh_port} {host_key}\n")
        self.ssh_command = shlex.join(
            [
                "ssh", "-F", "/dev/null", "-i", str(key),
                "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
            ]
        )  # fmt: skip

    def url(self, name: str) -> str:
        return f"ssh://edge@127.0.0.1:{self.node.ssh_port}/{name}.git"

    async def run(
        self, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 20
    ) -> GitResult:
        full_env = {**git_env(self.home), "GIT_SSH_COMMAND": self.ssh_command, **(env or {})}
        with trio.fail_after(timeout):
            result = await trio.run_process(
                ["git", *args], cwd=cwd, env=full_env, capture_stdout=True,
                capture_stderr=True, check=False,
            )  # fmt: skip
        return GitResult(result.returncode, result.stdout, result.stderr)

    async def ok(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
        result = await self.run(*args, cwd=cwd, env=env)
        assert result.returncode == 0, f"git {' '.join(args)}:\n{result.stderr}"
        return result.stdout.strip()


async def node_host_key(node: RunningNode, etcd: EtcdClient) -> str:
    kv = await etcd.get(node.config.keys.node(node.runtime.node_id))
    assert kv is not None
    record = decode_node(kv.value)
    assert record.ssh_host_key is not None
    return record.ssh_host_key


@pytest.fixture
async def ssh_git(
    ssh_node: RunningNode, edge_key: Path, etcd: EtcdClient, tmp_path: Path
) -> SshGit:
    with trio.fail_after(10):
        return SshGit(ssh_node, edge_key, tmp_path / "home", await node_host_key(ssh_node, etcd))


async def connect(node: RunningNode, key: Path) -> asyncssh.SSHClientConnection:
    """An asyncssh client connection (inside `open_aio_loop()`)."""
    return await aio_as_trio(asyncssh.connect)(
        "127.0.0.1", node.ssh_port, username="edge", client_keys=[str(key)],
        known_hosts=None, agent_path=None, config=None, gss_host=None,
    )  # fmt: skip


@asynccontextmanager
async def ssh_connection(
    node: RunningNode, key: Path
) -> AsyncIterator[asyncssh.SSHClientConnection]:
    async with open_aio_loop():
        conn = await connect(node, key)
        try:
            yield conn
        finally:
            conn.close()
            with trio.move_on_after(5, shield=True):
                await aio_as_trio(conn.wait_closed)()


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


# --- git over SSH ---------------------------------------------------------------------


@pytest.mark.parametrize("version", ["0", "2"])
async def test_clone_then_push_round_trips_over_ssh(
    ssh_git: SshGit, tmp_path: Path, version: str
) -> None:
    node, home = ssh_git.node, ssh_git.home
    with trio.fail_after(40):
        seed = await seed_repo(node, tmp_path, "alice/proj", size=300_000)
        clone = tmp_path / "clone"
        trace = await ssh_git.run(
            "-c", f"protocol.version={version}", "clone", ssh_git.url("alice/proj"), str(clone),
            cwd=tmp_path, env={"GIT_TRACE_PACKET": "1"},
        )  # fmt: skip
        assert trace.returncode == 0, trace.stderr
        assert (clone / "data.bin").read_bytes() == (seed / "data.bin").read_bytes()
        # GIT_PROTOCOL went through SendEnv and the node's filter to git.
        assert ("version 2" in trace.stderr) == (version == "2")

        (clone / "more").write_text("pushed over ssh\n")
        await git("add", "more", cwd=clone, home=home)
        await git("commit", "-q", "-m", "more", cwd=clone, home=home)
        await ssh_git.ok("-c", f"protocol.version={version}", "push", "-q", cwd=clone)
        pushed = await git("rev-parse", "main", cwd=clone, home=home)
        # What SSH pushed, HTTP serves: the same repository on the volume.
        served = await git(
            "ls-remote", node.repo_url("alice/proj"), "main", cwd=tmp_path, home=home
        )
        await git("fsck", "--strict", cwd=clone, home=home)
    assert served.split()[0] == pushed


async def test_git_sees_the_edge_user_and_no_other_client_env(
    ssh_git: SshGit, tmp_path: Path
) -> None:
    node = ssh_git.node
    with trio.fail_after(30):
        seed = await seed_repo(node, tmp_path, "alice/hook")
        hook = node.config.volume_dir / "alice" / "hook.git" / "hooks" / "pre-receive"
        seen = tmp_path / "hook-env"
        hook.write_text(f"#!/bin/sh\nenv > {seen}\n")
        hook.chmod(0o755)
        await git("commit", "-q", "--allow-empty", "-m", "2", cwd=seed, home=ssh_git.home)
        ssh_git.ssh_command += " -o " + shlex.quote("SetEnv=GITEDGE_USER=bob LD_PRELOAD=/x.so")
        await ssh_git.ok("push", "-q", ssh_git.url("alice/hook"), "main", cwd=seed)
    env = dict(line.split("=", 1) for line in seen.read_text().splitlines() if "=" in line)
    assert env["GITEDGE_USER"] == "bob"
    assert "LD_PRELOAD" not in env


async def test_unknown_repo_says_not_found(ssh_git: SshGit, tmp_path: Path) -> None:
    result = await ssh_git.run("clone", ssh_git.url("no/such"), str(tmp_path / "c"), cwd=tmp_path)
    assert result.returncode != 0
    assert "ERROR: Repository not found." in result.stderr
    assert str(ssh_git.node.config.volume_dir) not in result.stderr


async def test_refused_command_gets_a_reason(ssh_node: RunningNode, edge_key: Path) -> None:
    with trio.fail_after(10):
        async with ssh_connection(ssh_node, edge_key) as conn:
            for command in ("rm -rf /", "git-upload-pack '../x.git'", "git-upload-pack 'a/b' x"):
                result = await aio_as_trio(conn.run)(command, encoding=None)
                assert result.exit_status == 1
                assert isinstance(result.stderr, bytes) and result.stderr.startswith(b"ERROR: ")


async def test_untrusted_key_is_refused(ssh_node: RunningNode, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    make_ssh_key(stranger)
    with trio.fail_after(10):
        async with open_aio_loop():
            with pytest.raises(asyncssh.PermissionDenied):
                await connect(ssh_node, stranger)


async def test_password_login_is_not_offered(ssh_node: RunningNode, tmp_path: Path) -> None:
    with trio.fail_after(10):
        result = await trio.run_process(
            [
                "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "PubkeyAuthentication=no",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-p", str(ssh_node.ssh_port), "edge@127.0.0.1", "git-upload-pack", "a/b.git",
            ],
            capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode == 255
    assert b"Permission denied (publickey)" in result.stderr


async def test_shell_pty_subsystem_and_forwarding_are_refused(
    ssh_node: RunningNode, edge_key: Path
) -> None:
    with trio.fail_after(10):
        async with ssh_connection(ssh_node, edge_key) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await aio_as_trio(conn.create_process)(encoding=None)  # a shell
            with pytest.raises(asyncssh.ChannelOpenError):
                await aio_as_trio(conn.create_process)(
                    "git-upload-pack 'a/b.git'", term_type="xterm", encoding=None
                )
            with pytest.raises(asyncssh.ChannelOpenError):
                await aio_as_trio(conn.create_process)(subsystem="sftp", encoding=None)
            with pytest.raises(asyncssh.ChannelOpenError):
                await aio_as_trio(conn.open_connection)("127.0.0.1", ssh_node.ssh_port)
            with pytest.raises(asyncssh.ChannelListenError):
                await aio_as_trio(conn.forward_remote_port)("127.0.0.1", 0, "127.0.0.1", 1)
            # Still usable for git afterwards.
            result = await aio_as_trio(conn.run)("git-upload-pack 'no/repo.git'", encoding=None)
            assert result.exit_status == 1


async def test_sessions_per_connection_are_capped(
    make_config: ConfigFactory, edge_key: Path, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(ssh=True, ssh_max_sessions=2)
    with trio.fail_after(20):
        node = RunningNode(await nursery.start(run_node, config), config)
        await seed_repo(node, tmp_path, "alice/cap")
        async with ssh_connection(node, edge_key) as conn:
            open_v2 = aio_as_trio(conn.create_process)
            # v2 upload-pack waits for a command after its advertisement: held open.
            held = [
                await open_v2(
                    "git-upload-pack 'alice/cap.git'",
                    env={"GIT_PROTOCOL": "version=2"},
                    encoding=None,
                )
                for _ in range(2)
            ]
            with pytest.raises(asyncssh.ChannelOpenError, match="more than 2 sessions"):
                await open_v2("git-upload-pack 'alice/cap.git'", encoding=None)
            held[0].stdin.write_eof()
            await aio_as_trio(held[0].wait_closed)()
            assert held[0].exit_status == 0
            result = await aio_as_trio(conn.run)("git-upload-pack 'no/such.git'", encoding=None)
            assert result.exit_status == 1
            held[1].stdin.write_eof()
            await aio_as_trio(held[1].wait_closed)()


# --- registration and keys --------------------------------------------------------------


async def test_node_record_carries_ssh_address_and_host_key(
    ssh_node: RunningNode, etcd: EtcdClient
) -> None:
    with trio.fail_after(10):
        kv = await etcd.get(ssh_node.config.keys.node("fra-1"))
    assert kv is not None
    record = decode_node(kv.value)
    assert record.ssh_address == ssh_node.runtime.ssh_address == f"127.0.0.1:{ssh_node.ssh_port}"
    assert ssh_node.config.ssh is not None
    host_key = asyncssh.read_private_key(ssh_node.config.ssh.host_key_file)
    assert record.ssh_host_key is not None
    assert asyncssh.import_public_key(record.ssh_host_key) == host_key.convert_to_public()
    assert ssh_node.config.ssh.host_key_file.stat().st_mode & 0o777 == 0o600
    assert "ssh_address" in ssh_node.runtime.ready_info()


async def test_host_key_survives_a_restart(make_config: ConfigFactory, edge_key: Path) -> None:
    config = make_config(ssh=True)
    assert config.ssh is not None
    first = (await trio.to_thread.run_sync(load_ssh_keys, config.ssh)).host_key_line
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            runtime: NodeRuntime = await nursery.start(run_node, config)
            nursery.cancel_scope.cancel()
    second = (await trio.to_thread.run_sync(load_ssh_keys, config.ssh)).host_key_line
    assert first == second and first.startswith("ssh-ed25519 ")
    assert runtime.ssh_address is not None


async def test_node_without_ssh_table_has_no_listener(node: RunningNode, etcd: EtcdClient) -> None:
    with trio.fail_after(10):
        kv = await etcd.get(node.config.keys.node("fra-1"))
    assert kv is not None
    record = decode_node(kv.value)
    assert (record.ssh_address, record.ssh_host_key) == (None, None)
    assert "ssh_address" not in node.runtime.ready_info()


def test_trusted_keys_file_problems_name_the_key(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(ssh=True)
    assert config.ssh is not None
    config.ssh.trusted_edge_keys_file.write_text("# nobody\n")
    with pytest.raises(SshSetupError, match=r"\[ssh\] trusted_edge_keys_file: .*No valid entries"):
        load_ssh_keys(config.ssh)
    config.ssh.trusted_edge_keys_file.unlink()
    with pytest.raises(SshSetupError, match=r"\[ssh\] trusted_edge_keys_file"):
        load_ssh_keys(config.ssh)
    config.ssh.host_key_file.write_text("garbage")
    with pytest.raises(SshSetupError, match=r"\[ssh\] host_key_file"):
        load_ssh_keys(config.ssh)


NODE_TOML = """
[node]
id = "fra-1"
region = "fra"
volume_dir = "/srv/vol"
admin_secret = "s"
"""


@pytest.mark.parametrize(
    ("ssh_table", "key"),
    [
        ('listen = "127.0.0.1:0"', "host_key_file"),
        ('host_key_file = "/k"\ntrusted_edge_keys_file = "/t"\nwindow = 10', "window"),
        ('host_key_file = "/k"\ntrusted_edge_keys_file = "/t"\nmax_sessions = 0', "max_sessions"),
        ('host_key_file = "/k"\ntrusted_edge_keys_file = "/t"\nlisten = "0.0.0.0:22"', "advertise"),
        ('host_key_file = "/k"\ntrusted_edge_keys_file = "/t"\nport = 22', "port"),
    ],
)
def test_ssh_config_errors_name_the_key(tmp_path: Path, ssh_table: str, key: str) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE_TOML + "[ssh]\n" + ssh_table + "\n")
    with pytest.raises(ConfigError, match=rf"\[ssh\]: {key}: "):
        load_node_config(path)


def test_ssh_config_defaults(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(NODE_TOML)
    assert load_node_config(path).ssh is None
    path.write_text(NODE_TOML + '[ssh]\nhost_key_file = "/k"\ntrusted_edge_keys_file = "/t"\n')
    ssh = load_node_config(path).ssh
    assert ssh is not None
    assert (ssh.listen_host, ssh.listen_port, ssh.advertise) == ("127.0.0.1", 0, None)
    assert (ssh.window, ssh.max_sessions) == (16 * 2**20, 64)


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_path_scrubber_finds_paths_split_across_reads(step: int) -> None:
    scrubber = PathScrubber(Path("/srv/vol"))
    text = b"fatal: '/srv/vol/a/b.git' does not appear to be a git repository\nremote: 50%\r"
    out = b"".join(scrubber.feed(text[i : i + step]) for i in range(0, len(text), step))
    out += scrubber.finish()
    assert out == b"fatal: 'a/b.git' does not appear to be a git repository\nremote: 50%\r"


class _RecordingChannel:
    """What GitSshSession's stdout pump sees of an asyncssh channel: the bytes it
    holds back (beyond the edge's window) until drain() lets them go."""

    def __init__(self) -> None:
        self.held = 0
        self.drains: list[int] = []

    def get_write_buffer_size(self) -> int:
        return self.held

    def write(self, data: bytes) -> None:
        self.held += len(data)

    async def drain(self) -> None:
        self.drains.append(self.held)
        self.held = 0


class _Process:
    def __init__(self, channel: _RecordingChannel) -> None:
        self.channel = channel
        self.stdout = channel


async def test_git_stdout_waits_for_the_channel_only_when_it_holds_data_back(
    tmp_path: Path,
) -> None:
    """Back-pressure from a slow edge reaches git (bounded memory), without paying an
    asyncio round trip per chunk while the window is open."""
    channel = _RecordingChannel()
    session = GitSshSession(_Process(channel), [], {}, volume=tmp_path)  # type: ignore[arg-type]
    send, receive = trio.testing.memory_stream_one_way_pair()
    chunks = [b"a" * 1000, b"b" * WRITE_HIGH_WATER, b"c" * 10, b"d" * (WRITE_HIGH_WATER + 1)]

    async def git_writes() -> None:
        for chunk in chunks:
            await send.send_all(chunk)
            await trio.testing.wait_all_tasks_blocked()
        await send.aclose()

    with trio.fail_after(5):
        async with open_aio_loop(), trio.open_nursery() as nursery:
            nursery.start_soon(git_writes)
            await session._stdout_to_channel(receive)
    # Below the mark nothing waits; above it the pump waits before reading on.
    assert channel.drains == [1000 + WRITE_HIGH_WATER, 10 + WRITE_HIGH_WATER + 1]
    assert channel.held == 0


# --- no git outlives its session -------------------------------------------------------


async def start_stalled_ssh_clone(ssh_git: SshGit, tmp_path: Path) -> trio.Process:
    """A 20 MiB repo, and OpenSSH fetching it without reading: git blocks writing."""
    node = ssh_git.node
    seed = await seed_repo(node, tmp_path, "alice/big", size=20 * 2**20)
    oid = await git("rev-parse", "main", cwd=seed, home=tmp_path / "home")
    assert git_descendants() == []
    argv = [
        *shlex.split(ssh_git.ssh_command),
        *("-p", str(node.ssh_port), "edge@127.0.0.1", "git-upload-pack 'alice/big.git'"),
    ]
    client = await trio.lowlevel.open_process(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True
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


async def test_client_killed_mid_clone_leaves_no_git(ssh_git: SshGit, tmp_path: Path) -> None:
    """Regression guard: an aborted SSH clone must not leave upload-pack/pack-objects."""
    with trio.fail_after(50):
        client = await start_stalled_ssh_clone(ssh_git, tmp_path)
        await kill_client(client)
        assert await wait_no_git_children(10) == []


async def test_shutdown_mid_ssh_clone_kills_git(
    make_config: ConfigFactory, edge_key: Path, etcd: EtcdClient, tmp_path: Path
) -> None:
    config = make_config(ssh=True)
    with trio.fail_after(50):
        async with trio.open_nursery() as nursery:
            node = RunningNode(await nursery.start(run_node, config), config)
            host_key = await node_host_key(node, etcd)
            ssh_git = SshGit(node, edge_key, tmp_path / "home", host_key)
            client = await start_stalled_ssh_clone(ssh_git, tmp_path)
            nursery.cancel_scope.cancel()
        try:
            assert await wait_no_git_children(10) == []
            # The node closed the connection: the client sees the end, not a hang.
            assert await client.wait() != 0
        finally:
            await kill_client(client)


async def test_clients_dropping_mid_handshake_do_not_take_the_listener_down(
    ssh_node: RunningNode, edge_key: Path
) -> None:
    """Clients that vanish at any point cost nothing but a log line."""
    greetings = [b"", b"SSH-2.0-OpenSSH_9.2\r\n", b"SSH-2.0-x\r\n" + os.urandom(64), b"GET /\r\n"]
    with trio.fail_after(20):
        for greeting in greetings * 3:
            stream = await trio.open_tcp_stream("127.0.0.1", ssh_node.ssh_port)
            await stream.send_all(greeting)
            await stream.receive_some(100)  # the server's version line
            await trio.aclose_forcefully(stream)
        async with ssh_connection(ssh_node, edge_key) as conn:
            session = await aio_as_trio(conn.create_process)(
                "git-upload-pack 'no/such.git'", encoding=None
            )
            session.channel.abort()  # a channel torn down before git even ran
            result = await aio_as_trio(conn.run)("git-upload-pack 'no/such.git'", encoding=None)
    assert result.exit_status == 1
