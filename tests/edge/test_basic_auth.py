"""Authorization headers (RFC 7617 Basic, RFC 6750 Bearer) and the personal token format."""

from __future__ import annotations

import base64
import re

import pytest

from edge.proto.basic_auth import (
    TOKEN_PREFIX,
    BasicCredentials,
    hash_secret,
    new_token,
    parse_basic,
    parse_bearer,
    split_token,
)

TOKEN_FORMAT = re.compile(r"ge_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")


def basic(credentials: bytes, scheme: bytes = b"Basic") -> bytes:
    return scheme + b" " + base64.b64encode(credentials)


# -- parse_basic -------------------------------------------------------------------


def test_basic_user_and_password() -> None:
    assert parse_basic(basic(b"alice:s3cret")) == BasicCredentials("alice", "s3cret")


def test_basic_what_git_sends() -> None:
    # git's credential helper sends the token as the password.
    header = b"Basic YWxpY2U6Z2VfMDEyMzQ1Njc4OWFiX3NlY3JldA=="
    assert parse_basic(header) == BasicCredentials("alice", "ge_0123456789ab_secret")


def test_basic_password_may_contain_colons() -> None:
    # RFC 7617 section 2: the user-id ends at the first colon; the password may hold more.
    assert parse_basic(basic(b"alice:a:b::c:")) == BasicCredentials("alice", "a:b::c:")


def test_basic_empty_password_is_kept() -> None:
    assert parse_basic(basic(b"alice:")) == BasicCredentials("alice", "")


def test_basic_utf8_credentials() -> None:
    header = basic("j\u00f6rg:p\u00e4ss".encode())
    assert parse_basic(header) == BasicCredentials("j\u00f6rg", "p\u00e4ss")


@pytest.mark.parametrize("scheme", [b"Basic", b"basic", b"BASIC", b"bAsIc"])
def test_basic_scheme_is_case_insensitive(scheme: bytes) -> None:
    # RFC 7235 section 2.1: auth-scheme is case-insensitive.
    assert parse_basic(basic(b"alice:pw", scheme)) == BasicCredentials("alice", "pw")


def test_basic_surrounding_whitespace_is_ignored() -> None:
    header = b"  Basic   " + base64.b64encode(b"alice:pw") + b"  "
    assert parse_basic(header) == BasicCredentials("alice", "pw")


@pytest.mark.parametrize(
    "header",
    [
        None,
        b"",
        b"Bearer " + base64.b64encode(b"alice:pw"),
        b"Digest username=alice",
        b"Negotiate abc",
        b"Basicx " + base64.b64encode(b"alice:pw"),
        b"Basic:" + base64.b64encode(b"alice:pw"),
    ],
)
def test_other_schemes_are_not_basic(header: bytes | None) -> None:
    assert parse_basic(header) is None


@pytest.mark.parametrize(
    "header",
    [
        basic(b":pw"),  # empty user
        basic(b":"),
        basic(b"alicepw"),  # no colon
        basic(b""),
        b"Basic",
        b"Basic !!!!",
        b"Basic YWxpY2U6cHc",  # missing padding
        b"Basic YWxp Y2U6cHc=",  # embedded space
        b"Basic YWxpY2U6cHc=garbage",
        b"Basic " + base64.urlsafe_b64encode(b"alice:\xfb\xff"),  # wrong alphabet
        basic(b"alice:\xff\xfe"),  # not UTF-8
        basic(b"\xc3(:pw"),
    ],
)
def test_malformed_basic_raises(header: bytes) -> None:
    with pytest.raises(ValueError, match="malformed Basic credentials"):
        parse_basic(header)


def test_every_truncation_of_basic_credentials_is_refused_or_shorter() -> None:
    # Cut anywhere, a header never yields the full credentials it was cut from.
    header = basic(b"alice:s3cret-token")
    full = BasicCredentials("alice", "s3cret-token")
    for cut in range(len(header)):
        try:
            parsed = parse_basic(header[:cut])
        except ValueError:
            continue
        assert parsed != full


# -- parse_bearer ------------------------------------------------------------------


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
def test_bearer_token(scheme: bytes) -> None:
    assert parse_bearer(scheme + b" abc.def-123") == "abc.def-123"


def test_bearer_whitespace_is_stripped() -> None:
    assert parse_bearer(b"  Bearer    tok  ") == "tok"


@pytest.mark.parametrize(
    "header",
    [None, b"", b"Bearer", b"Bearer ", b"Bearer    ", b"Basic dG9r", b"Bearerx tok", b"tok"],
)
def test_no_bearer_token(header: bytes | None) -> None:
    assert parse_bearer(header) is None


def test_bearer_non_ascii_is_replaced_not_raised() -> None:
    assert parse_bearer(b"Bearer t\xffk") == "t\ufffdk"


# -- personal tokens -----------------------------------------------------------------


def test_new_token_format() -> None:
    token = new_token()
    match = TOKEN_FORMAT.fullmatch(token.token)
    assert match is not None, token.token
    assert token.token.startswith(TOKEN_PREFIX)
    assert match.group(1) == token.token_id
    assert token.secret_sha256 == hash_secret(match.group(2))


def test_new_token_splits_back_to_its_id_and_secret() -> None:
    # token_urlsafe secrets may contain `_`: the id (hex) never does, so the split
    # is at the first `_` after the prefix. Try enough tokens to hit such secrets.
    tokens = [new_token() for _ in range(200)]
    assert any("_" in t.token[len(TOKEN_PREFIX) + 13 :] for t in tokens)
    for token in tokens:
        parts = split_token(token.token)
        assert parts is not None, token.token
        token_id, secret = parts
        assert token_id == token.token_id
        assert hash_secret(secret) == token.secret_sha256


def test_new_tokens_differ() -> None:
    a, b = new_token(), new_token()
    assert a.token != b.token
    assert a.token_id != b.token_id
    assert a.secret_sha256 != b.secret_sha256


def test_token_does_not_contain_its_hash() -> None:
    token = new_token()
    assert token.secret_sha256 not in token.token


def test_split_token() -> None:
    assert split_token("ge_0123456789ab_s3cret") == ("0123456789ab", "s3cret")
    assert split_token("ge_0123456789ab_s3_cr_et") == ("0123456789ab", "s3_cr_et")
    assert split_token("ge_0123456789ab__") == ("0123456789ab", "_")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ge_",
        "ge__",
        "ge_0123456789ab",  # no secret part
        "ge_0123456789ab_",  # empty secret
        "ge_0123456789a_secret",  # id one short
        "ge_0123456789abc_secret",  # id one long
        "ge_0123456789absecret",  # no separator
        "GE_0123456789ab_secret",
        "gx_0123456789ab_secret",
        "0123456789ab_secret",
        "_ge_0123456789ab_secret",
        " ge_0123456789ab_secret",
        "ghp_0123456789ab_secret",
    ],
)
def test_split_malformed_token(token: str) -> None:
    assert split_token(token) is None


def test_hash_secret_is_sha256_hex() -> None:
    # Known answer: SHA-256("abc") from FIPS 180-2, appendix B.1.
    assert hash_secret("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert hash_secret("abc") != hash_secret("abd")
    assert re.fullmatch(r"[0-9a-f]{64}", hash_secret("\u00e4"))
