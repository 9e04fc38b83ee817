"""RoutingCache's account tables (users/, keys/, tokens/): fed by reset and watch
events, and read by key_owner/token from memory, going to etcd only on a miss."""

from __future__ import annotations

from typing import cast

import pytest

from routing.cache import RoutingCache
from routing.etcd import EtcdClient, KeyValue, WatchEvent
from routing.model import KeyRecord, TokenRecord, UserRecord
from routing.schema import Keys, encode_key_record, encode_token, encode_user

KEYS = Keys()
ALICE_KEY = KeyRecord("SHA256:alicekey", "alice", "laptop", "ssh-ed25519 AAAA alice", 1.0)
BOB_KEY = KeyRecord("SHA256:bobkey", "bob", "", "ssh-ed25519 BBBB bob", 2.0)
ALICE_TOKEN = TokenRecord("aaaaaaaaaaaa", "alice", "1" * 64, 3.0)
BOB_TOKEN = TokenRecord("bbbbbbbbbbbb", "bob", "2" * 64, 4.0)


class RecordingEtcd:
    """Stands in for EtcdClient on a miss: has nothing, and notes what was asked."""

    def __init__(self) -> None:
        self.gets: list[str] = []

    async def get(self, key: str) -> KeyValue | None:
        self.gets.append(key)
        return None


def offline_cache() -> RoutingCache:
    """A cache with no etcd at all: any read that reaches etcd crashes on None."""
    return RoutingCache(KEYS, cast(EtcdClient, None))


def kv(key: str, value: bytes, revision: int = 1) -> KeyValue:
    return KeyValue(key, value, revision, revision, 1, 0)


def user_kv(user: UserRecord, revision: int = 1) -> KeyValue:
    return kv(KEYS.user(user.name), encode_user(user), revision)


def key_kv(key: KeyRecord, revision: int = 1) -> KeyValue:
    return kv(KEYS.key(key.fingerprint), encode_key_record(key), revision)


def token_kv(token: TokenRecord, revision: int = 1) -> KeyValue:
    return kv(KEYS.token(token.token_id), encode_token(token), revision)


def put(item: KeyValue) -> WatchEvent:
    return WatchEvent("PUT", item)


def delete(key: str, revision: int) -> WatchEvent:
    return WatchEvent("DELETE", kv(key, b"", revision))


def filled() -> RoutingCache:
    cache = offline_cache()
    cache.reset(
        [
            user_kv(UserRecord("alice", 1.0)),
            user_kv(UserRecord("bob", 2.0)),
            key_kv(ALICE_KEY),
            key_kv(BOB_KEY),
            token_kv(ALICE_TOKEN),
            token_kv(BOB_TOKEN),
        ],
        revision=10,
    )
    return cache


# -- reset ---------------------------------------------------------------------------


def test_reset_fills_the_account_tables() -> None:
    cache = filled()
    assert cache.users == {"alice": UserRecord("alice", 1.0), "bob": UserRecord("bob", 2.0)}
    assert cache.keys_by_fingerprint == {
        ALICE_KEY.fingerprint: ALICE_KEY,
        BOB_KEY.fingerprint: BOB_KEY,
    }
    assert cache.tokens == {ALICE_TOKEN.token_id: ALICE_TOKEN, BOB_TOKEN.token_id: BOB_TOKEN}
    assert cache.revision == 10
    # Account records are not routing records.
    assert cache.repos == {} and cache.volumes == {} and cache.nodes == {}


def test_reset_replaces_everything_it_does_not_list() -> None:
    # A relist after compaction: whatever was deleted meanwhile must be gone.
    cache = filled()
    cache.reset([key_kv(BOB_KEY)], revision=20)
    assert cache.users == {}
    assert cache.keys_by_fingerprint == {BOB_KEY.fingerprint: BOB_KEY}
    assert cache.tokens == {}
    assert cache.revision == 20


def test_reset_skips_malformed_records() -> None:
    cache = offline_cache()
    cache.reset(
        [
            kv(KEYS.token("badbadbadbad"), b'{"token_id":"badbadbadbad"}'),
            kv(KEYS.key("SHA256:junk"), b"not json"),
            kv(KEYS.user("x"), b"[]"),
            token_kv(ALICE_TOKEN),
        ],
        revision=3,
    )
    assert cache.tokens == {ALICE_TOKEN.token_id: ALICE_TOKEN}
    assert cache.keys_by_fingerprint == {}
    assert cache.users == {}


# -- watch events ----------------------------------------------------------------------


def test_put_events_add_accounts() -> None:
    cache = offline_cache()
    cache.reset([], revision=1)
    cache.apply([put(user_kv(UserRecord("carol", 5.0), 2)), put(key_kv(ALICE_KEY, 2))], revision=2)
    cache.apply([put(token_kv(ALICE_TOKEN, 3))], revision=3)
    assert cache.users == {"carol": UserRecord("carol", 5.0)}
    assert cache.keys_by_fingerprint == {ALICE_KEY.fingerprint: ALICE_KEY}
    assert cache.tokens == {ALICE_TOKEN.token_id: ALICE_TOKEN}
    assert cache.revision == 3
    assert cache.stats.events == 3


def test_put_overwrites() -> None:
    cache = filled()
    moved_key = KeyRecord(ALICE_KEY.fingerprint, "carol", "moved", ALICE_KEY.public_key, 9.0)
    rotated = TokenRecord(ALICE_TOKEN.token_id, "alice", "f" * 64, 9.0)
    cache.apply(
        [
            put(key_kv(moved_key, 11)),
            put(token_kv(rotated, 11)),
            put(user_kv(UserRecord("alice", 9.0), 11)),
        ],
        revision=11,
    )
    assert cache.keys_by_fingerprint[ALICE_KEY.fingerprint] == moved_key
    assert cache.tokens[ALICE_TOKEN.token_id] == rotated
    assert cache.users["alice"] == UserRecord("alice", 9.0)
    assert len(cache.keys_by_fingerprint) == len(cache.tokens) == len(cache.users) == 2


def test_delete_events_remove_accounts() -> None:
    cache = filled()
    cache.apply(
        [
            delete(KEYS.key(ALICE_KEY.fingerprint), 12),
            delete(KEYS.token(BOB_TOKEN.token_id), 12),
            delete(KEYS.user("alice"), 12),
        ],
        revision=12,
    )
    assert cache.keys_by_fingerprint == {BOB_KEY.fingerprint: BOB_KEY}
    assert cache.tokens == {ALICE_TOKEN.token_id: ALICE_TOKEN}
    assert cache.users == {"bob": UserRecord("bob", 2.0)}
    assert cache.revision == 12


def test_delete_of_an_unknown_account_is_harmless() -> None:
    cache = filled()
    cache.apply(
        [
            delete(KEYS.key("SHA256:never"), 13),
            delete(KEYS.token("cccccccccccc"), 13),
            delete(KEYS.user("nobody"), 13),
        ],
        revision=13,
    )
    assert len(cache.keys_by_fingerprint) == len(cache.tokens) == len(cache.users) == 2


def test_put_after_delete_restores() -> None:
    cache = filled()
    cache.apply([delete(KEYS.token(ALICE_TOKEN.token_id), 14)], revision=14)
    cache.apply([put(token_kv(ALICE_TOKEN, 15))], revision=15)
    assert cache.tokens[ALICE_TOKEN.token_id] == ALICE_TOKEN


def test_events_under_another_prefix_are_ignored() -> None:
    cache = filled()
    other = Keys("/other/")
    stranger = TokenRecord("dddddddddddd", "eve", "3" * 64, 1.0)
    cache.apply(
        [
            put(kv(other.token(stranger.token_id), encode_token(stranger), 16)),
            WatchEvent("DELETE", kv(other.token(ALICE_TOKEN.token_id), b"", 16)),
        ],
        revision=16,
    )
    assert stranger.token_id not in cache.tokens
    assert cache.tokens[ALICE_TOKEN.token_id] == ALICE_TOKEN


# -- lookups ---------------------------------------------------------------------------


async def test_key_owner_hit_does_not_touch_etcd() -> None:
    cache = filled()  # etcd is None: a read would raise AttributeError
    assert await cache.key_owner(ALICE_KEY.fingerprint) == "alice"
    assert await cache.key_owner(BOB_KEY.fingerprint) == "bob"
    assert cache.stats.etcd_reads == 0


async def test_token_hit_does_not_touch_etcd() -> None:
    cache = filled()
    assert await cache.token(ALICE_TOKEN.token_id) == ALICE_TOKEN
    assert await cache.token(BOB_TOKEN.token_id) == BOB_TOKEN
    assert cache.stats.etcd_reads == 0


async def test_lookups_see_watch_updates() -> None:
    cache = filled()
    moved = KeyRecord(ALICE_KEY.fingerprint, "carol", "", ALICE_KEY.public_key, 1.0)
    cache.apply([put(key_kv(moved, 17))], revision=17)
    assert await cache.key_owner(ALICE_KEY.fingerprint) == "carol"


async def test_misses_ask_etcd_once_each() -> None:
    etcd = RecordingEtcd()
    cache = RoutingCache(KEYS, cast(EtcdClient, etcd))
    assert await cache.key_owner("SHA256:unknown") is None
    assert await cache.token("eeeeeeeeeeee") is None
    assert etcd.gets == [KEYS.key("SHA256:unknown"), KEYS.token("eeeeeeeeeeee")]
    assert cache.stats.etcd_reads == 2


async def test_a_deleted_key_or_token_is_not_answered_from_memory() -> None:
    # Revocation: once the DELETE arrives, the lookup goes back to etcd.
    etcd = RecordingEtcd()
    cache = RoutingCache(KEYS, cast(EtcdClient, etcd))
    cache.reset([key_kv(ALICE_KEY), token_kv(ALICE_TOKEN)], revision=1)
    cache.apply(
        [
            delete(KEYS.key(ALICE_KEY.fingerprint), 2),
            delete(KEYS.token(ALICE_TOKEN.token_id), 2),
        ],
        revision=2,
    )
    assert await cache.key_owner(ALICE_KEY.fingerprint) is None
    assert await cache.token(ALICE_TOKEN.token_id) is None
    assert etcd.gets == [KEYS.key(ALICE_KEY.fingerprint), KEYS.token(ALICE_TOKEN.token_id)]


async def test_a_hit_with_a_recording_etcd_reads_nothing() -> None:
    etcd = RecordingEtcd()
    cache = RoutingCache(KEYS, cast(EtcdClient, etcd))
    cache.reset([key_kv(BOB_KEY), token_kv(BOB_TOKEN)], revision=1)
    assert await cache.key_owner(BOB_KEY.fingerprint) == "bob"
    assert await cache.token(BOB_TOKEN.token_id) == BOB_TOKEN
    assert etcd.gets == []


def test_own_writes_show_at_once_and_their_watch_events_change_nothing() -> None:
    cache = offline_cache()
    cache.put_user(UserRecord("alice", 1.0))
    cache.put_key(ALICE_KEY)
    cache.put_token(ALICE_TOKEN)
    assert cache.users == {"alice": UserRecord("alice", 1.0)}
    assert cache.keys_by_fingerprint == {ALICE_KEY.fingerprint: ALICE_KEY}
    assert cache.tokens == {ALICE_TOKEN.token_id: ALICE_TOKEN}
    cache.apply([put(user_kv(UserRecord("alice", 1.0))), put(key_kv(ALICE_KEY))], revision=2)
    assert len(cache.users) == len(cache.keys_by_fingerprint) == 1
    cache.drop_key(ALICE_KEY.fingerprint)
    cache.drop_token(ALICE_TOKEN.token_id)
    cache.apply([delete(KEYS.key(ALICE_KEY.fingerprint), 3)], revision=3)  # the revocation's
    assert cache.keys_by_fingerprint == {} and cache.tokens == {}


def test_tables_are_read_only_views_that_follow_the_cache() -> None:
    cache = offline_cache()
    users = cache.users
    cache.reset([user_kv(UserRecord("alice", 1.0))], revision=1)
    assert "alice" in users  # a live view, not a copy
    with pytest.raises(TypeError):
        users["mallory"] = UserRecord("mallory", 0.0)  # type: ignore[index]
    with pytest.raises(AttributeError):
        cache.tokens.pop(ALICE_TOKEN.token_id)  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        cache.revision = 99  # type: ignore[misc]
