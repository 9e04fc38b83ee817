"""Users, their personal HTTPS tokens and SSH keys, written to etcd.

Each write is a create-if-absent transaction, so two edges racing to register
the same user or key give one success and one conflict. A revocation deletes
the record only if it is unchanged since it was read (compare mod_revision),
so it never removes a record someone re-registered meanwhile. Every edge's
cache drops a revoked credential when the watch delivers the delete; new SSH
connections and HTTPS requests are then refused, while an SSH session already
authenticated runs to its end.
"""

from __future__ import annotations

import time
from typing import Any

import asyncssh

from edge.errors import BadRequest, EdgeError, RoutingUnavailable
from edge.proto.basic_auth import new_token
from edge.proto.http_route import Credential
from routing.cache import RoutingCache
from routing.etcd import EtcdClient, EtcdError
from routing.model import InvalidRepoName, KeyRecord, TokenRecord, UserRecord, parse_user_name
from routing.schema import (
    SchemaError,
    decode_key_record,
    decode_token,
    encode_key_record,
    encode_token,
    encode_user,
)

MAX_TITLE = 200


class Conflict(EdgeError):
    http_status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message


class UnknownUser(EdgeError):
    http_status = 404
    public_message = "no such user"


class UnknownCredential(EdgeError):
    http_status = 404

    def __init__(self, kind: Credential) -> None:
        super().__init__(f"no such {kind}")
        self.public_message = f"no such {kind}"


async def _create(etcd: EtcdClient, key: str, value: bytes) -> bool:
    try:
        return (await etcd.create(key, value)).succeeded
    except EtcdError as exc:
        raise RoutingUnavailable(f"create {key}: {exc}") from None


async def create_user(etcd: EtcdClient, cache: RoutingCache, payload: Any) -> UserRecord:
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        raise BadRequest('expected JSON {"name": "user"}')
    try:
        name = parse_user_name(payload["name"])
    except InvalidRepoName as exc:
        raise BadRequest(f"bad user name: {exc}") from None
    user = UserRecord(name, round(time.time(), 3))
    if not await _create(etcd, cache.keys.user(name), encode_user(user)):
        raise Conflict(f"user {name} already exists")
    cache.users[name] = user
    return user


async def create_token(etcd: EtcdClient, cache: RoutingCache, user: str) -> str:
    """A new personal token for `user`; the only time its secret is ever shown."""
    await require_user(etcd, cache, user)
    token = new_token()
    record = TokenRecord(token.token_id, user, token.secret_sha256, round(time.time(), 3))
    if not await _create(etcd, cache.keys.token(token.token_id), encode_token(record)):
        raise Conflict("token id collision, try again")
    cache.tokens[token.token_id] = record
    return token.token


async def require_user(etcd: EtcdClient, cache: RoutingCache, user: str) -> None:
    """UnknownUser unless `user` exists (the cache, else one etcd read)."""
    if user in cache.users:
        return
    try:
        found = await etcd.get(cache.keys.user(user))
    except EtcdError as exc:
        raise RoutingUnavailable(f"get user {user}: {exc}") from None
    if found is None:
        raise UnknownUser(user)


def parse_public_key(text: str) -> tuple[str, str]:
    """(normalised OpenSSH line, SHA256 fingerprint) of one public key; BadRequest if not."""
    if not isinstance(text, str) or "\n" in text.strip() or len(text) > 16384:
        raise BadRequest("key must be one OpenSSH public key line")
    try:
        key = asyncssh.import_public_key(text.strip())
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise BadRequest(f"not an SSH public key: {exc}") from None
    line = key.export_public_key("openssh").decode().strip()
    return line, key.get_fingerprint("sha256")


async def add_key(etcd: EtcdClient, cache: RoutingCache, user: str, payload: Any) -> KeyRecord:
    if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
        raise BadRequest('expected JSON {"title": "...", "key": "ssh-ed25519 AAAA..."}')
    title = payload.get("title") or ""
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise BadRequest(f"title must be a string of at most {MAX_TITLE} characters")
    line, fingerprint = parse_public_key(payload["key"])
    record = KeyRecord(fingerprint, user, title, line, round(time.time(), 3))
    if not await _create(etcd, cache.keys.key(fingerprint), encode_key_record(record)):
        # Registered to someone (perhaps this user): either way, not again.
        raise Conflict("key is already registered")
    cache.keys_by_fingerprint[fingerprint] = record
    return record


def list_credentials(cache: RoutingCache, kind: Credential, user: str) -> list[dict[str, Any]]:
    """`user`'s keys or tokens as the cache knows them, oldest first; no secrets."""
    if kind == "key":
        return [
            {"fingerprint": k.fingerprint, "title": k.title, "created_at": k.created_at}
            for k in sorted(cache.keys_by_fingerprint.values(), key=_created)
            if k.user == user
        ]
    return [
        {"id": t.token_id, "created_at": t.created_at}
        for t in sorted(cache.tokens.values(), key=_created)
        if t.user == user
    ]


def _created(record: KeyRecord | TokenRecord) -> float:
    return record.created_at


async def revoke_credential(
    etcd: EtcdClient, cache: RoutingCache, kind: Credential, ident: str, user: str | None
) -> str:
    """Delete key `ident` (a fingerprint) or token `ident` (an id); returns its owner.

    `user` None (the admin) may revoke anyone's; a user only their own, and
    someone else's answers 404 exactly like one that does not exist.
    """
    key = cache.keys.key(ident) if kind == "key" else cache.keys.token(ident)
    try:
        kv = await etcd.get(key)
    except EtcdError as exc:
        raise RoutingUnavailable(f"get {key}: {exc}") from None
    if kv is None:
        raise UnknownCredential(kind)
    try:
        owner = (decode_key_record(kv.value) if kind == "key" else decode_token(kv.value)).user
    except SchemaError:
        owner = ""  # unreadable: only the admin may clear it
    if user is not None and owner != user:
        raise UnknownCredential(kind)
    try:
        deleted = (await etcd.delete_if_unchanged(key, kv.mod_revision)).succeeded
    except EtcdError as exc:
        raise RoutingUnavailable(f"delete {key}: {exc}") from None
    if not deleted:
        raise Conflict(f"{kind} changed while being revoked, try again")
    if kind == "key":
        cache.keys_by_fingerprint.pop(ident, None)
    else:
        cache.tokens.pop(ident, None)
    return owner
