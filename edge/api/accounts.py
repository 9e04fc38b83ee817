"""The account API's edge half: request bodies in, EdgeErrors out.

The writes themselves (create-if-absent, compare-and-delete, the cache) are
routing's (routing/accounts.py). What stays here is what only the edge knows:
the JSON payloads, the `ge_` token format (edge/proto/basic_auth.py), OpenSSH
key parsing, and which HTTP answer each routing outcome is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import asyncssh

from edge.errors import BadRequest, EdgeError, RoutingUnavailable
from edge.proto.basic_auth import new_token
from edge.proto.http_route import Credential
from routing.accounts import (
    register_key,
    register_token,
    register_user,
    revoke_key,
    revoke_token,
    user_exists,
)
from routing.cache import RoutingCache
from routing.errors import (
    AlreadyExists,
    ChangedMeanwhile,
    StoreUnavailable,
    UnknownCredential,
    UnknownUser,
)
from routing.etcd import EtcdClient
from routing.model import InvalidRepoName, KeyRecord, TokenRecord, UserRecord, parse_user_name

MAX_TITLE = 200


class Conflict(EdgeError):
    http_status = 409

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message


class UserNotFound(EdgeError):
    http_status = 404
    public_message = "no such user"


class CredentialNotFound(EdgeError):
    http_status = 404

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.public_message = message  # "no such key" / "no such token"


@contextmanager
def account_errors() -> Iterator[None]:
    """Routing's account outcomes in their wire form (their messages are safe to show)."""
    try:
        yield
    except (AlreadyExists, ChangedMeanwhile) as exc:
        raise Conflict(str(exc)) from None
    except UnknownUser as exc:
        raise UserNotFound(str(exc)) from None
    except UnknownCredential as exc:
        raise CredentialNotFound(str(exc)) from None
    except StoreUnavailable as exc:
        raise RoutingUnavailable(str(exc)) from None


async def create_user(etcd: EtcdClient, cache: RoutingCache, payload: Any) -> UserRecord:
    """`{"name": "user"}`: register a user."""
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        raise BadRequest('expected JSON {"name": "user"}')
    try:
        name = parse_user_name(payload["name"])
    except InvalidRepoName as exc:
        raise BadRequest(f"bad user name: {exc}") from None
    with account_errors():
        return await register_user(etcd, cache, name)


async def create_token(etcd: EtcdClient, cache: RoutingCache, user: str) -> str:
    """A new personal token for `user`; the only time its secret is ever shown."""
    token = new_token()
    with account_errors():
        await register_token(etcd, cache, user, token.token_id, token.secret_sha256)
    return token.token


async def require_user(etcd: EtcdClient, cache: RoutingCache, user: str) -> None:
    """UserNotFound unless `user` exists."""
    with account_errors():
        exists = await user_exists(etcd, cache, user)
    if not exists:
        raise UserNotFound(user)


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
    """`{"title": "...", "key": "ssh-ed25519 AAAA..."}`: register an SSH key of `user`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("key"), str):
        raise BadRequest('expected JSON {"title": "...", "key": "ssh-ed25519 AAAA..."}')
    title = payload.get("title") or ""
    if not isinstance(title, str) or len(title) > MAX_TITLE:
        raise BadRequest(f"title must be a string of at most {MAX_TITLE} characters")
    line, fingerprint = parse_public_key(payload["key"])
    with account_errors():
        return await register_key(etcd, cache, user, title, line, fingerprint)


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
    revoke = revoke_key if kind == "key" else revoke_token
    with account_errors():
        return await revoke(etcd, cache, ident, user)
