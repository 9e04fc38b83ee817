"""Users, their personal HTTPS tokens and SSH keys, written to etcd.

Each write is a create-if-absent transaction, so two edges racing to register
the same user or key give one success and one conflict.
"""

from __future__ import annotations

import time
from typing import Any

import asyncssh

from edge.errors import BadRequest, EdgeError, RoutingUnavailable
from edge.proto.basic_auth import new_token
from routing.cache import RoutingCache
from routing.etcd import EtcdClient, EtcdError
from routing.model import InvalidRepoName, KeyRecord, TokenRecord, UserRecord, parse_user_name
from routing.schema import encode_key, encode_token, encode_user

MAX_TITLE = 200


class Conflict(EdgeError):
    http_status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message


class UnknownUser(EdgeError):
    http_status = 404
    public_message = "no such user"


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
    if user not in cache.users and await etcd.get(cache.keys.user(user)) is None:
        raise UnknownUser(user)
    token = new_token()
    record = TokenRecord(token.token_id, user, token.secret_sha256, round(time.time(), 3))
    if not await _create(etcd, cache.keys.token(token.token_id), encode_token(record)):
        raise Conflict("token id collision, try again")
    cache.tokens[token.token_id] = record
    return token.token


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
    if not await _create(etcd, cache.keys.key(fingerprint), encode_key(record)):
        # Registered to someone (perhaps this user): either way, not again.
        raise Conflict("key is already registered")
    cache.keys_by_fingerprint[fingerprint] = record
    return record
