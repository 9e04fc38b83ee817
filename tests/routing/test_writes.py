"""routing.writes.create_repo against a real etcd: place, record, init, roll back.

The node init is the injected callable it is in production (the edge passes
NodeAdmin.init_repo); here it records its calls, or fails, or hangs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from devnet.procs import free_port
from routing.cache import RoutingCache
from routing.errors import AlreadyExists, StoreUnavailable
from routing.etcd import EtcdClient
from routing.model import (
    NodeId,
    NodeRecord,
    Region,
    RepoLocation,
    RepoName,
    RepoRecord,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
)
from routing.placement import PlacementError
from routing.schema import Keys, decode_repo, encode_node, encode_repo, encode_volume
from routing.writes import NewRepo, create_repo

FRA = Region("fra")
NODE = NodeRecord(
    NodeId("fra-1"), FRA, "http://fra-1.internal:8080", (VolumeInfo(VolumeId("v1"), 10),)
)
ALICE_X = RepoName("alice", "x")
NEW = NewRepo(ALICE_X, "alice", public=True, readers=("rita",), writers=("walt",))


class Inits:
    """The node side of a create: records what it was asked, then does `then`."""

    def __init__(self, then: Callable[[], Awaitable[None]] | None = None) -> None:
        self.calls: list[tuple[NodeId, RepoName]] = []
        self._then = then

    async def __call__(self, node: NodeRecord, name: RepoName) -> None:
        self.calls.append((node.node_id, name))
        if self._then is not None:
            await self._then()


class NodeDown(Exception):
    """What an edge's NodeAdmin raises; routing must pass it on untouched."""


async def _fail() -> None:
    raise NodeDown("init refused")


async def _hang() -> None:
    await trio.sleep_forever()


async def cache_with_a_live_volume(etcd: EtcdClient, key_prefix: str) -> RoutingCache:
    """A cache fed from etcd as the mirror feeds it: one live node with one volume."""
    keys = Keys(key_prefix)
    await etcd.put(keys.node(NODE.node_id), encode_node(NODE))
    await etcd.put(
        keys.volume("v1"), encode_volume(VolumeRecord(VolumeId("v1"), FRA, NODE.node_id))
    )
    snapshot = await etcd.range(key_prefix, prefix=True)
    cache = RoutingCache(keys, etcd)
    cache.reset(snapshot.kvs, snapshot.revision)
    return cache


async def test_create_records_inits_and_caches(etcd: EtcdClient, key_prefix: str) -> None:
    cache = await cache_with_a_live_volume(etcd, key_prefix)
    inits = Inits()
    location = await create_repo(etcd, cache, NEW, FRA, None, inits)
    assert location == RepoLocation(ALICE_X, FRA, VolumeId("v1"), NODE.node_id, NODE.http_url)
    assert inits.calls == [(NODE.node_id, ALICE_X)]
    stored = await etcd.get(cache.keys.repo(ALICE_X))
    assert stored is not None
    record = decode_repo(stored.value)
    assert (record.volume_id, record.owner, record.public) == ("v1", "alice", True)
    assert (record.readers, record.writers) == (("rita",), ("walt",))
    # Visible on this edge at once, before any watch event: no etcd read to resolve it.
    before = etcd.requests_made
    assert await cache.resolve(ALICE_X) == location
    assert etcd.requests_made == before
    assert cache.repo_counts[VolumeId("v1")] == 1


async def test_create_of_an_existing_name_is_refused_before_the_node(
    etcd: EtcdClient, key_prefix: str
) -> None:
    cache = await cache_with_a_live_volume(etcd, key_prefix)
    await create_repo(etcd, cache, NEW, FRA, None, Inits())
    other = await cache_with_a_live_volume(etcd, key_prefix)  # another edge, its own cache
    inits = Inits()
    with pytest.raises(AlreadyExists, match="alice/x"):
        await create_repo(etcd, other, NewRepo(ALICE_X, "alice"), FRA, None, inits)
    assert inits.calls == []
    stored = await etcd.get(cache.keys.repo(ALICE_X))
    assert stored is not None and decode_repo(stored.value).public  # the first one's record


async def test_failed_init_rolls_the_record_back(etcd: EtcdClient, key_prefix: str) -> None:
    cache = await cache_with_a_live_volume(etcd, key_prefix)
    with pytest.raises(NodeDown, match="init refused"):
        await create_repo(etcd, cache, NEW, FRA, None, Inits(_fail))
    assert await etcd.get(cache.keys.repo(ALICE_X)) is None
    assert ALICE_X not in cache.repos
    assert cache.repo_counts.get(VolumeId("v1"), 0) == 0
    # The name is free again.
    await create_repo(etcd, cache, NEW, FRA, None, Inits())
    assert await etcd.get(cache.keys.repo(ALICE_X)) is not None


async def test_cancelled_create_rolls_the_record_back(etcd: EtcdClient, key_prefix: str) -> None:
    """The client gave up (or the edge is draining) while the node was initialising."""
    cache = await cache_with_a_live_volume(etcd, key_prefix)
    inits = Inits(_hang)
    with trio.move_on_after(0.5) as waited:
        await create_repo(etcd, cache, NEW, FRA, None, inits)
    assert waited.cancelled_caught and inits.calls  # it did get as far as the node
    assert await etcd.get(cache.keys.repo(ALICE_X)) is None
    assert ALICE_X not in cache.repos


async def test_rollback_leaves_a_record_someone_else_wrote_meanwhile(
    etcd: EtcdClient, key_prefix: str
) -> None:
    cache = await cache_with_a_live_volume(etcd, key_prefix)
    key = cache.keys.repo(ALICE_X)
    # Say an operator moved it by hand while this create was still waiting on the node.
    replaced = encode_repo(RepoRecord(ALICE_X, VolumeId("v9"), FRA, 1.0))

    async def overwritten_then_fail() -> None:
        await etcd.put(key, replaced)
        raise NodeDown("init refused")

    with pytest.raises(NodeDown):
        await create_repo(etcd, cache, NEW, FRA, None, Inits(overwritten_then_fail))
    stored = await etcd.get(key)
    assert stored is not None and stored.value == replaced


async def test_no_live_volume_is_a_placement_error(etcd: EtcdClient, key_prefix: str) -> None:
    cache = await cache_with_a_live_volume(etcd, key_prefix)
    inits = Inits()
    with pytest.raises(PlacementError, match="unknown region 'lax'"):
        await create_repo(etcd, cache, NEW, Region("lax"), None, inits)
    assert inits.calls == []
    assert await etcd.get(cache.keys.repo(ALICE_X)) is None
    # With a fallback region that has one, it goes there.
    location = await create_repo(etcd, cache, NEW, Region("lax"), FRA, inits)
    assert location.region == FRA


async def test_etcd_down_is_store_unavailable(etcd: EtcdClient, key_prefix: str) -> None:
    cache = await cache_with_a_live_volume(etcd, key_prefix)
    inits = Inits()
    async with EtcdClient(f"http://127.0.0.1:{free_port()}", timeout=1.0) as dead:
        with pytest.raises(StoreUnavailable, match="create"):
            await create_repo(dead, cache, NEW, FRA, None, inits)
    assert inits.calls == []
