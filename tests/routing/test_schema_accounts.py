"""The schema's account records (users, SSH keys, tokens), repo access fields and
node SSH fields: round trips, records from before these fields existed, and
malformed values that must raise SchemaError rather than reach the cache."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from routing.model import (
    KeyRecord,
    NodeId,
    NodeRecord,
    Region,
    RepoName,
    RepoRecord,
    TokenRecord,
    UserRecord,
    VolumeId,
    VolumeInfo,
)
from routing.schema import (
    Keys,
    SchemaError,
    decode_key_record,
    decode_node,
    decode_repo,
    decode_token,
    decode_user,
    encode_key_record,
    encode_node,
    encode_repo,
    encode_token,
    encode_user,
)

USER = UserRecord("alice", 1700000000.5)
KEY = KeyRecord(
    "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
    "alice",
    "laptop",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@x",
    1700000001.0,
)
TOKEN = TokenRecord("0123456789ab", "alice", "ab" * 32, 1700000002.0)
SHARED_REPO = RepoRecord(
    RepoName("alice", "project"),
    VolumeId("vol-1"),
    Region("iad"),
    1700000000.25,
    owner="alice",
    public=True,
    readers=("rita", "ron"),
    writers=("walt",),
)
PLAIN_NODE = NodeRecord(
    NodeId("node-b"), Region("ord"), "http://10.0.0.2:8080", (VolumeInfo(VolumeId("v2"), 1),)
)


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _changed(raw: bytes, **change: Any) -> bytes:
    obj: dict[str, Any] = json.loads(raw)
    obj.update(change)
    return _json(obj)


def _without(raw: bytes, *fields: str) -> bytes:
    obj: dict[str, Any] = json.loads(raw)
    for field in fields:
        del obj[field]
    return _json(obj)


# -- keys ----------------------------------------------------------------------------


def test_account_keys() -> None:
    keys = Keys()
    assert keys.users == "/gitedge/users/"
    assert keys.keys == "/gitedge/keys/"
    assert keys.tokens == "/gitedge/tokens/"
    assert keys.user("alice") == "/gitedge/users/alice"
    assert keys.key(KEY.fingerprint) == "/gitedge/keys/" + KEY.fingerprint
    assert keys.token("0123456789ab") == "/gitedge/tokens/0123456789ab"


def test_account_keys_under_a_custom_prefix() -> None:
    keys = Keys("/x/y/")
    assert keys.user("bob") == "/x/y/users/bob"
    assert keys.key("SHA256:abc") == "/x/y/keys/SHA256:abc"
    assert keys.token("t") == "/x/y/tokens/t"


def test_all_key_families_are_disjoint() -> None:
    # The cache dispatches on prefix: one family must never be a prefix of another.
    keys = Keys()
    families = [keys.nodes, keys.volumes, keys.repos, keys.users, keys.keys, keys.tokens]
    assert len(set(families)) == len(families)
    for a in families:
        for b in families:
            assert a == b or not a.startswith(b)


# -- round trips -----------------------------------------------------------------------


def test_user_round_trip() -> None:
    assert decode_user(encode_user(USER)) == USER


def test_key_round_trip() -> None:
    assert decode_key_record(encode_key_record(KEY)) == KEY


def test_key_with_empty_title_round_trips() -> None:
    untitled = KeyRecord(KEY.fingerprint, "alice", "", KEY.public_key, 1.0)
    assert decode_key_record(encode_key_record(untitled)) == untitled


def test_token_round_trip() -> None:
    assert decode_token(encode_token(TOKEN)) == TOKEN


def test_token_record_stores_only_the_hash() -> None:
    assert json.loads(encode_token(TOKEN)) == {
        "token_id": "0123456789ab",
        "user": "alice",
        "secret_sha256": "ab" * 32,
        "created_at": 1700000002.0,
    }


@pytest.mark.parametrize(
    "record",
    [
        SHARED_REPO,
        RepoRecord(RepoName("a", "b"), VolumeId("v"), Region("iad"), 1.0),
        RepoRecord(RepoName("team", "b"), VolumeId("v"), Region("iad"), 1.0, owner="bob"),
        RepoRecord(RepoName("a", "b"), VolumeId("v"), Region("iad"), 1.0, writers=("w", "x")),
    ],
)
def test_repo_with_access_fields_round_trips(record: RepoRecord) -> None:
    assert decode_repo(encode_repo(record)) == record


def test_repo_access_fields_are_stored() -> None:
    obj = json.loads(encode_repo(SHARED_REPO))
    assert obj["owner"] == "alice"
    assert obj["public"] is True
    assert obj["readers"] == ["rita", "ron"]
    assert obj["writers"] == ["walt"]


def test_legacy_repo_record_decodes_private_to_the_names_owner() -> None:
    # As written before access control existed: no owner/public/readers/writers.
    legacy = b'{"created_at":1600000000.0,"name":"carol/old","region":"iad","volume_id":"vol-1"}'
    record = decode_repo(legacy)
    assert record == RepoRecord(RepoName("carol", "old"), VolumeId("vol-1"), Region("iad"), 1.6e9)
    assert record.owner == ""
    assert record.owner_user == "carol"
    assert record.public is False
    assert record.readers == ()
    assert record.writers == ()


def test_repo_owner_null_is_the_legacy_owner() -> None:
    assert decode_repo(_changed(encode_repo(SHARED_REPO), owner=None)).owner == ""


@pytest.mark.parametrize("public", ["true", 1, "yes", [True], {"x": True}, None])
def test_repo_public_must_be_literally_true(public: Any) -> None:
    # Anything but JSON `true` keeps a repository private: fail closed.
    assert decode_repo(_changed(encode_repo(SHARED_REPO), public=public)).public is False


def test_node_records_carry_no_ssh_fields() -> None:
    raw = encode_node(PLAIN_NODE)
    obj = json.loads(raw)
    assert "ssh_address" not in obj
    assert "ssh_host_key" not in obj
    assert decode_node(raw) == PLAIN_NODE


@pytest.mark.parametrize(
    "old_fields",
    [
        # What nodes that still ran an SSH listener published: ignored now.
        {
            "ssh_address": "10.0.0.1:2222",
            "ssh_host_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyHostKeyHostKeyHost",
        },
        {"ssh_address": "n:22"},
        {"ssh_address": None, "ssh_host_key": None},
        # Whatever their values: edges no longer read them.
        {"ssh_address": 2222},
        {"ssh_address": ["10.0.0.1", 2222]},
        {"ssh_host_key": {"type": "ssh-ed25519"}},
    ],
)
def test_old_node_records_with_ssh_fields_still_decode(old_fields: dict[str, Any]) -> None:
    assert decode_node(_changed(encode_node(PLAIN_NODE), **old_fields)) == PLAIN_NODE


# -- malformed -------------------------------------------------------------------------

Decoder = Callable[[bytes], object]


@pytest.mark.parametrize("decode", [decode_user, decode_key_record, decode_token])
@pytest.mark.parametrize("raw", [b"", b"not json", b"{", b"\xff", b"[]", b"null", b'"x"', b"7"])
def test_account_decoders_refuse_non_objects(decode: Decoder, raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode(raw)


@pytest.mark.parametrize(
    "raw",
    [
        _changed(encode_user(USER), name=""),
        _changed(encode_user(USER), name=None),
        _changed(encode_user(USER), name=["alice"]),
        _changed(encode_user(USER), created_at="1700000000"),
        _changed(encode_user(USER), created_at=True),
        _without(encode_user(USER), "name"),
        _without(encode_user(USER), "created_at"),
        b'{"name":"alice","created_at":NaN}',
        b'{"name":"alice","created_at":1e400}',
    ],
)
def test_malformed_user(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_user(raw)


@pytest.mark.parametrize(
    "raw",
    [
        _changed(encode_key_record(KEY), fingerprint=""),
        _changed(encode_key_record(KEY), fingerprint=5),
        _changed(encode_key_record(KEY), user=""),
        _changed(encode_key_record(KEY), user=None),
        _changed(encode_key_record(KEY), public_key=""),
        _changed(encode_key_record(KEY), created_at=None),
        _without(encode_key_record(KEY), "user"),
        _without(encode_key_record(KEY), "public_key"),
        _without(encode_key_record(KEY), "fingerprint"),
    ],
)
def test_malformed_key(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_key_record(raw)


def test_key_without_title_decodes_untitled() -> None:
    assert decode_key_record(_without(encode_key_record(KEY), "title")).title == ""
    assert decode_key_record(_changed(encode_key_record(KEY), title=None)).title == ""


@pytest.mark.parametrize(
    "raw",
    [
        _changed(encode_token(TOKEN), token_id=""),
        _changed(encode_token(TOKEN), user=7),
        _changed(encode_token(TOKEN), secret_sha256=""),
        _changed(encode_token(TOKEN), secret_sha256=None),
        _changed(encode_token(TOKEN), created_at="now"),
        _without(encode_token(TOKEN), "secret_sha256"),
        _without(encode_token(TOKEN), "user"),
        _without(encode_token(TOKEN), "token_id"),
    ],
)
def test_malformed_token(raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode_token(raw)


@pytest.mark.parametrize(
    "change",
    [
        {"readers": ["rita", 1]},
        {"readers": [None]},
        {"readers": [["rita"]]},
        {"readers": "rita"},
        {"readers": {"rita": True}},
        {"readers": None},
        {"writers": ["walt", 2.5]},
        {"writers": "walt"},
        {"writers": None},
        {"owner": 5},
        {"owner": ["alice"]},
        {"owner": True},
    ],
)
def test_malformed_repo_access_fields(change: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        decode_repo(_changed(encode_repo(SHARED_REPO), **change))
