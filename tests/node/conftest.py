"""A real etcd for the node tests (shared by the session), and nodes run in-process."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from devnet.procs import EtcdServer, start_etcd
from node.app import NodeRuntime, run_node
from node.config import NodeConfig, load_node_config
from routing.etcd import EtcdClient

ADMIN_SECRET = "test-secret-" + secrets.token_hex(8)
# What an edge sends on every request (node/edge_auth.py).
EDGE_AUTH = {"authorization": f"Bearer {ADMIN_SECRET}"}
ConfigFactory = Callable[..., NodeConfig]
# Background housekeeping spawns git after pushes; the tests that count the node's
# git processes would see it. tests/node/test_housekeeper.py turns it on.
HOUSEKEEPING_OFF = "[housekeeping]\nenabled = false\n"


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd_server.url, timeout=3.0) as client:
        yield client


@pytest.fixture
def make_config(tmp_path: Path, etcd_server: EtcdServer) -> ConfigFactory:
    """Writes a node TOML and loads it, so every node test also runs the loader."""
    prefix = f"/test-node/{uuid.uuid4().hex[:8]}/"
    secret_file = tmp_path / "admin-secret"
    secret_file.write_text(ADMIN_SECRET + "\n")

    def make(
        node_id: str = "fra-1",
        region: str = "fra",
        volume: str = "vol",
        lease_ttl: int = 10,
        endpoints: str | None = None,
        tls: bool = False,
        extra: str = HOUSEKEEPING_OFF,
    ) -> NodeConfig:
        path = tmp_path / f"{node_id}-{volume}.toml"
        tls_toml = tls_table(tmp_path, node_id) if tls else ""
        path.write_text(
            f"""
[node]
id = "{node_id}"
region = "{region}"
volume_dir = "{tmp_path / volume}"
listen = "127.0.0.1:0"
admin_secret_file = "{secret_file}"
lease_ttl = {lease_ttl}
[etcd]
endpoints = ["{endpoints or etcd_server.url}"]
prefix = "{prefix}"
{tls_toml}
{extra}"""
        )
        return load_node_config(path)

    return make


def tls_table(tmp_path: Path, node_id: str) -> str:
    """`[tls]` with files under tmp_path (made by the node when missing)."""
    return f"""[tls]
cert_file = "{tmp_path / f"{node_id}-tls-cert.pem"}"
key_file = "{tmp_path / f"{node_id}-tls-key.pem"}"
"""


@dataclass(frozen=True)
class RunningNode:
    runtime: NodeRuntime
    config: NodeConfig

    @property
    def url(self) -> str:
        return self.runtime.http_url

    def repo_url(self, name: str) -> str:
        return f"{self.url}/{name}.git"


@pytest.fixture
async def node(make_config: ConfigFactory, nursery: trio.Nursery) -> RunningNode:
    """A node serving on a free port until the test ends."""
    config = make_config()
    with trio.fail_after(10):
        runtime: NodeRuntime = await nursery.start(run_node, config)
    return RunningNode(runtime, config)
