"""The read path's choices: the RTT table, the nearest in-sync replica, and a read
that waits (bounded, woken by the cache's watch updates) for a replica to catch up.

Pure or against the cache alone: nothing here misses, so the etcd client is None.
"""

from __future__ import annotations

import math
import re
from typing import cast

import pytest
import trio

from routing.cache import RoutingCache
from routing.consensus import ConsensusState, encode_applied, encode_state
from routing.errors import ConsensusUnavailable, NoReplicaInSync
from routing.etcd import EtcdClient, KeyValue, WatchEvent
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
from routing.regions import RttTable, RttTableError, parse_rtt_table
from routing.replicas import ReplicaStatus, choose_read_replica
from routing.schema import Keys, encode_node, encode_repo, encode_volume

KEYS = Keys()
FRA, LAX, SYD, IAD = Region("fra"), Region("lax"), Region("syd"), Region("iad")
RTT = parse_rtt_table({"fra": {"lax": 140, "syd": 260}, "lax": {"syd": 150}})
REPO = RepoName("alice", "hello")


# -- the table -----------------------------------------------------------------


def test_rtt_table_is_symmetric_zero_to_itself_and_unknown_is_infinite() -> None:
    assert RTT.rtt_ms(FRA, LAX) == RTT.rtt_ms(LAX, FRA) == 140
    assert RTT.rtt_ms(SYD, LAX) == 150
    assert RTT.rtt_ms(FRA, FRA) == 0
    assert RTT.rtt_ms(FRA, IAD) == math.inf


def test_rtt_table_round_trips_through_its_toml_lines() -> None:
    import tomllib

    parsed = tomllib.loads(RTT.to_toml())
    assert parse_rtt_table(parsed["regions"]["rtt"]) == RTT


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"fra": 140}, "give `fra.<region> = <ms>`"),
        ({"fra": {"lax": "far"}}, "fra.lax: must be a number"),
        ({"fra": {"lax": True}}, "fra.lax: must be a number"),
        ({"fra": {"lax": -1}}, "between 0 and"),
        ({"fra": {"lax": 1e6}}, "between 0 and"),
        ({"fra": {"fra": 0}}, "0 ms from itself"),
        ({"FRA": {"lax": 1}}, "bad region name"),
        ({"fra": {"lax": 140}, "lax": {"fra": 150}}, "lax.fra: fra.lax already says 140"),
    ],
)
def test_a_malformed_rtt_table_is_refused_naming_the_entry(
    raw: dict[str, object], problem: str
) -> None:
    with pytest.raises(RttTableError, match=re.escape(problem)):
        parse_rtt_table(raw)


def test_the_same_link_given_twice_with_one_value_is_accepted() -> None:
    twice = parse_rtt_table({"fra": {"lax": 140}, "lax": {"fra": 140}})
    assert twice.rtt_ms(FRA, LAX) == 140


# -- choosing a replica -----------------------------------------------------------


def _status(
    region: Region, *, applied: int = 5, generation: int = 5, live: bool = True
) -> ReplicaStatus:
    node = NodeRecord(NodeId(f"{region}-1"), region, f"http://{region}-1", ()) if live else None
    return ReplicaStatus(VolumeId(f"v-{region}"), region, node, applied, generation)


def _chosen(statuses: list[ReplicaStatus], region: Region, rtt: RttTable = RTT) -> str | None:
    found = choose_read_replica(statuses, region, rtt)
    return None if found is None else str(found.region)


def test_the_replica_in_the_clients_region_wins_whatever_the_table_says() -> None:
    assert _chosen([_status(LAX), _status(SYD), _status(FRA)], FRA) == "fra"


def test_else_the_nearest_by_rtt_not_the_home() -> None:
    # syd's client: the home (fra, listed first) is 260 ms away, lax 150.
    assert _chosen([_status(FRA), _status(LAX)], SYD) == "lax"
    # fra's client: lax (140) before syd (260), whatever the record's order.
    assert _chosen([_status(SYD), _status(LAX)], FRA) == "lax"


def test_a_nearer_replica_behind_or_down_is_never_chosen() -> None:
    behind = _status(LAX, applied=4)
    down = _status(LAX, live=False)
    assert _chosen([_status(SYD), behind], FRA) == "syd"
    assert _chosen([_status(SYD), down], FRA) == "syd"


def test_unknown_links_fall_back_to_the_home_then_the_record_order() -> None:
    # iad is in no row of the table: every replica is "unknown", the home first.
    assert _chosen([_status(SYD), _status(FRA)], IAD) == "syd"
    assert _chosen([_status(SYD, applied=1), _status(FRA), _status(LAX)], IAD) == "fra"
    # No table at all: the edge's region, else the home.
    assert _chosen([_status(SYD), _status(FRA)], FRA, RttTable()) == "fra"
    assert _chosen([_status(SYD), _status(FRA)], LAX, RttTable()) == "syd"


def test_none_in_sync_is_none() -> None:
    assert _chosen([_status(FRA, applied=4), _status(LAX, live=False)], FRA) is None


def test_the_choice_is_deterministic_for_equal_inputs() -> None:
    # The GET and the POST of one smart-HTTP exchange land on one replica while
    # nothing changed: the choice depends on the statuses alone.
    statuses = [_status(SYD), _status(FRA), _status(LAX)]
    picks = {_chosen(list(statuses), region) for region in [IAD] * 20}
    assert picks == {"syd"}


# -- the cache: nearest, and a bounded wait woken by watch updates ----------------


def _kv(key: str, value: bytes) -> KeyValue:
    return KeyValue(key=key, value=value, create_revision=1, mod_revision=1, version=1, lease=0)


def _replica_world(applied: dict[Region, int], generation: int = 3) -> list[KeyValue]:
    kvs = []
    for region in (FRA, LAX, SYD):
        node = NodeRecord(
            NodeId(f"{region}-1"),
            region,
            f"http://{region}-1",
            (VolumeInfo(VolumeId(f"v-{region}"), 100),),
        )
        kvs.append(_kv(KEYS.node(node.node_id), encode_node(node)))
        volume = VolumeRecord(VolumeId(f"v-{region}"), region, node.node_id)
        kvs.append(_kv(KEYS.volume(volume.volume_id), encode_volume(volume)))
    record = RepoRecord(
        REPO,
        VolumeId("v-fra"),
        FRA,
        1.0,
        replicas=(VolumeId("v-fra"), VolumeId("v-lax"), VolumeId("v-syd")),
        sync_replicas=2,
    )
    kvs.append(_kv(KEYS.repo(REPO), encode_repo(record)))
    kvs.append(_kv(KEYS.repl_state(REPO), encode_state(ConsensusState(generation))))
    for region, generation_applied in applied.items():
        key = KEYS.repl_applied(REPO, f"v-{region}")
        kvs.append(_kv(key, encode_applied(generation_applied)))
    return kvs


def _cache(kvs: list[KeyValue]) -> RoutingCache:
    cache = RoutingCache(KEYS, cast(EtcdClient, None), rtt=RTT)
    cache.reset(kvs, revision=1)
    cache.set_synced(True)
    return cache


async def test_resolve_read_takes_the_nearest_in_sync_replica() -> None:
    cache = _cache(_replica_world({FRA: 2, LAX: 3, SYD: 3}))
    assert (await cache.resolve_read(REPO, LAX)).region == "lax"
    # fra's own replica is behind: lax (140 ms) before syd (260 ms).
    assert (await cache.resolve_read(REPO, FRA)).region == "lax"


async def test_a_read_waits_for_catch_up_and_is_woken_by_the_watch() -> None:
    cache = _cache(_replica_world({FRA: 2, LAX: 2, SYD: 1}))
    caught_up = _kv(KEYS.repl_applied(REPO, "v-syd"), encode_applied(3))
    found = []

    async def read() -> None:
        found.append(await cache.resolve_read(REPO, FRA, wait=30))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert not found  # waiting, not served from a replica behind
        started = trio.current_time()
        cache.apply([WatchEvent(kind="PUT", kv=caught_up)], revision=2)
    assert [f.region for f in found] == ["syd"]
    assert trio.current_time() - started < 1  # woken by the event, not at the deadline


async def test_a_read_with_no_replica_catching_up_fails_at_the_bounded_wait() -> None:
    cache = _cache(_replica_world({FRA: 2, LAX: 2, SYD: 1}))
    started = trio.current_time()
    with pytest.raises(NoReplicaInSync, match=r"within 0\.5s"):
        await cache.resolve_read(REPO, FRA, wait=0.5)
    assert 0.5 <= trio.current_time() - started < 2
    # No wait configured, or a push (which fails fast): at once.
    started = trio.current_time()
    with pytest.raises(NoReplicaInSync):
        await cache.resolve_read(REPO, FRA)
    with pytest.raises(NoReplicaInSync):
        await cache.resolve_read(REPO, FRA, wait=30, push=True)
    assert trio.current_time() - started < 0.5


async def test_while_etcd_is_out_reads_go_on_and_pushes_are_refused_at_once() -> None:
    cache = _cache(_replica_world({FRA: 3, LAX: 3, SYD: 3}))
    cache.set_synced(False)
    assert (await cache.resolve_read(REPO, FRA)).region == "fra"
    with pytest.raises(ConsensusUnavailable):
        await cache.resolve_read(REPO, FRA, push=True)
    cache.set_synced(True)
    assert (await cache.resolve_read(REPO, FRA, push=True)).region == "fra"


def test_degraded_and_recovered_are_each_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    cache = _cache([])
    for synced in (False, False, True, True, False, True):
        cache.set_synced(synced)
    lines = [r.getMessage() for r in caplog.records if r.name == "routing.cache"]
    assert [line.split(":")[0] for line in lines if "edge " in line] == [
        "edge DEGRADED",
        "edge RECOVERED",
        "edge DEGRADED",
        "edge RECOVERED",
    ]
