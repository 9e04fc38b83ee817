"""routing.snapshots: encoding and reading a history (pure), and against a real etcd:
a snapshot trims the log, the folded refs are unchanged, a stale snapshot is fenced."""

from __future__ import annotations

import random

import pytest

from routing import consensus as cons
from routing import snapshots as snaps
from routing.consensus import ZERO_OID, ConsensusState, RefUpdate
from routing.etcd import EtcdClient
from routing.model import RepoName, VolumeId
from routing.schema import Keys, SchemaError

REPO = RepoName("alice", "x")


def _oid(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


def test_a_snapshot_round_trips_and_big_ones_are_chunked() -> None:
    rng = random.Random(1)
    refs = {f"refs/tags/t{i:05d}": _oid(rng) for i in range(20_000)}
    chunks = snaps.encode_snapshot(7, refs)
    assert len(chunks) > 1 and all(len(c) <= cons.LOG_CHUNK_BYTES for c in chunks)
    assert snaps.decode_snapshot(chunks) == (7, refs)
    with pytest.raises(SchemaError):
        snaps.decode_snapshot([b"not zlib"])


def _history_kvs(
    keys: Keys, entries: int, snapshot_at: int | None, done: bool
) -> list[tuple[str, bytes]]:
    kvs: list[tuple[str, bytes]] = []
    refs: dict[str, str] = {}
    for generation in range(1, entries + 1):
        new = f"{generation:040x}"
        update = RefUpdate("refs/heads/main", refs.get("refs/heads/main", ZERO_OID), new)
        refs["refs/heads/main"] = new
        for i, chunk in enumerate(cons.encode_log_entry(generation, f"t{generation}", [update])):
            kvs.append((keys.refs_log_chunk(REPO, generation, i), chunk))
        if generation == snapshot_at:
            for i, chunk in enumerate(snaps.encode_snapshot(generation, dict(refs))):
                kvs.append((keys.refs_snap_chunk(REPO, generation, i), chunk))
            if done:
                kvs.append((keys.refs_snap_done(REPO, generation), b"{}"))
    return sorted(kvs)


def test_history_is_the_newest_done_snapshot_and_the_entries_after_it() -> None:
    keys = Keys("/t/")
    plain = snaps.parse_history(keys, REPO, _history_kvs(keys, 10, None, False))
    assert (plain.snapshot_generation, len(plain.entries), plain.generation) == (0, 10, 10)
    with_snap = snaps.parse_history(keys, REPO, _history_kvs(keys, 10, 6, True))
    assert (with_snap.snapshot_generation, len(with_snap.entries)) == (6, 4)
    assert with_snap.refs() == plain.refs() == {"refs/heads/main": f"{10:040x}"}
    # A snapshot without its `done` key (a snapshotter that lost, or crashed) is ignored.
    not_done = snaps.parse_history(keys, REPO, _history_kvs(keys, 10, 6, False))
    assert (not_done.snapshot_generation, len(not_done.entries)) == (0, 10)
    broken = [(keys.refs_snap_done(REPO, 3), b"{}")]
    with pytest.raises(SchemaError, match="no chunks"):
        snaps.parse_history(keys, REPO, broken)


async def _push(etcd: EtcdClient, keys: Keys, record_rev: int, new: str) -> None:
    kv = await etcd.get(keys.repl_state(REPO))
    state = ConsensusState() if kv is None else cons.decode_state(kv.value, kv.mod_revision)
    history = snaps.parse_history(keys, REPO, await _kvs(etcd, keys))
    old = history.refs().get("refs/heads/main", ZERO_OID)
    update = RefUpdate("refs/heads/main", old, new)
    after = cons.advance_checksum(state.checksum, [update])
    compares, ops, _ = cons.vote_txn(
        keys, REPO, record_rev, state, after, VolumeId("v1"), new[:8], [update]
    )
    assert (await etcd.txn(compares, ops)).succeeded


async def _kvs(etcd: EtcdClient, keys: Keys) -> list[tuple[str, bytes]]:
    listed = await etcd.range(keys.refs_repo(REPO), prefix=True)
    return [(kv.key, kv.value) for kv in listed.kvs]


async def _write(etcd: EtcdClient, keys: Keys, history: snaps.RefsHistory) -> bool:
    generation = history.generation
    for i, chunk in enumerate(snaps.encode_snapshot(generation, history.refs())):
        await etcd.put(keys.refs_snap_chunk(REPO, generation, i), chunk)
    compares, ops = snaps.snapshot_txn(keys, REPO, generation)
    return (await etcd.txn(compares, ops)).succeeded


async def test_a_snapshot_trims_the_log_and_changes_no_ref(
    etcd: EtcdClient, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    record_rev = await etcd.put(keys.repo(REPO), b"{}")
    for generation in range(1, snaps.SNAPSHOT_AFTER + 1):
        await _push(etcd, keys, record_rev, f"{generation:040x}")
    before = snaps.parse_history(keys, REPO, await _kvs(etcd, keys))
    assert before.wants_snapshot() and before.generation == snaps.SNAPSHOT_AFTER
    stale = snaps.parse_history(keys, REPO, (await _kvs(etcd, keys))[:-1])  # one entry short
    assert await _write(etcd, keys, before)
    after = snaps.parse_history(keys, REPO, await _kvs(etcd, keys))
    assert after.refs() == before.refs() and after.entries == []
    assert after.snapshot_generation == snaps.SNAPSHOT_AFTER and not after.wants_snapshot()
    assert len(await _kvs(etcd, keys)) == 2  # one chunk and `done`: the log is gone
    # A slower snapshotter of an older generation finds its entry trimmed: fenced.
    assert not await _write(etcd, keys, stale)
    assert snaps.parse_history(keys, REPO, await _kvs(etcd, keys)).refs() == before.refs()
    # Pushes go on; the next snapshot replaces this one.
    await _push(etcd, keys, record_rev, "f" * 40)
    later = snaps.parse_history(keys, REPO, await _kvs(etcd, keys))
    assert later.refs() == {"refs/heads/main": "f" * 40} and len(later.entries) == 1
    assert await _write(etcd, keys, later)
    kvs = await _kvs(etcd, keys)
    assert [k for k, _ in kvs] == [
        keys.refs_snap_chunk(REPO, later.generation, 0),
        keys.refs_snap_done(REPO, later.generation),
    ]
