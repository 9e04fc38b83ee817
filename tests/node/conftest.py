"""A real etcd for the node tests (shared by the session), and nodes run in-process."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
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
EDGE_KEY = "edge_key"


def make_ssh_key(path: Path) -> asyncssh.SSHKey:
    """An ed25519 key pair at `path` and `path.pub`, usable by OpenSSH (mode 0600)."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=path.name)
    path.write_bytes(key.export_private_key())
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    return key


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
        ssh: bool = False,
        ssh_listen: str = "127.0.0.1:0",
        ssh_max_sessions: int = 64,
        tls: bool = False,
    ) -> NodeConfig:
        path = tmp_path / f"{node_id}-{volume}.toml"
        ssh_table = _ssh_table(tmp_path, node_id, ssh_listen, ssh_max_sessions) if ssh else ""
        if tls:
            ssh_table += tls_table(tmp_path, node_id)
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
{ssh_table}"""
        )
        return load_node_config(path)

    return make


def tls_table(tmp_path: Path, node_id: str) -> str:
    """`[tls]` with files under tmp_path (made by the node when missing)."""
    return f"""[tls]
cert_file = "{tmp_path / f"{node_id}-tls-cert.pem"}"
key_file = "{tmp_path / f"{node_id}-tls-key.pem"}"
"""


def _ssh_table(tmp_path: Path, node_id: str, listen: str, max_sessions: int) -> str:
    """`[ssh]` trusting the edge key at tmp_path/EDGE_KEY (made on first use)."""
    edge_key = tmp_path / EDGE_KEY
    if not edge_key.exists():
        make_ssh_key(edge_key)
    trusted = tmp_path / "trusted_edge_keys"
    trusted.write_text("# edges\n" + edge_key.with_name(EDGE_KEY + ".pub").read_text())
    return f"""[ssh]
listen = "{listen}"
host_key_file = "{tmp_path / f"{node_id}-ssh-host-key"}"
trusted_edge_keys_file = "{trusted}"
max_sessions = {max_sessions}
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

    @property
    def ssh_port(self) -> int:
        assert self.runtime.ssh_address is not None, "started without ssh=True"
        return int(self.runtime.ssh_address.rpartition(":")[2])


@pytest.fixture
async def node(make_config: ConfigFactory, nursery: trio.Nursery) -> RunningNode:
    """A node serving on a free port until the test ends."""
    config = make_config()
    with trio.fail_after(10):
        runtime: NodeRuntime = await nursery.start(run_node, config)
    return RunningNode(runtime, config)


@pytest.fixture
def edge_key(tmp_path: Path) -> Path:
    """The private key a node made with `make_config(ssh=True)` trusts."""
    path = tmp_path / EDGE_KEY
    if not path.exists():
        make_ssh_key(path)
    return path


@pytest.fixture
async def ssh_node(
    make_config: ConfigFactory, edge_key: Path, nursery: trio.Nursery
) -> RunningNode:
    """A node with its SSH listener on, trusting `edge_key`."""
    config = make_config(ssh=True)
    with trio.fail_after(10):
        runtime: NodeRuntime = await nursery.start(run_node, config)
    return RunningNode(runtime, config)
