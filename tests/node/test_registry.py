"""The node in a real etcd: keys on start, gone on shutdown, volume kept across restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from devnet.procs import EtcdServer, free_port
from node.app import NodeRuntime, run_node
from node.registry import VOLUME_FILE, VolumeError
from routing.etcd import EtcdClient
from routing.schema import decode_node, decode_volume
from tests.node.conftest import ConfigFactory, RunningNode


async def test_start_registers_node_under_a_lease_and_volume_durably(
    node: RunningNode, etcd: EtcdClient
) -> None:
    keys = node.config.keys
    with trio.fail_after(10):
        node_kv = await etcd.get(keys.node("fra-1"))
        volume_kv = await etcd.get(keys.volume(node.runtime.volume_id))
    assert node_kv is not None and volume_kv is not None
    assert node_kv.lease != 0
    assert volume_kv.lease == 0
    record = decode_node(node_kv.value)
    assert (record.node_id, record.region, record.http_url) == ("fra-1", "fra", node.url)
    assert [v.volume_id for v in record.volumes] == [node.runtime.volume_id]
    assert record.volumes[0].free_bytes > 0
    volume = decode_volume(volume_kv.value)
    assert (volume.region, volume.node_id) == ("fra", "fra-1")


async def test_clean_shutdown_removes_the_node_at_once(
    make_config: ConfigFactory, etcd: EtcdClient
) -> None:
    config = make_config(lease_ttl=30)  # expiry alone would take 30 s
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            runtime: NodeRuntime = await nursery.start(run_node, config)
            assert await etcd.get(config.keys.node("fra-1")) is not None
            nursery.cancel_scope.cancel()
        assert await etcd.get(config.keys.node("fra-1")) is None
        # The volume outlives the node.
        assert await etcd.get(config.keys.volume(runtime.volume_id)) is not None


async def test_restarted_node_keeps_its_volume(make_config: ConfigFactory) -> None:
    config = make_config()
    volume_ids = []
    for _ in range(2):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                runtime: NodeRuntime = await nursery.start(run_node, config)
                volume_ids.append(runtime.volume_id)
                nursery.cancel_scope.cancel()
    assert volume_ids[0] == volume_ids[1]
    assert volume_ids[0].startswith("v-") and len(volume_ids[0]) == 18
    stored = json.loads((config.volume_dir / VOLUME_FILE).read_text())
    assert stored == {"volume_id": volume_ids[0], "region": "fra"}


async def test_volume_of_another_region_is_refused(make_config: ConfigFactory) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(run_node, make_config(region="fra"))
            nursery.cancel_scope.cancel()
    with pytest.RaisesGroup(pytest.RaisesExc(VolumeError, match="belongs to region 'fra'")):
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(run_node, make_config(region="lax"))


async def test_node_registers_again_after_its_lease_is_lost(
    make_config: ConfigFactory, etcd: EtcdClient, nursery: trio.Nursery
) -> None:
    """What an etcd outage longer than the TTL does: the node must come back by itself."""
    config = make_config(lease_ttl=2)
    key = config.keys.node("fra-1")
    with trio.fail_after(10):
        await nursery.start(run_node, config)
        first = await etcd.get(key)
        assert first is not None
        await etcd.lease_revoke(first.lease)
        assert await etcd.get(key) is None
        while (again := await etcd.get(key)) is None:
            await trio.sleep(0.05)
    assert again.lease not in (0, first.lease)


async def _pipe(source: trio.SocketStream, sink: trio.SocketStream) -> None:
    while data := await source.receive_some(65536):
        await sink.send_all(data)
    await sink.send_eof()


async def forward_to(
    port: int, target: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on `port` and relay each connection to `target` ("host:port")."""
    host, target_port = target.removeprefix("http://").split(":")
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")

    async def relay(client: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream(host, int(target_port))
        async with client, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(_pipe, client, upstream)
            nursery.start_soon(_pipe, upstream, client)

    task_status.started()
    await trio.serve_listeners(relay, listeners)


async def test_node_started_before_etcd_registers_once_etcd_is_up(
    make_config: ConfigFactory, etcd_server: EtcdServer, etcd: EtcdClient, nursery: trio.Nursery
) -> None:
    port = free_port()
    config = make_config(endpoints=f"http://127.0.0.1:{port}")  # nothing listens yet
    ready = trio.Event()

    async def start_node() -> None:
        await nursery.start(run_node, config)
        ready.set()

    nursery.start_soon(start_node)
    with trio.move_on_after(1.0):
        await ready.wait()
    assert not ready.is_set(), "reported ready without etcd"
    await nursery.start(forward_to, port, etcd_server.url)
    with trio.fail_after(10):
        await ready.wait()
        assert await etcd.get(config.keys.node("fra-1")) is not None


async def test_cli_writes_ready_file_and_exits_cleanly_on_sigterm(
    make_config: ConfigFactory, etcd: EtcdClient, tmp_path: Path
) -> None:
    config = make_config()
    config_path = next(tmp_path.glob("fra-1-*.toml"))
    ready = tmp_path / "ready.json"
    argv = [sys.executable, "-m", "node", "--config", str(config_path), "--ready-file", str(ready)]
    proc = await trio.lowlevel.open_process(argv, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(15):
            while not ready.exists():
                assert proc.poll() is None, "node exited before it was ready"
                await trio.sleep(0.05)
            info = json.loads(ready.read_text())
            assert await etcd.get(config.keys.node("fra-1")) is not None
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
            assert await etcd.get(config.keys.node("fra-1")) is None
    finally:
        with trio.move_on_after(5, shield=True):
            if proc.poll() is None:
                proc.kill()
            await proc.wait()
    assert set(info) == {"node_id", "region", "volume_id", "http_url", "listening", "pid"}
    assert info["pid"] == proc.pid and info["node_id"] == "fra-1"
    assert info["http_url"].startswith("http://127.0.0.1:")
    assert os.path.isdir(config.volume_dir)


def test_cli_reports_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[node]\nid = "fra-1"\nregion = "fra"\nvolume_dir = "/tmp/x"\nadmin_secret = "s"\n'
        "lease_tll = 5\n"  # a typo of lease_ttl
    )
    result = subprocess.run(
        [sys.executable, "-m", "node", "--config", str(path)], capture_output=True, timeout=20
    )
    assert result.returncode == 2
    assert b"lease_tll: unknown key" in result.stderr
