"""EtcdClient.request_errors (gitedge_etcd_request_errors_total): one per failed try.

A real etcd and a port nobody listens on; the client fails over from the one
to the other, and the failed try is counted.
"""

from __future__ import annotations

import pytest

from devnet.procs import EtcdServer, free_port
from routing.etcd import EtcdClient
from routing.etcd_watch import EtcdUnavailable


async def test_a_dead_member_counts_one_error_per_try(
    etcd_server: EtcdServer, key_prefix: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with EtcdClient([dead, etcd_server.url], timeout=3.0) as etcd:
        await etcd.put(key_prefix + "a", b"1")  # the dead member first: one failed try
        assert etcd.request_errors == 1
        assert etcd.requests_made == 2
        assert await etcd.get(key_prefix + "a") is not None  # the live one is preferred now
        assert etcd.request_errors == 1


async def test_no_member_up_counts_every_try() -> None:
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    async with EtcdClient(dead, timeout=3.0) as etcd:
        with pytest.raises(EtcdUnavailable):
            await etcd.get("/x")
        assert etcd.request_errors == 2
