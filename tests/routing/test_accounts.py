"""routing.accounts against a real etcd: registrations, conflicts, revocations.

Two caches over one etcd stand for two edges: each write is in the writer's
cache at once, and in etcd for everyone else.
"""

from __future__ import annotations

import pytest

from routing.accounts import (
    register_key,
    register_token,
    register_user,
    revoke_key,
    revoke_token,
    user_exists,
)
from routing.cache import RoutingCache
from routing.errors import AlreadyExists, UnknownCredential, UnknownUser
from routing.etcd import EtcdClient
from routing.schema import Keys, decode_key_record, decode_token, decode_user

FINGERPRINT = "SHA256:2bqS0ZDbg5QcPfyKz3bAEhXzXzXzXzXzXzXzXzXzXzX"
KEY_LINE = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHk7ynEhIcYDXR5NDNb4PqdCRzMEtYzEKsTvm2pN2Bwb"


@pytest.fixture
def edges(etcd: EtcdClient, key_prefix: str) -> tuple[RoutingCache, RoutingCache]:
    keys = Keys(key_prefix)
    return RoutingCache(keys, etcd), RoutingCache(keys, etcd)


async def test_user_registered_once(
    etcd: EtcdClient, edges: tuple[RoutingCache, RoutingCache]
) -> None:
    here, there = edges
    user = await register_user(etcd, here, "alice")
    stored = await etcd.get(here.keys.user("alice"))
    assert stored is not None and decode_user(stored.value) == user
    assert here.users == {"alice": user}
    with pytest.raises(AlreadyExists, match="user alice already exists"):
        await register_user(etcd, there, "alice")
    assert "alice" not in there.users  # the loser learns it from the watch, not here


async def test_user_exists_reads_etcd_only_on_a_miss(
    etcd: EtcdClient, edges: tuple[RoutingCache, RoutingCache]
) -> None:
    here, there = edges
    await register_user(etcd, here, "alice")
    before = etcd.requests_made
    assert await user_exists(etcd, here, "alice")
    assert etcd.requests_made == before
    assert await user_exists(etcd, there, "alice")  # created through the other edge
    assert not await user_exists(etcd, there, "bob")
    assert etcd.requests_made == before + 2


async def test_token_needs_a_user_and_a_free_id(
    etcd: EtcdClient, edges: tuple[RoutingCache, RoutingCache]
) -> None:
    here, there = edges
    with pytest.raises(UnknownUser):
        await register_token(etcd, here, "alice", "0123456789ab", "f" * 64)
    assert await etcd.get(here.keys.token("0123456789ab")) is None
    await register_user(etcd, here, "alice")
    record = await register_token(etcd, here, "alice", "0123456789ab", "f" * 64)
    stored = await etcd.get(here.keys.token("0123456789ab"))
    assert stored is not None and decode_token(stored.value) == record
    assert (record.user, record.secret_sha256) == ("alice", "f" * 64)
    assert await here.token("0123456789ab") == record
    with pytest.raises(AlreadyExists, match="collision"):
        await register_token(etcd, there, "alice", "0123456789ab", "e" * 64)


async def test_key_registered_to_one_user_only(
    etcd: EtcdClient, edges: tuple[RoutingCache, RoutingCache]
) -> None:
    here, there = edges
    record = await register_key(etcd, here, "alice", "laptop", KEY_LINE, FINGERPRINT)
    stored = await etcd.get(here.keys.key(FINGERPRINT))
    assert stored is not None and decode_key_record(stored.value) == record
    assert await here.key_owner(FINGERPRINT) == "alice"
    with pytest.raises(AlreadyExists, match="already registered"):
        await register_key(etcd, there, "mallory", "", KEY_LINE, FINGERPRINT)
    assert await there.key_owner(FINGERPRINT) == "alice"


async def test_revoke_own_key_and_not_someone_elses(
    etcd: EtcdClient, edges: tuple[RoutingCache, RoutingCache]
) -> None:
    here, _ = edges
    await register_key(etcd, here, "alice", "laptop", KEY_LINE, FINGERPRINT)
    # Someone else's key answers exactly like a missing one.
    with pytest.raises(UnknownCredential, match=r"^no such key$"):
        await revoke_key(etcd, here, FINGERPRINT, "mallory")
    assert await etcd.get(here.keys.key(FINGERPRINT)) is not None
    assert await revoke_key(etcd, here, FINGERPRINT, "alice") == "alice"
    assert await etcd.get(here.keys.key(FINGERPRINT)) is None
    assert FINGERPRINT not in here.keys_by_fingerprint
    with pytest.raises(UnknownCredential, match=r"^no such key$"):
        await revoke_key(etcd, here, FINGERPRINT, "alice")


async def test_admin_revokes_anyones_token_and_unreadable_ones(
    etcd: EtcdClient, edges: tuple[RoutingCache, RoutingCache]
) -> None:
    here, there = edges
    await register_user(etcd, here, "alice")
    await register_token(etcd, here, "alice", "0123456789ab", "f" * 64)
    assert await revoke_token(etcd, there, "0123456789ab", None) == "alice"
    assert await etcd.get(here.keys.token("0123456789ab")) is None
    await etcd.put(here.keys.token("ffffffffffff"), b"not json")
    with pytest.raises(UnknownCredential, match=r"^no such token$"):
        await revoke_token(etcd, here, "ffffffffffff", "alice")
    assert await revoke_token(etcd, here, "ffffffffffff", None) == ""
    assert await etcd.get(here.keys.token("ffffffffffff")) is None
