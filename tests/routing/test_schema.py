"""The etcd schema: keys, and JSON values that round-trip or raise SchemaError."""

from __future__ import annotations

import json
from typing import Any

import pytest

from routing.model import (
    NodeId,
    NodeRecord,
    Region,
    RepoName,
    RepoRecord,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
)
from routing.schema import (
    DEFAULT_PREFIX,
    Keys,
    SchemaError,
    decode_node,
    decode_repo,
    decode_volume,
    encode_node,
    encode_repo,
    encode_volume,
)

NODE = NodeRecord(
    NodeId("node-a"),
    Region("iad"),
    "http://10.0.0.1:8080",
    (VolumeInfo(VolumeId("vol-1"), 123), VolumeInfo(VolumeId("vol-2"), 2**40)),
)
VOLUME = VolumeRecord(VolumeId("vol-1"), Region("iad"), NodeId("node-a"))
REPO = RepoRecord(RepoName("alice", "project"), VolumeId("vol-1"), Region("iad"), 1700000000.25)


def _json(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _node_obj(**change: Any) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(encode_node(NODE))
    obj.update(change)
    return obj


def _volume_obj(**change: Any) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(encode_volume(VOLUME))
    obj.update(change)
    return obj


def _repo_obj(**change: Any) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(encode_repo(REPO))
    obj.update(change)
    return obj


# -- keys ------------------------------------------------------------------------


def test_default_keys() -> None:
    keys = Keys()
    assert keys.prefix == DEFAULT_PREFIX == "/gitedge/"
    assert keys.nodes == "/gitedge/nodes/"
    assert keys.volumes == "/gitedge/volumes/"
    assert keys.repos == "/gitedge/repos/"
    assert keys.node("node-a") == "/gitedge/nodes/node-a"
    assert keys.volume("vol-1") == "/gitedge/volumes/vol-1"
    assert keys.repo(RepoName.parse("alice/project.git")) == "/gitedge/repos/alice/project"


def test_custom_prefix() -> None:
    keys = Keys("/x/y/")
    assert keys.repo(RepoName("a", "b")) == "/x/y/repos/a/b"
    assert keys.node("n") == "/x/y/nodes/n"


def test_key_families_do_not_overlap() -> None:
    keys = Keys()
    families = [keys.nodes, keys.volumes, keys.repos]
    for a in families:
        for b in families:
            assert a == b or not a.startswith(b)


@pytest.mark.parametrize("prefix", ["", "gitedge/", "/gitedge", "gitedge", "x"])
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Keys(prefix)


def test_root_prefix_is_allowed() -> None:
    assert Keys("/").repos == "/repos/"


# -- round trips -----------------------------------------------------------------


def test_node_round_trip() -> None:
    assert decode_node(encode_node(NODE)) == NODE


def test_node_without_volumes_round_trips() -> None:
    empty = NodeRecord(NodeId("n"), Region("ord"), "http://n", ())
    assert decode_node(encode_node(empty)) == empty


def test_volume_round_trip() -> None:
    assert decode_volume(encode_volume(VOLUME)) == VOLUME


def test_repo_round_trip() -> None:
    assert decode_repo(encode_repo(REPO)) == REPO


def test_repo_created_at_may_be_an_integer() -> None:
    record = decode_repo(_json(_repo_obj(created_at=1700000000)))
    assert record.created_at == 1700000000


def test_encoding_is_compact_sorted_json() -> None:
    raw = encode_volume(VOLUME)
    assert raw == b'{"node_id":"node-a","region":"iad","volume_id":"vol-1"}'
    assert encode_repo(REPO) == encode_repo(decode_repo(encode_repo(REPO)))


def test_repo_name_is_stored_without_git_suffix() -> None:
    assert json.loads(encode_repo(REPO))["name"] == "alice/project"


def test_decoders_ignore_unknown_fields() -> None:
    # A newer gitedge may add fields; an older edge must still route.
    assert decode_node(_json(_node_obj(extra=1))) == NODE
    assert decode_volume(_json(_volume_obj(extra=[1]))) == VOLUME
    assert decode_repo(_json(_repo_obj(extra=None))) == REPO


def test_decode_repo_accepts_a_git_suffix_in_the_stored_name() -> None:
    assert decode_repo(_json(_repo_obj(name="alice/project.git"))).name == REPO.name


def test_free_bytes_is_kept_as_an_integer() -> None:
    obj = _node_obj(volumes=[{"volume_id": "v", "free_bytes": 12.9}])
    (info,) = decode_node(_json(obj)).volumes
    assert info.free_bytes == 12
    assert isinstance(info.free_bytes, int)


# -- malformed values ------------------------------------------------------------


@pytest.mark.parametrize("decode", [decode_node, decode_volume, decode_repo])
@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"{", b"\xff\xfe", b"[]", b"null", b"42", b'"str"', b"[{}]"],
)
def test_not_a_json_object(decode: Any, raw: bytes) -> None:
    with pytest.raises(SchemaError):
        decode(raw)


@pytest.mark.parametrize(
    "obj",
    [
        _node_obj(node_id=None),
        _node_obj(node_id=""),
        _node_obj(node_id=5),
        _node_obj(region="IAD"),
        _node_obj(region=""),
        _node_obj(region=1),
        _node_obj(http_url=None),
        _node_obj(http_url=["http://x"]),
        _node_obj(volumes=None),
        _node_obj(volumes={"volume_id": "v", "free_bytes": 1}),
        _node_obj(volumes="v"),
        _node_obj(volumes=[{"volume_id": "", "free_bytes": 1}]),
        _node_obj(volumes=[{"volume_id": "v", "free_bytes": "1"}]),
        _node_obj(volumes=[{"volume_id": "v", "free_bytes": True}]),
        _node_obj(volumes=[{"volume_id": "v"}]),
        {k: v for k, v in _node_obj().items() if k != "volumes"},
    ],
)
def test_malformed_node(obj: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        decode_node(_json(obj))


def test_node_volume_entries_that_are_not_objects_are_skipped() -> None:
    obj = _node_obj(volumes=["junk", 3, {"volume_id": "v", "free_bytes": 1}])
    assert decode_node(_json(obj)).volumes == (VolumeInfo(VolumeId("v"), 1),)


@pytest.mark.parametrize(
    "obj",
    [
        _volume_obj(volume_id=None),
        _volume_obj(volume_id=""),
        _volume_obj(volume_id=7),
        _volume_obj(region="not a region"),
        _volume_obj(region=None),
        _volume_obj(node_id=False),
        _volume_obj(node_id=""),
        {"volume_id": "v", "region": "iad"},
    ],
)
def test_malformed_volume(obj: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        decode_volume(_json(obj))


@pytest.mark.parametrize(
    "obj",
    [
        _repo_obj(name="../etc"),
        _repo_obj(name="-x/y"),
        _repo_obj(name="a/b/c"),
        _repo_obj(name="ålice/x"),
        _repo_obj(name=""),
        _repo_obj(name=None),
        _repo_obj(name=["alice", "project"]),
        _repo_obj(volume_id=""),
        _repo_obj(volume_id=1),
        _repo_obj(region="Iad"),
        _repo_obj(region=None),
        _repo_obj(created_at="2024-01-01"),
        _repo_obj(created_at=True),
        _repo_obj(created_at=None),
        {k: v for k, v in _repo_obj().items() if k != "created_at"},
    ],
)
def test_malformed_repo(obj: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        decode_repo(_json(obj))


# Python's json module accepts NaN, Infinity and -Infinity, and 1e400 overflows
# to infinity; none of them is a byte count.
_NODE_WITH_FREE = (
    b'{"node_id":"n","region":"iad","http_url":"http://n",'
    b'"volumes":[{"volume_id":"v","free_bytes":%s}]}'
)


@pytest.mark.parametrize("free", [b"NaN", b"-Infinity", b"1e400"])
def test_free_bytes_that_is_not_a_finite_number_is_a_schema_error(free: bytes) -> None:
    # The cache catches SchemaError only: anything else escapes reset()/apply().
    with pytest.raises(SchemaError):
        decode_node(_NODE_WITH_FREE % free)


@pytest.mark.parametrize("decode", [decode_node, decode_volume, decode_repo])
def test_deeply_nested_json_is_a_schema_error(decode: Any) -> None:
    # json.loads raises RecursionError here, which is not a JSONDecodeError.
    with pytest.raises(SchemaError):
        decode(b"[" * 100_000)


def test_schema_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        decode_repo(b"nope")
