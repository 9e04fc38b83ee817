"""Who is asking, and may they: shared by the HTTPS and SSH fronts.

Names do not leak: a private repository is indistinguishable from a missing
one to a user who may not read it (404, or 401 to an anonymous HTTPS client
so that git asks for credentials, as GitHub does).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from edge.errors import (
    AuthRequired,
    ConsensusUnavailable,
    Forbidden,
    NodeUnavailable,
    NoReplicaInSync,
    RepoNotFound,
    RoutingUnavailable,
)
from edge.proto.basic_auth import hash_secret, parse_basic, parse_bearer, split_token
from plumbing.logsafe import printable
from routing import errors
from routing.access import can_read, can_write
from routing.cache import RoutingCache
from routing.errors import NotFound, StoreUnavailable
from routing.model import RepoName, RepoRecord


async def http_user(cache: RoutingCache, authorization: bytes | None) -> str | None:
    """The user named by Basic user:token credentials; None when there are none.

    Wrong credentials are an error (401), never silently anonymous.
    """
    try:
        creds = parse_basic(authorization)
    except ValueError as exc:
        raise AuthRequired(str(exc)) from None
    if creds is None:
        if authorization is not None:
            raise AuthRequired("only Basic user:token credentials are accepted")
        return None
    if not await token_valid(cache, creds.user, creds.password):
        # The user name is the client's text (sometimes a token pasted in the wrong field).
        raise AuthRequired(f"bad token for {printable(creds.user, 64)}")
    return creds.user


async def token_valid(cache: RoutingCache, user: str, token: str) -> bool:
    parts = split_token(token)
    if parts is None:
        return False
    token_id, secret = parts
    try:
        record = await cache.token(token_id)
    except StoreUnavailable as exc:
        raise RoutingUnavailable(str(exc)) from None
    # Bytes, not str: compare_digest refuses non-ASCII str, and user input is anything.
    return (
        record is not None
        and hmac.compare_digest(record.user.encode(), user.encode())
        and hmac.compare_digest(record.secret_sha256.encode(), hash_secret(secret).encode())
    )


def is_admin(authorization: bytes | None, admin_token: str) -> bool:
    offered = parse_bearer(authorization)
    return (
        bool(admin_token)
        and offered is not None
        and hmac.compare_digest(offered.encode(), admin_token.encode())
    )


async def authorize(
    cache: RoutingCache, name: RepoName, user: str | None, *, write: bool, anonymous_401: bool
) -> RepoRecord:
    """The repository's record if `user` may read it (and write, if asked)."""
    try:
        record: RepoRecord | None = await cache.record(name)
    except NotFound:
        record = None
    except StoreUnavailable as exc:
        raise RoutingUnavailable(str(exc)) from None
    if record is None or not can_read(record, user):
        if user is None and anonymous_401:
            raise AuthRequired(f"{name}: anonymous, not public")
        raise RepoNotFound(f"{name}: missing or not readable by {user}")
    if write and not can_write(record, user):
        if user is None and anonymous_401:
            raise AuthRequired(f"{name}: anonymous push")
        raise Forbidden("you are not allowed to push to this repository")
    return record


def check_namespace(name: RepoName, user: str | None, admin: bool) -> str:
    """The owner of a repository about to be created by `user` (or an admin)."""
    if admin:
        return name.owner
    if user is None:
        raise AuthRequired("create needs a user")
    if name.owner != user:
        raise Forbidden(f"you may only create repositories under {user}/")
    return user


class FailedAuthLimit(Protocol):
    """The failed-authentication bucket of one client address (edge/limits.py)."""

    def check_auth_allowed(self, client_ip: str) -> None: ...

    def auth_failed(self, client_ip: str) -> None: ...


@contextmanager
def counting_failed_auth(
    limits: FailedAuthLimit, client_ip: str, authorization: bytes | None
) -> Iterator[None]:
    """Around one request: an address that failed too often is refused (429) before
    its credentials are checked, and credentials answered with 401 count as a failure.

    Only requests that offer credentials: git's first, anonymous request of a
    clone is answered 401 by design. Per address, not per user name: a bucket per
    claimed name would let anyone lock a user out, and tokens are not guessable.
    """
    if authorization is None:
        yield
        return
    limits.check_auth_allowed(client_ip)
    try:
        yield
    except AuthRequired:
        limits.auth_failed(client_ip)
        raise


@contextmanager
def routing_errors() -> Iterator[None]:
    """Cache outcomes in their wire form."""
    try:
        yield
    except errors.NotFound as exc:
        raise RepoNotFound(str(exc)) from None
    except errors.StoreUnavailable as exc:
        raise RoutingUnavailable(str(exc)) from None
    except errors.NoReplicaInSync as exc:
        raise NoReplicaInSync(str(exc)) from None
    except errors.ConsensusUnavailable as exc:
        raise ConsensusUnavailable(str(exc)) from None
    except errors.Unroutable as exc:
        raise NodeUnavailable(str(exc)) from None
