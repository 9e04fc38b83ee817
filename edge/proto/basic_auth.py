"""HTTP Basic credentials (RFC 7617) and gitedge's personal token format. Pure."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "ge_"


@dataclass(frozen=True)
class BasicCredentials:
    user: str
    password: str


def parse_basic(header: bytes | None) -> BasicCredentials | None:
    """The credentials in an `Authorization: Basic ...` header; None if absent or not Basic.

    Raises ValueError for a Basic header that does not decode.
    """
    if header is None:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise ValueError("malformed Basic credentials")
    return BasicCredentials(user, password)


def parse_bearer(header: bytes | None) -> str | None:
    if header is None:
        return None
    scheme, _, value = header.strip().partition(b" ")
    if scheme.lower() != b"bearer" or not value.strip():
        return None
    return value.strip().decode("ascii", "replace")


@dataclass(frozen=True)
class NewToken:
    token: str  # shown to the user once
    token_id: str
    secret_sha256: str


def new_token() -> NewToken:
    """`ge_<id>_<secret>`: the id finds the record, the secret is stored only hashed.

    The secret has 256 bits of entropy, so a plain SHA-256 is enough (no slow KDF:
    there is nothing to brute-force).
    """
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return NewToken(f"{TOKEN_PREFIX}{token_id}_{secret}", token_id, hash_secret(secret))


def split_token(token: str) -> tuple[str, str] | None:
    """(token_id, secret) of a well-formed token, else None."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    token_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("_")
    if not sep or len(token_id) != 12 or token_id.strip("0123456789abcdef") or not secret:
        return None
    return token_id, secret


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()
