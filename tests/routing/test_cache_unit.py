"""RoutingCache without etcd: reset/apply bookkeeping, resolve on hits, place.

Only `record()` on a miss talks to etcd; nothing here misses, so the client is None.
"""

from __future__ import annotations

import random
from typing import cast

import pytest

from routing.cache import RoutingCache
from routing.errors import Unroutable
from routing.etcd import EtcdClient, KeyValue, WatchEvent
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
from routing.schema import Keys, encode_node, encode_repo, encode_volume

KEYS = Keys()
IAD, ORD = Region("iad"), Region("ord")


def cache() -> RoutingCache:
    return RoutingCache(KEYS, cast(EtcdClient, None))


def kv(key: str, value: bytes, revision: int = 1) -> KeyValue:
    return KeyValue(
        key=key,
        value=value,
        create_revision=revision,
        mod_revision=revision,
        version=1,
        lease=0,
    )


def node_kv(node_id: str, region: Region = IAD, **free: int) -> KeyValue:
    record = NodeRecord(
        NodeId(node_id),
        region,
        f"http://{node_id}.internal:8080",
        tuple(VolumeInfo(VolumeId(v), n) for v, n in free.items()),
    )
    return kv(KEYS.node(node_id), encode_node(record))


def volume_kv(volume_id: str, node_id: str, region: Region = IAD) -> KeyValue:
    record = VolumeRecord(VolumeId(volume_id), region, NodeId(node_id))
    return kv(KEYS.volume(volume_id), encode_volume(record))


def repo_record(path: str, volume_id: str, region: Region = IAD) -> RepoRecord:
    return RepoRecord(RepoName.parse(path), VolumeId(volume_id), region, 1700000000.0)


def repo_kv(path: str, volume_id: str, region: Region = IAD) -> KeyValue:
    record = repo_record(path, volume_id, region)
    return kv(KEYS.repo(record.name), encode_repo(record))


def put(item: KeyValue) -> WatchEvent:
    return WatchEvent(kind="PUT", kv=item)


def delete(key: str) -> WatchEvent:
    return WatchEvent(kind="DELETE", kv=kv(key, b""))


def counts(c: RoutingCache) -> dict[str, int]:
    """repo_counts without the zero entries a Counter may keep."""
    return {str(k): v for k, v in c.repo_counts.items() if v != 0}


def world() -> list[KeyValue]:
    """Two live nodes in iad with a volume each, one repo on each volume plus one more."""
    return [
        node_kv("n1", v1=1000),
        node_kv("n2", v2=2000),
        volume_kv("v1", "n1"),
        volume_kv("v2", "n2"),
        repo_kv("alice/a", "v1"),
        repo_kv("alice/b", "v1"),
        repo_kv("bob/c", "v2"),
    ]


A = RepoName("alice", "a")


# -- reset -----------------------------------------------------------------------


def test_reset_loads_everything() -> None:
    c = cache()
    c.reset(world(), revision=42)
    assert set(c.nodes) == {"n1", "n2"}
    assert set(c.volumes) == {"v1", "v2"}
    assert set(c.repos) == {A, RepoName("alice", "b"), RepoName("bob", "c")}
    assert counts(c) == {"v1": 2, "v2": 1}
    assert c.revision == 42
    assert c.stats.resets == 1


def test_reset_replaces_earlier_state() -> None:
    c = cache()
    c.reset(world(), revision=42)
    c.reset([node_kv("n3", v3=1), volume_kv("v3", "n3"), repo_kv("carol/d", "v3")], revision=50)
    assert set(c.nodes) == {"n3"}
    assert set(c.volumes) == {"v3"}
    assert set(c.repos) == {RepoName("carol", "d")}
    assert counts(c) == {"v3": 1}
    assert c.revision == 50
    assert c.stats.resets == 2


def test_reset_to_an_earlier_revision_takes_it() -> None:
    # A relist after compaction is authoritative, whatever its number.
    c = cache()
    c.reset([], revision=100)
    c.reset([], revision=7)
    assert c.revision == 7


def test_reset_counts_duplicate_records_once() -> None:
    c = cache()
    c.reset([repo_kv("alice/a", "v1"), repo_kv("alice/a", "v1")], revision=1)
    assert counts(c) == {"v1": 1}


def test_keys_outside_the_schema_are_ignored() -> None:
    c = cache()
    c.reset(
        [
            kv("/gitedge/other/x", b"{}"),
            kv("/elsewhere/repos/alice/a", repo_kv("alice/a", "v1").value),
            kv("/gitedge/reposx", b"junk"),
            *world(),
        ],
        revision=1,
    )
    assert len(c.repos) == 3
    assert counts(c) == {"v1": 2, "v2": 1}


# -- malformed values ------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        kv(KEYS.repo(RepoName("eve", "x")), b"not json"),
        kv(
            KEYS.repo(RepoName("eve", "x")),
            b'{"name":"../etc","volume_id":"v1","region":"iad","created_at":1}',
        ),
        kv(KEYS.repo(RepoName("eve", "x")), b"[]"),
        kv(KEYS.volume("v9"), b'{"volume_id":"v9","region":"NOPE","node_id":"n1"}'),
        kv(KEYS.node("n9"), b'{"node_id":"n9"}'),
        kv(KEYS.node("n9"), b"\xff"),
    ],
)
def test_malformed_value_is_ignored_and_the_rest_loads(bad: KeyValue) -> None:
    c = cache()
    everything = world()
    c.reset([bad, *everything[:3], bad, *everything[3:]], revision=1)
    assert set(c.nodes) == {"n1", "n2"}
    assert set(c.volumes) == {"v1", "v2"}
    assert len(c.repos) == 3
    assert counts(c) == {"v1": 2, "v2": 1}


def test_malformed_event_is_ignored_and_later_events_apply() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply(
        [put(kv(KEYS.repo(RepoName("eve", "x")), b"{")), put(repo_kv("carol/d", "v2"))],
        revision=2,
    )
    assert RepoName("eve", "x") not in c.repos
    assert RepoName("carol", "d") in c.repos
    assert counts(c) == {"v1": 2, "v2": 2}


@pytest.mark.parametrize("free", [b"NaN", b"1e400"])
def test_node_with_non_finite_free_bytes_is_ignored_and_the_rest_loads(free: bytes) -> None:
    # json.loads accepts NaN and overflows 1e400 to infinity; neither is a byte count.
    bad = kv(
        KEYS.node("n9"),
        b'{"node_id":"n9","region":"iad","http_url":"http://n9",'
        b'"volumes":[{"volume_id":"v9","free_bytes":' + free + b"}]}",
    )
    c = cache()
    c.reset([bad, *world()], revision=1)
    assert set(c.nodes) == {"n1", "n2"}
    assert len(c.repos) == 3


# -- apply: repo counts ----------------------------------------------------------


def test_put_of_a_new_repo_counts_it() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([put(repo_kv("carol/d", "v2"))], revision=2)
    assert c.repos[RepoName("carol", "d")].volume_id == "v2"
    assert counts(c) == {"v1": 2, "v2": 2}


def test_put_of_the_same_record_again_does_not_count_twice() -> None:
    # A watch resumed after a break may replay events the cache already has.
    c = cache()
    c.reset(world(), revision=1)
    c.apply([put(repo_kv("alice/a", "v1")), put(repo_kv("alice/a", "v1"))], revision=2)
    assert counts(c) == {"v1": 2, "v2": 1}


def test_overwrite_moving_a_repo_moves_its_count() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([put(repo_kv("alice/a", "v2"))], revision=2)
    assert c.repos[A].volume_id == "v2"
    assert counts(c) == {"v1": 1, "v2": 2}


def test_delete_uncounts_the_repo() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(KEYS.repo(A))], revision=2)
    assert A not in c.repos
    assert counts(c) == {"v1": 1, "v2": 1}


def test_delete_twice_or_of_an_unknown_repo_changes_nothing() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply(
        [delete(KEYS.repo(A)), delete(KEYS.repo(A)), delete(KEYS.repo(RepoName("zed", "z")))],
        revision=2,
    )
    assert counts(c) == {"v1": 1, "v2": 1}
    assert all(n >= 0 for n in c.repo_counts.values())


@pytest.mark.parametrize(
    "key", [KEYS.repos + "../etc", KEYS.repos + "a/b/c", KEYS.repos, KEYS.repos + "ålice/a"]
)
def test_delete_with_a_bad_repo_key_is_ignored(key: str) -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(key)], revision=2)
    assert len(c.repos) == 3
    assert counts(c) == {"v1": 2, "v2": 1}


def test_put_then_delete_then_put_again() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply(
        [
            put(repo_kv("carol/d", "v1")),
            delete(KEYS.repo(RepoName("carol", "d"))),
            put(repo_kv("carol/d", "v2")),
        ],
        revision=4,
    )
    assert counts(c) == {"v1": 2, "v2": 2}


def test_counts_match_the_repos_after_a_long_random_history() -> None:
    rng = random.Random(1234)
    c = cache()
    c.reset(world(), revision=1)
    names = [f"o{i}/r{j}" for i in range(3) for j in range(4)]
    for rev in range(2, 400):
        name = rng.choice(names)
        if rng.random() < 0.6:
            c.apply([put(repo_kv(name, rng.choice(["v1", "v2", "v3"])))], revision=rev)
        else:
            c.apply([delete(KEYS.repo(RepoName.parse(name)))], revision=rev)
        expected: dict[str, int] = {}
        for record in c.repos.values():
            expected[record.volume_id] = expected.get(record.volume_id, 0) + 1
        assert counts(c) == expected


# -- apply: nodes, volumes, revision ---------------------------------------------


def test_node_and_volume_delete_and_put() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(KEYS.node("n1")), delete(KEYS.volume("v2"))], revision=2)
    assert set(c.nodes) == {"n2"}
    assert set(c.volumes) == {"v1"}
    c.apply([put(node_kv("n1", v1=5)), put(volume_kv("v2", "n2"))], revision=3)
    assert c.nodes[NodeId("n1")].volumes == (VolumeInfo(VolumeId("v1"), 5),)
    assert set(c.volumes) == {"v1", "v2"}


def test_apply_moves_revision_forward_only_and_counts_events() -> None:
    c = cache()
    c.reset(world(), revision=10)
    c.apply([put(repo_kv("carol/d", "v1")), delete(KEYS.node("n2"))], revision=12)
    assert c.revision == 12
    c.apply([], revision=11)
    assert c.revision == 12
    assert c.stats.events == 2


def test_set_synced() -> None:
    c = cache()
    assert not c.synced
    c.set_synced(True)
    assert c.synced
    c.set_synced(True)
    assert c.synced
    c.set_synced(False)
    assert not c.synced


def test_add_created_then_its_watch_event_counts_once() -> None:
    c = cache()
    c.reset(world(), revision=1)
    record = repo_record("carol/d", "v2")
    c.add_created(record)
    assert c.repos[record.name] == record
    assert counts(c) == {"v1": 2, "v2": 2}
    c.apply([put(repo_kv("carol/d", "v2"))], revision=2)
    assert counts(c) == {"v1": 2, "v2": 2}


# -- resolve ---------------------------------------------------------------------


async def test_resolve_a_cached_repo() -> None:
    c = cache()
    c.reset(world(), revision=1)
    location = await c.resolve(A)
    assert location == RepoLocation(A, IAD, VolumeId("v1"), NodeId("n1"), "http://n1.internal:8080")
    assert c.stats.etcd_reads == 0


async def test_resolve_follows_a_volume_to_its_new_node() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([put(node_kv("n3", v1=9)), put(volume_kv("v1", "n3"))], revision=2)
    location = await c.resolve(A)
    assert (location.node_id, location.node_url) == ("n3", "http://n3.internal:8080")


async def test_resolve_when_the_node_is_gone_is_unroutable() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(KEYS.node("n1"))], revision=2)
    with pytest.raises(Unroutable):
        await c.resolve(A)
    # Other repositories keep routing.
    assert (await c.resolve(RepoName("bob", "c"))).node_id == "n2"
    assert c.stats.etcd_reads == 0


async def test_resolve_when_the_volume_record_is_gone_is_unroutable() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(KEYS.volume("v1"))], revision=2)
    with pytest.raises(Unroutable):
        await c.resolve(A)


async def test_resolve_when_the_node_no_longer_serves_the_volume_is_unroutable() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([put(node_kv("n1", other=1))], revision=2)
    with pytest.raises(Unroutable, match="no longer serves"):
        await c.resolve(A)


async def test_resolve_recovers_when_the_node_comes_back() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(KEYS.node("n1"))], revision=2)
    with pytest.raises(Unroutable):
        await c.resolve(A)
    c.apply([put(node_kv("n1", v1=1000))], revision=3)
    assert (await c.resolve(A)).node_id == "n1"


async def test_record_of_a_cached_repo_needs_no_etcd() -> None:
    c = cache()
    c.reset(world(), revision=1)
    assert (await c.record(A)).volume_id == "v1"
    assert c.stats.etcd_reads == 0


# -- place -----------------------------------------------------------------------


def test_place_uses_the_repo_counts() -> None:
    c = cache()
    c.reset(world(), revision=1)  # v1 has 2 repos, v2 has 1
    volume, node = c.place(IAD, None)
    assert (volume.volume_id, node.node_id) == ("v2", "n2")
    c.apply([put(repo_kv("carol/d", "v2")), put(repo_kv("carol/e", "v2"))], revision=2)
    volume, node = c.place(IAD, None)
    assert (volume.volume_id, node.node_id) == ("v1", "n1")


def test_place_sees_created_repos_before_their_watch_events() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.add_created(repo_record("carol/d", "v2"))
    c.add_created(repo_record("carol/e", "v2"))
    assert c.place(IAD, None)[0].volume_id == "v1"


def test_place_skips_a_dead_node() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(KEYS.node("n2"))], revision=2)
    volume, node = c.place(IAD, None)
    assert (volume.volume_id, node.node_id) == ("v1", "n1")


def test_place_falls_back_and_returns_the_fallback_node() -> None:
    c = cache()
    c.reset([*world(), node_kv("o1", ORD, w1=1), volume_kv("w1", "o1", ORD)], revision=1)
    c.apply([delete(KEYS.node("n1")), delete(KEYS.node("n2"))], revision=2)
    volume, node = c.place(IAD, ORD)
    assert (volume.volume_id, node.node_id, node.region) == ("w1", "o1", "ord")


def test_place_with_nothing_live_raises() -> None:
    c = cache()
    c.reset(world(), revision=1)
    c.apply([delete(KEYS.node("n1")), delete(KEYS.node("n2"))], revision=2)
    with pytest.raises(PlacementError):
        c.place(IAD, None)
