"""NodeSSHPool against a real in-process node's SSH listener, with real git behind it."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import asyncssh
import pytest
import trio

from devnet.procs import free_port
from edge.ssh.aio import aio_as_trio, open_aio_loop
from edge.ssh.nodes import INTERNAL_CIPHERS, NodeGitProcess, NodeSSHPool, NodeSSHUnavailable
from gitproto.ssh_command import parse_command
from node.app import NodeRuntime, run_node
from routing.etcd import EtcdClient
from routing.model import NodeId, NodeRecord, Region
from routing.schema import decode_node
from tests.node import conftest as node_fixtures
from tests.node.conftest import ConfigFactory, RunningNode
from tests.node.gitutil import create_repo, git, git_descendants, pkt, wait_no_git_children

# The node fixtures (a shared etcd, in-process nodes with SSH on), used here as is.
etcd_server = node_fixtures.etcd_server
etcd = node_fixtures.etcd
make_config = node_fixtures.make_config
edge_key = node_fixtures.edge_key
ssh_node = node_fixtures.ssh_node

UPLOAD = parse_command("git-upload-pack 'alice/proj.git'")


async def test_stray_asyncio_errors_are_logged_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Regression guard: trio-asyncio's default handler raised these into the loop's
    nursery, and one "Task was destroyed" from an aborted client ended a server."""

    async def fails() -> None:
        raise ConnectionResetError("client went away")

    with trio.fail_after(5):
        async with open_aio_loop() as loop:
            task = loop.create_task(fails())
            await aio_as_trio(asyncio.wait)([task])  # it fails; nobody retrieves that
            del task
            gc.collect()  # "Task exception was never retrieved"
            loop.call_exception_handler({"message": "Task was destroyed but it is pending!"})
            assert await aio_as_trio(asyncio.sleep)(0, "alive") == "alive"
    logged = [r.getMessage() for r in caplog.records if r.name == "edge.ssh.aio"]
    assert any("never retrieved" in m and "client went away" in m for m in logged)
    assert any("Task was destroyed" in m for m in logged)
    assert all(r.levelno == logging.WARNING for r in caplog.records if r.name == "edge.ssh.aio")


def test_no_cbc_cipher_is_offered() -> None:
    """Dropping the empty SSH_MSG_IGNORE is safe only because no hop can negotiate
    CBC (RFC 4251 section 9.3.1): the fronts use asyncssh's defaults, the node hop
    INTERNAL_CIPHERS."""
    defaults = asyncssh.encryption.get_default_encryption_algs()
    assert defaults
    offered = [alg.decode() for alg in defaults] + list(INTERNAL_CIPHERS)
    assert not [alg for alg in offered if "cbc" in alg]


async def registered(node: RunningNode, etcd: EtcdClient) -> NodeRecord:
    with trio.fail_after(10):
        kv = await etcd.get(node.config.keys.node(node.runtime.node_id))
    assert kv is not None
    return decode_node(kv.value)


@pytest.fixture
async def seeded(ssh_node: RunningNode, tmp_path: Path) -> str:
    """`alice/proj` on the node with one commit; its oid."""
    home = tmp_path / "home"
    with trio.fail_after(20):
        assert (await create_repo(ssh_node.url, "alice/proj")).status_code == 201
        work = tmp_path / "work"
        await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
        await git("commit", "-q", "--allow-empty", "-m", "one", cwd=work, home=home)
        await git("push", "-q", ssh_node.repo_url("alice/proj"), "main", cwd=work, home=home)
        return await git("rev-parse", "main", cwd=work, home=home)


async def read_until(read: Callable[[int], Awaitable[bytes]], end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = await read(65536)
        assert chunk, f"EOF before {end!r}; got {data[-200:]!r}"
        data += chunk
    return data


async def read_all(read: Callable[[int], Awaitable[bytes]]) -> bytes:
    data = b""
    while chunk := await read(65536):
        data += chunk
    return data


async def ls_refs(process: NodeGitProcess) -> tuple[bytes, int]:
    """v0 upload-pack: read the advertisement, answer with a flush (want nothing)."""
    advertisement = await aio_as_trio(read_until)(process.read_stdout, b"0000")
    await aio_as_trio(process.write_stdin)(b"0000")
    process.write_eof()
    rest = await aio_as_trio(read_all)(process.read_stdout)
    return advertisement + rest, await aio_as_trio(process.wait)()


async def test_channels_share_one_connection_and_carry_git(
    ssh_node: RunningNode, etcd: EtcdClient, edge_key: Path, seeded: str
) -> None:
    record = await registered(ssh_node, etcd)
    pool = NodeSSHPool(edge_key)
    with trio.fail_after(20):
        async with open_aio_loop():
            open_git = aio_as_trio(pool.open_git)
            try:
                for _ in range(2):
                    process = await open_git(record, UPLOAD, user="alice", git_protocol=None)
                    refs, status = await ls_refs(process)
                    assert status == 0
                    assert f"{seeded} refs/heads/main".encode() in refs
                    assert refs.endswith(b"0000")
                assert (pool.stats.connects, pool.stats.reuses) == (1, 1)
            finally:
                await aio_as_trio(pool.close)()


async def test_near_nodes_get_the_small_window_far_ones_the_large(
    ssh_node: RunningNode, etcd: EtcdClient, edge_key: Path, seeded: str
) -> None:
    """The window is what a session may buffer at the edge: large only where the RTT needs it."""
    record = await registered(ssh_node, etcd)
    far_record = replace(record, region=Region("zzz"))
    pool = NodeSSHPool(edge_key, window=8 * 2**20, near_window=2**20, region=record.region)
    windows = []
    with trio.fail_after(20):
        async with open_aio_loop():
            try:
                for node in (record, far_record):
                    process = await aio_as_trio(pool.open_git)(
                        node, UPLOAD, user="alice", git_protocol=None
                    )
                    windows.append(process._process.channel.get_recv_window())
                    _refs, status = await ls_refs(process)
                    assert status == 0
            finally:
                await aio_as_trio(pool.close)()
    # Measured before any data arrived would be exact; the advertisement may already
    # have used a little of it, so compare with a margin far below the 8x difference.
    assert 2**20 - 64 * 1024 <= windows[0] <= 2**20
    assert 8 * 2**20 - 64 * 1024 <= windows[1] <= 8 * 2**20


async def test_concurrent_first_requests_share_one_connect(
    ssh_node: RunningNode, etcd: EtcdClient, edge_key: Path, seeded: str
) -> None:
    record = await registered(ssh_node, etcd)
    pool = NodeSSHPool(edge_key)
    statuses: list[int] = []

    async def one_fetch() -> None:
        process = await aio_as_trio(pool.open_git)(
            record, UPLOAD, user="alice", git_protocol="version=2"
        )
        # v2: a capability advertisement, then git waits for a command; EOF ends it.
        caps = await aio_as_trio(read_until)(process.read_stdout, b"0000")
        assert caps.startswith(pkt("version 2\n"))
        process.write_eof()
        statuses.append(await aio_as_trio(process.wait)())

    with trio.fail_after(20):
        async with open_aio_loop():
            try:
                async with trio.open_nursery() as nursery:
                    for _ in range(5):
                        nursery.start_soon(one_fetch)
            finally:
                await aio_as_trio(pool.close)()
    assert statuses == [0] * 5
    assert (pool.stats.connects, pool.stats.reuses) == (1, 4)


async def test_unknown_repo_and_exit_status_come_through(
    ssh_node: RunningNode, etcd: EtcdClient, edge_key: Path
) -> None:
    record = await registered(ssh_node, etcd)
    pool = NodeSSHPool(edge_key)
    with trio.fail_after(10):
        async with open_aio_loop():
            try:
                process = await aio_as_trio(pool.open_git)(
                    record,
                    parse_command("git-upload-pack 'no/such.git'"),
                    user="a",
                    git_protocol=None,
                )
                stderr = await aio_as_trio(read_all)(process.read_stderr)
                stdout = await aio_as_trio(read_all)(process.read_stdout)
                status = await aio_as_trio(process.wait)()
            finally:
                await aio_as_trio(pool.close)()
    assert (stdout, stderr, status) == (b"", b"ERROR: Repository not found.\n", 1)


@pytest.mark.parametrize(
    ("address", "host_key", "error"),
    [
        (None, None, "no SSH listener"),
        ("127.0.0.1", "ssh-ed25519 AAAA", "bad ssh_address"),
        ("127.0.0.1:22", "ssh-ed25519 AAAA", "bad ssh_host_key"),
    ],
)
async def test_node_without_usable_ssh_record_is_unavailable(
    edge_key: Path, address: str | None, host_key: str | None, error: str
) -> None:
    record = NodeRecord(NodeId("x-1"), Region("fra"), "http://127.0.0.1:1", (), address, host_key)
    pool = NodeSSHPool(edge_key)
    async with open_aio_loop():
        with pytest.raises(NodeSSHUnavailable, match=error):
            await aio_as_trio(pool.open_git)(record, UPLOAD, user="a", git_protocol=None)
    assert pool.stats.connects == 0


async def silent_listener(task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Accepts TCP connections and never says a word: a hung node."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    held: list[trio.SocketStream] = []

    async def hold(stream: trio.SocketStream) -> None:
        held.append(stream)
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, hold, listeners)
        task_status.started(port)


@pytest.mark.parametrize("down", ["refused", "silent"])
async def test_node_down_fails_within_the_connect_timeout(
    ssh_node: RunningNode, etcd: EtcdClient, edge_key: Path, nursery: trio.Nursery, down: str
) -> None:
    record = await registered(ssh_node, etcd)
    port = free_port() if down == "refused" else await nursery.start(silent_listener)
    dead = replace(record, ssh_address=f"127.0.0.1:{port}")
    pool = NodeSSHPool(edge_key, connect_timeout=1.0)
    async with open_aio_loop():
        started = trio.current_time()
        with trio.fail_after(5), pytest.raises(NodeSSHUnavailable):
            await aio_as_trio(pool.open_git)(dead, UPLOAD, user="a", git_protocol=None)
        assert trio.current_time() - started < 1.0 + 1.0
        # A failed connect is not cached: the next request tries again.
        with trio.fail_after(5), pytest.raises(NodeSSHUnavailable):
            await aio_as_trio(pool.open_git)(dead, UPLOAD, user="a", git_protocol=None)
        await aio_as_trio(pool.close)()
    assert pool.stats.connects == 2


async def test_wrong_host_key_is_refused(
    ssh_node: RunningNode, etcd: EtcdClient, edge_key: Path
) -> None:
    record = await registered(ssh_node, etcd)
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    pool = NodeSSHPool(edge_key)
    with trio.fail_after(10):
        async with open_aio_loop():
            with pytest.raises(NodeSSHUnavailable, match="host key"):
                await aio_as_trio(pool.open_git)(
                    replace(record, ssh_host_key=impostor), UPLOAD, user="a", git_protocol=None
                )
            await aio_as_trio(pool.close)()


async def test_pool_reconnects_after_a_node_restart(
    make_config: ConfigFactory, etcd: EtcdClient, edge_key: Path, tmp_path: Path
) -> None:
    config = make_config(ssh=True, ssh_listen=f"127.0.0.1:{free_port()}")
    pool = NodeSSHPool(edge_key)
    with trio.fail_after(30):
        async with open_aio_loop():
            for round_ in range(2):
                async with trio.open_nursery() as nursery:
                    runtime: NodeRuntime = await nursery.start(run_node, config)
                    node = RunningNode(runtime, config)
                    if round_ == 0:
                        assert (await create_repo(node.url, "alice/proj")).status_code == 201
                    record = await registered(node, etcd)
                    process = await aio_as_trio(pool.open_git)(
                        record, UPLOAD, user="a", git_protocol=None
                    )
                    _, status = await ls_refs(process)
                    assert status == 0
                    nursery.cancel_scope.cancel()  # the node stops, its connections close
            await aio_as_trio(pool.close)()
    # Same address and host key after the restart, one new connection.
    assert pool.stats.connects == 2


async def test_closing_a_channel_mid_clone_stops_git_on_the_node(
    ssh_node: RunningNode, etcd: EtcdClient, edge_key: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    with trio.fail_after(40):
        await create_repo(ssh_node.url, "alice/big")
        work = tmp_path / "big"
        await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
        (work / "blob").write_bytes(os.urandom(20 * 2**20))
        await git("add", "blob", cwd=work, home=home)
        await git("commit", "-q", "-m", "big", cwd=work, home=home)
        url = ssh_node.repo_url("alice/big")
        await git("-c", "pack.compression=0", "push", "-q", url, "main", cwd=work, home=home)
        oid = await git("rev-parse", "main", cwd=work, home=home)
        record = await registered(ssh_node, etcd)
        pool = NodeSSHPool(edge_key)
        async with open_aio_loop():
            process = await aio_as_trio(pool.open_git)(
                record,
                parse_command("git-upload-pack 'alice/big.git'"),
                user="a",
                git_protocol=None,
            )
            await aio_as_trio(read_until)(process.read_stdout, b"0000")
            request = pkt(f"want {oid}\n") + b"0000" + pkt("done\n")
            await aio_as_trio(process.write_stdin)(request)
            assert (await aio_as_trio(process.read_stdout)(4096)).startswith(pkt("NAK\n"))
            # 20 MiB is more than the window: git on the node is blocked writing.
            assert git_descendants() != []
            process.close()
            assert await wait_no_git_children(10) == []
            # The connection outlives its channel and serves the next request.
            again = await aio_as_trio(pool.open_git)(record, UPLOAD, user="a", git_protocol=None)
            again.write_eof()
            await aio_as_trio(read_all)(again.read_stdout)
            assert await aio_as_trio(again.wait)() == 1  # alice/proj does not exist here
            await aio_as_trio(pool.close)()
    assert pool.stats.connects == 1
