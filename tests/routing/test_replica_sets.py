"""Replica sets: placement across regions and nodes, the record, a replicated create
against a real etcd (every replica initialised, all rolled back on a failure)."""

from __future__ import annotations

import pytest

from routing.cache import RoutingCache
from routing.etcd import EtcdClient
from routing.model import (
    NodeId,
    NodeRecord,
    Region,
    RepoName,
    RepoRecord,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
)
from routing.placement import PlacementError, choose_replicas
from routing.schema import Keys, SchemaError, decode_repo, encode_node, encode_repo, encode_volume
from routing.writes import NewRepo, create_repo

FRA, LAX, SYD = Region("fra"), Region("lax"), Region("syd")
ALICE_X = RepoName("alice", "x")


def _node(node_id: str, region: Region, *volume_ids: str) -> NodeRecord:
    return NodeRecord(
        NodeId(node_id),
        region,
        f"http://{node_id}.internal",
        tuple(VolumeInfo(VolumeId(v), 100) for v in volume_ids),
    )


NODES = [
    _node("fra-1", FRA, "v-fra1"),
    _node("fra-2", FRA, "v-fra2"),
    _node("lax-1", LAX, "v-lax1", "v-lax1b"),
    _node("syd-1", SYD, "v-syd1"),
]
VOLUMES = [
    VolumeRecord(VolumeId(v.volume_id), n.region, n.node_id) for n in NODES for v in n.volumes
]
BY_ID = {n.node_id: n for n in NODES}


def test_replicas_take_distinct_regions_first_home_first() -> None:
    chosen = choose_replicas(LAX, 3, VOLUMES, BY_ID, {})
    assert chosen[0].region == LAX
    assert sorted(v.region for v in chosen) == ["fra", "lax", "syd"]


def test_named_replica_regions_are_taken_in_order_even_against_the_counts() -> None:
    # Without a name, the emptier syd would win the second replica.
    counts = {VolumeId("v-lax1"): 5, VolumeId("v-lax1b"): 5}
    assert [v.region for v in choose_replicas(FRA, 2, VOLUMES, BY_ID, counts)] == ["fra", "syd"]
    chosen = choose_replicas(FRA, 3, VOLUMES, BY_ID, counts, regions=[LAX])
    assert [v.region for v in chosen] == ["fra", "lax", "syd"]
    # The home's region may be named too: then another node there.
    chosen = choose_replicas(FRA, 2, VOLUMES, BY_ID, {}, regions=[FRA])
    assert [v.node_id for v in chosen] == ["fra-1", "fra-2"]


def test_named_replica_region_without_a_free_node_is_refused() -> None:
    with pytest.raises(PlacementError, match="no live volume for a replica in region 'syd'"):
        choose_replicas(SYD, 2, VOLUMES, BY_ID, {}, regions=[SYD])  # syd has one node
    with pytest.raises(PlacementError, match="region 'mars'"):
        choose_replicas(FRA, 2, VOLUMES, BY_ID, {}, regions=[Region("mars")])
    with pytest.raises(PlacementError, match="2 replica regions named for 1"):
        choose_replicas(FRA, 2, VOLUMES, BY_ID, {}, regions=[LAX, SYD])


def test_past_the_regions_distinct_nodes_never_one_node_twice() -> None:
    chosen = choose_replicas(LAX, 4, VOLUMES, BY_ID, {})
    assert len({v.node_id for v in chosen}) == 4  # lax-1's second volume is never picked
    with pytest.raises(PlacementError, match="5 replicas need 5 live nodes"):
        choose_replicas(LAX, 5, VOLUMES, BY_ID, {})


def test_a_dead_node_is_not_a_replica() -> None:
    alive = {k: v for k, v in BY_ID.items() if k != "syd-1"}
    chosen = choose_replicas(FRA, 3, VOLUMES, alive, {})
    assert sorted(v.node_id for v in chosen) == ["fra-1", "fra-2", "lax-1"]


def test_factor_one_is_the_single_volume_choice() -> None:
    assert [v.volume_id for v in choose_replicas(SYD, 1, VOLUMES, BY_ID, {})] == ["v-syd1"]


def test_record_round_trips_its_replica_set_and_factor_one_writes_none() -> None:
    record = RepoRecord(
        ALICE_X,
        VolumeId("v-lax1"),
        LAX,
        1.0,
        replicas=(VolumeId("v-lax1"), VolumeId("v-fra1")),
        sync_replicas=2,
    )
    assert decode_repo(encode_repo(record)) == record
    plain = RepoRecord(ALICE_X, VolumeId("v-lax1"), LAX, 1.0)
    assert b"replicas" not in encode_repo(plain)
    assert decode_repo(encode_repo(plain)).replica_volumes == ("v-lax1",)


@pytest.mark.parametrize(
    "extra",
    [
        b'"replicas":["v-fra1","v-lax1"],"sync_replicas":2',  # home not first
        b'"replicas":["v-lax1","v-lax1"],"sync_replicas":2',  # twice the same
        b'"replicas":["v-lax1","v-fra1"],"sync_replicas":3',  # W > N
    ],
)
def test_malformed_replica_sets_are_schema_errors(extra: bytes) -> None:
    raw = b'{"name":"alice/x","volume_id":"v-lax1","region":"lax","created_at":1,' + extra + b"}"
    with pytest.raises(SchemaError):
        decode_repo(raw)


async def _cache(etcd: EtcdClient, prefix: str) -> RoutingCache:
    keys = Keys(prefix)
    for node in NODES:
        await etcd.put(keys.node(node.node_id), encode_node(node))
    for volume in VOLUMES:
        await etcd.put(keys.volume(volume.volume_id), encode_volume(volume))
    snapshot = await etcd.range(prefix, prefix=True)
    cache = RoutingCache(keys, etcd)
    cache.reset(snapshot.kvs, snapshot.revision)
    return cache


class Replicas:
    def __init__(self, fail_on: str | None = None) -> None:
        self.inited: list[str] = []
        self.dropped: list[str] = []
        self._fail_on = fail_on

    async def init(self, node: NodeRecord, name: RepoName) -> None:
        if node.node_id == self._fail_on:
            raise OSError("disk full")
        self.inited.append(node.node_id)

    async def drop(self, node: NodeRecord, name: RepoName) -> None:
        self.dropped.append(node.node_id)


async def _never(node: NodeRecord, name: RepoName) -> None:
    raise AssertionError("a replicated create must not use the single-replica init")


async def test_replicated_create_records_the_set_in_one_txn_and_inits_all(
    etcd: EtcdClient, key_prefix: str
) -> None:
    cache = await _cache(etcd, key_prefix)
    replicas = Replicas()
    new = NewRepo(ALICE_X, "alice", replicas=3)
    location = await create_repo(
        etcd, cache, new, LAX, None, _never, init_replica=replicas.init, drop_replica=replicas.drop
    )
    assert location.region == LAX
    assert sorted(replicas.inited) == ["fra-1", "lax-1", "syd-1"]
    stored = await etcd.get(cache.keys.repo(ALICE_X))
    assert stored is not None
    record = decode_repo(stored.value)
    assert record.replicas[0] == record.volume_id == location.volume_id
    assert len(record.replicas) == 3 and record.sync_replicas == 2
    # Every replica counts toward its volume's load.
    assert all(cache.repo_counts[v] == 1 for v in record.replicas)


async def test_one_failed_replica_init_rolls_back_the_record_and_the_others(
    etcd: EtcdClient, key_prefix: str
) -> None:
    cache = await _cache(etcd, key_prefix)
    replicas = Replicas(fail_on="syd-1")
    new = NewRepo(ALICE_X, "alice", replicas=3)
    with pytest.raises(BaseException, match="disk full"):
        await create_repo(
            etcd,
            cache,
            new,
            LAX,
            None,
            _never,
            init_replica=replicas.init,
            drop_replica=replicas.drop,
        )
    assert await etcd.get(cache.keys.repo(ALICE_X)) is None
    assert sorted(replicas.dropped) == sorted(replicas.inited)
    assert ALICE_X not in cache.repos
