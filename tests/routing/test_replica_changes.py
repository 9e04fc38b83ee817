"""Replica-set changes, repair's log entry and verify's judgement: the pure parts,
and the removal txn against a real etcd (node calls recorded, not made)."""

from __future__ import annotations

import pytest

from routing import consensus as cons
from routing.cache import RoutingCache
from routing.consensus import ZERO_OID, ConsensusState, RefUpdate
from routing.consistency import BEHIND, DIFFERS, IN_SYNC, fold_at, judge
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
from routing.placement import PlacementError, choose_added_replica
from routing.replica_changes import (
    ReplicaChangeRefused,
    _take_out,
    read_snapshot,
    remove_replica,
)
from routing.replicas import CATCHING_UP, replica_statuses
from routing.replicas import IN_SYNC as STATUS_IN_SYNC
from routing.schema import Keys, decode_repo, encode_node, encode_repo, encode_volume

A, B, C = "a" * 40, "b" * 40, "c" * 40
FRA, LAX, SYD = Region("fra"), Region("lax"), Region("syd")
NAME = RepoName("alice", "x")
NODES = [
    NodeRecord(NodeId(f"{r}-1"), r, f"http://{r}-1", (VolumeInfo(VolumeId(f"v-{r}"), 100),))
    for r in (FRA, LAX, SYD)
]
VOLUMES = {
    VolumeId(f"v-{n.region}"): VolumeRecord(VolumeId(f"v-{n.region}"), n.region, n.node_id)
    for n in NODES
}
BY_ID = {n.node_id: n for n in NODES}
V_FRA, V_LAX, V_SYD = VolumeId("v-fra"), VolumeId("v-lax"), VolumeId("v-syd")


def _record(*replicas: VolumeId, sync: int = 2) -> RepoRecord:
    home = VOLUMES[replicas[0]]
    return RepoRecord(
        NAME,
        home.volume_id,
        home.region,
        1.0,
        replicas=replicas if len(replicas) > 1 else (),
        sync_replicas=sync if len(replicas) > 1 else 0,
    )


def test_a_replica_with_no_applied_key_is_never_in_sync_even_at_generation_0() -> None:
    record = _record(V_FRA, V_LAX)
    statuses = replica_statuses(record, 0, {V_FRA: 0}, VOLUMES, BY_ID)
    assert [s.state for s in statuses] == [STATUS_IN_SYNC, CATCHING_UP]
    assert statuses[1].to_json()["applied"] is None


def test_records_gain_and_lose_replicas_home_first_and_factor_one_is_plain() -> None:
    plain = _record(V_FRA)
    two = plain.with_replica(V_SYD, 2)
    assert two.replicas == (V_FRA, V_SYD) and two.sync_replicas == 2 and two.replicated
    three = two.with_replica(V_LAX)
    assert three.replicas == (V_FRA, V_SYD, V_LAX) and three.sync_replicas == 2
    # The home removed: the new home leads the set.
    rehomed = three.without_replica(V_FRA, VOLUMES[V_LAX])
    assert (rehomed.volume_id, rehomed.region, rehomed.replicas) == (V_LAX, LAX, (V_LAX, V_SYD))
    # Down to one: exactly an unreplicated record, as if never replicated.
    back = two.without_replica(V_FRA, VOLUMES[V_SYD])
    assert back.replicas == () and back.sync_replicas == 0 and back.volume_id == V_SYD
    assert b"replicas" not in encode_repo(back)
    assert decode_repo(encode_repo(back)) == back


def test_an_added_replica_goes_to_a_node_without_one() -> None:
    chosen = choose_added_replica(SYD, (V_FRA, V_LAX), VOLUMES.values(), BY_ID, {})
    assert chosen.volume_id == V_SYD
    with pytest.raises(PlacementError, match="holds no replica yet"):
        choose_added_replica(LAX, (V_FRA, V_LAX), VOLUMES.values(), BY_ID, {})
    with pytest.raises(PlacementError, match="unknown region"):
        choose_added_replica(Region("mars"), (V_FRA,), VOLUMES.values(), BY_ID, {})


def test_a_reset_entry_folds_to_exactly_the_chosen_replicas_refs() -> None:
    consensus = {"refs/heads/main": A, "refs/tags/v1": B}
    replica = {"refs/heads/main": C, "refs/heads/new": A, "refs/gitedge/incoming/x": B}
    updates = cons.reset_updates(consensus, replica)
    assert updates == [
        RefUpdate("refs/heads/main", A, C),
        RefUpdate("refs/heads/new", ZERO_OID, A),
        RefUpdate("refs/tags/v1", B, ZERO_OID),
    ]
    log = [
        cons.LogEntry(1, "t1", tuple(cons.reset_updates({}, consensus))),
        cons.LogEntry(2, "t2", tuple(updates)),
    ]
    assert cons.fold_log(log) == {"refs/heads/main": C, "refs/heads/new": A}
    assert cons.advance_checksum(cons.checksum(consensus), updates) == cons.checksum(
        {"refs/heads/main": C, "refs/heads/new": A}
    )


def test_verify_tells_behind_from_differs() -> None:
    log = [
        cons.LogEntry(1, "", (RefUpdate("refs/heads/main", ZERO_OID, A),)),
        cons.LogEntry(2, "", (RefUpdate("refs/heads/main", A, B),)),
    ]
    history = fold_at(log, {0, 1})
    now = history[-1]
    assert judge({"refs/heads/main": B}, now, history[1]) == (IN_SYNC, 0)
    assert judge({"refs/heads/main": A}, now, history[1]) == (BEHIND, 1)
    assert judge({"refs/heads/main": A, "refs/heads/x": A}, now, history[1]) == (DIFFERS, 2)
    assert judge({}, now, history[0]) == (BEHIND, 1)
    assert judge({"refs/heads/main": C}, now, None) == (DIFFERS, 1)


class Nodes:
    """The node calls a removal makes, recorded."""

    def __init__(self) -> None:
        self.dropped: list[str] = []
        self.unhooked: list[str] = []

    async def init_replica(self, node: NodeRecord, name: RepoName) -> None:
        raise AssertionError("not an add")

    async def drop_replica(self, node: NodeRecord, name: RepoName) -> None:
        self.dropped.append(node.node_id)

    async def seed(self, node: NodeRecord, name: RepoName, added: VolumeId, sync: int) -> int:
        raise AssertionError("not an add")

    async def apply(self, node: NodeRecord, name: RepoName) -> int:
        raise AssertionError("not an add")

    async def unhook(self, node: NodeRecord, name: RepoName) -> None:
        self.unhooked.append(node.node_id)


async def _network(etcd: EtcdClient, prefix: str, record: RepoRecord) -> RoutingCache:
    keys = Keys(prefix)
    for node in NODES:
        await etcd.put(keys.node(node.node_id), encode_node(node))
    for volume in VOLUMES.values():
        await etcd.put(keys.volume(volume.volume_id), encode_volume(volume))
    await etcd.put(keys.repo(NAME), encode_repo(record))
    await etcd.put(keys.repl_state(NAME), cons.encode_state(ConsensusState(3, cons.checksum({}))))
    snapshot = await etcd.range(prefix, prefix=True)
    cache = RoutingCache(keys, etcd)
    cache.reset(snapshot.kvs, snapshot.revision)
    return cache


async def test_removal_refuses_the_last_in_sync_replica_and_below_w(
    etcd: EtcdClient, key_prefix: str
) -> None:
    cache = await _network(etcd, key_prefix, _record(V_FRA, V_LAX, V_SYD, sync=2))
    keys = cache.keys
    await etcd.put(keys.repl_applied(NAME, V_FRA), cons.encode_applied(3))
    await etcd.put(keys.repl_applied(NAME, V_LAX), cons.encode_applied(2))
    nodes = Nodes()
    with pytest.raises(ReplicaChangeRefused, match="last in-sync replica"):
        await remove_replica(etcd, cache, nodes, NAME, "fra")
    # A replica behind may go; the record keeps its home and drops the applied key.
    removed = await remove_replica(etcd, cache, nodes, NAME, "syd")
    assert removed.record.replicas == (V_FRA, V_LAX) and removed.disk_deleted
    assert nodes.dropped == ["syd-1"]
    with pytest.raises(ReplicaChangeRefused, match="fewer than sync_replicas=2"):
        await remove_replica(etcd, cache, nodes, NAME, V_LAX)
    with pytest.raises(ReplicaChangeRefused, match="no replica in 'syd'"):
        await remove_replica(etcd, cache, nodes, NAME, "syd")


async def test_a_push_committed_after_the_read_fences_the_removal(
    etcd: EtcdClient, key_prefix: str
) -> None:
    cache = await _network(etcd, key_prefix, _record(V_FRA, V_LAX, sync=1))
    keys = cache.keys
    for volume in (V_FRA, V_LAX):
        await etcd.put(keys.repl_applied(NAME, volume), cons.encode_applied(3))
    snap = await read_snapshot(etcd, keys, NAME)
    # A vote commits generation 4 on fra between the read and the txn.
    await etcd.put(keys.repl_state(NAME), cons.encode_state(ConsensusState(4, cons.checksum({}))))
    assert await _take_out(etcd, cache, snap, V_FRA) is None
    assert decode_repo((await etcd.get(keys.repo(NAME))).value).replicas == (V_FRA, V_LAX)  # type: ignore[union-attr]
    # Read again (fra published 4): down to one replica, a plain record, no consensus keys.
    await etcd.put(keys.repl_applied(NAME, V_FRA), cons.encode_applied(4))
    nodes = Nodes()
    removed = await remove_replica(etcd, cache, nodes, NAME, "lax")
    assert not removed.record.replicated and removed.record.volume_id == V_FRA
    assert (await etcd.range(keys.repl_repo(NAME), prefix=True)).kvs == []
    assert nodes.dropped == ["lax-1"] and nodes.unhooked == ["fra-1"]
