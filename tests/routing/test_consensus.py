"""routing.consensus: the checksum, push checks, log chunks, folding, update-ref scripts
(pure), and the vote txn against a real etcd: one wins, the fence holds."""

from __future__ import annotations

import hashlib
import random

import pytest

from routing import consensus as cons
from routing.consensus import ZERO_OID, ConsensusState, PushRefused, RefUpdate
from routing.etcd import EtcdClient
from routing.model import RepoName, VolumeId
from routing.schema import Keys

A, B, C = "a" * 40, "b" * 40, "c" * 40
REPO = RepoName("alice", "x")


def test_checksum_is_gitalys_xor_and_order_free() -> None:
    refs = {"refs/heads/main": A, "refs/tags/v1": B}
    expected = int(hashlib.sha1(f"{A} refs/heads/main".encode()).hexdigest(), 16) ^ int(
        hashlib.sha1(f"{B} refs/tags/v1".encode()).hexdigest(), 16
    )
    assert cons.checksum(refs) == f"{expected:040x}"
    assert cons.checksum(dict(reversed(list(refs.items())))) == cons.checksum(refs)
    assert cons.checksum({}) == cons.ZERO_CHECKSUM
    # The node's own in-flight refs never count.
    assert cons.checksum({**refs, "refs/gitedge/incoming/t/0": C}) == cons.checksum(refs)


def test_advancing_the_checksum_equals_recomputing_it() -> None:
    rng = random.Random(7)
    refs: dict[str, str] = {}
    for _ in range(200):
        ref = f"refs/heads/b{rng.randrange(20)}"
        old = refs.get(ref, ZERO_OID)
        new = rng.choice([ZERO_OID, A, B, C])
        before = cons.checksum(refs)
        if new == ZERO_OID:
            refs.pop(ref, None)
        else:
            refs[ref] = new
        assert cons.advance_checksum(before, [RefUpdate(ref, old, new)]) == cons.checksum(refs)


def test_a_push_is_checked_against_the_consensus() -> None:
    local = {"refs/heads/main": A}
    state = ConsensusState(1, cons.checksum(local))
    after = cons.check_push(local, state, [RefUpdate("refs/heads/main", A, B)])
    assert after == cons.checksum({"refs/heads/main": B})
    with pytest.raises(PushRefused, match="fetch first"):
        cons.check_push(local, state, [RefUpdate("refs/heads/main", C, B)])
    with pytest.raises(PushRefused, match="behind"):
        cons.check_push({}, state, [RefUpdate("refs/heads/main", ZERO_OID, B)])
    with pytest.raises(PushRefused, match="reserved"):
        cons.check_push(local, state, [RefUpdate("refs/gitedge/x", ZERO_OID, B)])


def test_ref_update_lines_are_parsed_strictly() -> None:
    assert RefUpdate.parse(f"{A} {B} refs/heads/main") == RefUpdate("refs/heads/main", A, B)
    for bad in (f"{A} {B}", f"{A} xyz refs/heads/main", f"{A} {B} HEAD"):
        with pytest.raises(ValueError):
            RefUpdate.parse(bad)


def _oid(i: int) -> str:
    return hashlib.sha1(str(i).encode()).hexdigest()


def test_a_ten_thousand_ref_push_is_a_few_chunks_and_folds_back() -> None:
    updates = [RefUpdate(f"refs/tags/t{i:05d}", ZERO_OID, _oid(i)) for i in range(10_000)]
    chunks = cons.encode_log_entry(5, "tx", updates)
    assert len(chunks) <= 3 and all(len(c) <= cons.LOG_CHUNK_BYTES for c in chunks)
    entry = cons.decode_log_entry(chunks)
    assert (entry.generation, entry.txid, entry.updates) == (5, "tx", tuple(updates))
    refs = cons.fold_log(
        [entry, cons.LogEntry(6, "t2", (RefUpdate("refs/tags/t00000", _oid(0), ZERO_OID),))]
    )
    assert len(refs) == 9_999 and "refs/tags/t00000" not in refs


def test_update_ref_script_moves_local_to_target_checking_old_values() -> None:
    local = {"refs/heads/main": A, "refs/heads/gone": B, "refs/gitedge/incoming/t/0": C}
    target = {"refs/heads/main": B, "refs/heads/new": C}
    script = cons.update_ref_script(local, target).decode()
    assert script == (
        "start\0"
        f"delete refs/heads/gone\0{B}\0"
        f"update refs/heads/main\0{B}\0{A}\0"
        f"create refs/heads/new\0{C}\0"
        "commit\0"
    )
    assert cons.update_ref_script(target, target) == b""


async def _vote(
    etcd: EtcdClient, keys: Keys, record_rev: int, state: ConsensusState, new: str, txid: str
) -> bool:
    update = RefUpdate("refs/heads/main", ZERO_OID, new)
    after = cons.advance_checksum(state.checksum, [update])
    compares, ops, _ = cons.vote_txn(
        keys, REPO, record_rev, state, after, VolumeId("v1"), txid, [update]
    )
    return (await etcd.txn(compares, ops)).succeeded


async def _state(etcd: EtcdClient, keys: Keys) -> ConsensusState:
    kv = await etcd.get(keys.repl_state(REPO))
    return ConsensusState() if kv is None else cons.decode_state(kv.value, kv.mod_revision)


async def test_two_votes_from_one_state_exactly_one_commits(
    etcd: EtcdClient, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    record_rev = await etcd.put(keys.repo(REPO), b"{}")
    start = await _state(etcd, keys)
    assert await _vote(etcd, keys, record_rev, start, A, "first")
    assert not await _vote(etcd, keys, record_rev, start, B, "second")  # same read: fenced
    state = await _state(etcd, keys)
    assert (state.generation, state.txid) == (1, "first")
    assert state.checksum == cons.checksum({"refs/heads/main": A})
    applied = await etcd.get(keys.repl_applied(REPO, "v1"))
    assert applied is not None and cons.decode_applied(applied.value) == 1
    log = await etcd.range(keys.refs_log(REPO), prefix=True)
    groups = cons.group_log_chunks(keys, REPO, ((kv.key, kv.value) for kv in log.kvs))
    assert cons.fold_log(cons.decode_log_entry(g) for g in groups) == {"refs/heads/main": A}
    # The log lives outside the prefix the edges mirror.
    assert not keys.refs_log(REPO).startswith(key_prefix)


async def test_a_replica_set_change_fences_a_vote_begun_before_it(
    etcd: EtcdClient, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    record_rev = await etcd.put(keys.repo(REPO), b"{}")
    start = await _state(etcd, keys)
    await etcd.put(keys.repo(REPO), b'{"changed":1}')
    assert not await _vote(etcd, keys, record_rev, start, A, "stale")
    assert (await _state(etcd, keys)).generation == 0
