"""Users, their SSH keys and personal HTTPS tokens, written to etcd.

Each write is a create-if-absent transaction, so two edges racing to register
the same user or key give one success and one AlreadyExists. A revocation
deletes the record only if it is unchanged since it was read (compare
mod_revision), so it never removes a record someone re-registered meanwhile.
This edge's cache sees each write at once; every other edge's when the watch
delivers it. New SSH connections and HTTPS requests are then refused, while an
SSH session already authenticated runs to its end.

What a token or key looks like on the wire (the `ge_` format, OpenSSH key
lines) is the edge's business: these functions take records' fields, parsed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from routing.cache import RoutingCache
from routing.errors import (
    AlreadyExists,
    ChangedMeanwhile,
    StoreUnavailable,
    UnknownCredential,
    UnknownUser,
)
from routing.etcd import EtcdClient, EtcdError
from routing.model import KeyRecord, TokenRecord, UserRecord
from routing.schema import (
    SchemaError,
    decode_key_record,
    decode_token,
    encode_key_record,
    encode_token,
    encode_user,
)


def _now() -> float:
    return round(time.time(), 3)


async def _create(etcd: EtcdClient, key: str, value: bytes) -> bool:
    """True if written, False if the key was taken."""
    try:
        return (await etcd.create(key, value)).succeeded
    except EtcdError as exc:
        raise StoreUnavailable(f"create {key}: {exc}") from exc


async def register_user(etcd: EtcdClient, cache: RoutingCache, name: str) -> UserRecord:
    """Register `name` (already validated with `parse_user_name`)."""
    user = UserRecord(name, _now())
    if not await _create(etcd, cache.keys.user(name), encode_user(user)):
        raise AlreadyExists(f"user {name} already exists")
    cache.put_user(user)
    return user


async def user_exists(etcd: EtcdClient, cache: RoutingCache, name: str) -> bool:
    """Whether `name` is a user: the cache, else one etcd read (created elsewhere just now)."""
    if name in cache.users:
        return True
    try:
        return await etcd.get(cache.keys.user(name)) is not None
    except EtcdError as exc:
        raise StoreUnavailable(f"get user {name}: {exc}") from exc


async def register_token(
    etcd: EtcdClient, cache: RoutingCache, user: str, token_id: str, secret_sha256: str
) -> TokenRecord:
    """Record a new personal token of an existing `user`; only its secret's hash is stored."""
    if not await user_exists(etcd, cache, user):
        raise UnknownUser(user)
    record = TokenRecord(token_id, user, secret_sha256, _now())
    if not await _create(etcd, cache.keys.token(token_id), encode_token(record)):
        raise AlreadyExists("token id collision, try again")
    cache.put_token(record)
    return record


async def register_key(
    etcd: EtcdClient, cache: RoutingCache, user: str, title: str, public_key: str, fingerprint: str
) -> KeyRecord:
    """Register an SSH public key (a normalised OpenSSH line and its SHA256 fingerprint)."""
    record = KeyRecord(fingerprint, user, title, public_key, _now())
    if not await _create(etcd, cache.keys.key(fingerprint), encode_key_record(record)):
        # Registered to someone (perhaps this user): either way, not again.
        raise AlreadyExists("key is already registered")
    cache.put_key(record)
    return record


async def revoke_key(
    etcd: EtcdClient, cache: RoutingCache, fingerprint: str, user: str | None
) -> str:
    """Delete SSH key `fingerprint`; returns its owner. See `_revoke` for `user`."""
    owner = await _revoke(etcd, cache.keys.key(fingerprint), decode_key_record, user, "key")
    cache.drop_key(fingerprint)
    return owner


async def revoke_token(
    etcd: EtcdClient, cache: RoutingCache, token_id: str, user: str | None
) -> str:
    """Delete token `token_id`; returns its owner. See `_revoke` for `user`."""
    owner = await _revoke(etcd, cache.keys.token(token_id), decode_token, user, "token")
    cache.drop_token(token_id)
    return owner


async def _revoke(
    etcd: EtcdClient,
    key: str,
    decode: Callable[[bytes], KeyRecord | TokenRecord],
    user: str | None,
    kind: str,
) -> str:
    """Delete the record at `key` if `user` owns it (None: anyone's, the admin); its owner.

    Someone else's record raises UnknownCredential exactly like a missing one,
    so a user cannot probe which keys or token ids exist.
    """
    try:
        kv = await etcd.get(key)
    except EtcdError as exc:
        raise StoreUnavailable(f"get {key}: {exc}") from exc
    if kv is None:
        raise UnknownCredential(f"no such {kind}")
    try:
        owner = decode(kv.value).user
    except SchemaError:
        owner = ""  # unreadable: only the admin may clear it
    if user is not None and owner != user:
        raise UnknownCredential(f"no such {kind}")
    try:
        deleted = (await etcd.delete_if_unchanged(key, kv.mod_revision)).succeeded
    except EtcdError as exc:
        raise StoreUnavailable(f"delete {key}: {exc}") from exc
    if not deleted:
        raise ChangedMeanwhile(f"{kind} changed while being revoked, try again")
    return owner
