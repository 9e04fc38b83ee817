"""A real etcd for the routing tests, shared by the session; each test owns a key prefix."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from devnet.procs import EtcdServer, start_etcd
from routing.etcd import EtcdClient


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def key_prefix(request: pytest.FixtureRequest) -> str:
    """A prefix no other test writes under (the etcd is shared)."""
    return f"/test/{request.node.name}-{uuid.uuid4().hex[:8]}/"


@pytest.fixture
async def etcd(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    async with EtcdClient(etcd_server.url, timeout=3.0) as client:
        yield client
