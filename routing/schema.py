"""The etcd schema: every key gitedge reads or writes, and its JSON value.

Layout under the configurable prefix (default `/gitedge/`):

    nodes/<node-id>         NodeRecord, under the node's lease (gone when it dies)
    volumes/<volume-id>     VolumeRecord, durable
    repos/<owner>/<name>    RepoRecord, created in a create-if-absent txn

Values are compact JSON objects. Decoders raise `SchemaError` on anything
malformed so one bad key cannot take the routing cache down.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from routing.model import (
    InvalidRegion,
    InvalidRepoName,
    NodeId,
    NodeRecord,
    RepoName,
    RepoRecord,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
    parse_region,
)

DEFAULT_PREFIX = "/gitedge/"


class SchemaError(ValueError):
    """A key or value in etcd that is not in gitedge's schema."""


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or not self.prefix.endswith("/"):
            raise ValueError("etcd prefix must start and end with '/'")

    @property
    def nodes(self) -> str:
        return self.prefix + "nodes/"

    @property
    def volumes(self) -> str:
        return self.prefix + "volumes/"

    @property
    def repos(self) -> str:
        return self.prefix + "repos/"

    def node(self, node_id: str) -> str:
        return self.nodes + node_id

    def volume(self, volume_id: str) -> str:
        return self.volumes + volume_id

    def repo(self, name: RepoName) -> str:
        return self.repos + name.path


def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def _load(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise SchemaError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise SchemaError("not a JSON object")
    return obj


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise SchemaError(f"field {key!r} must be a non-empty string")
    return value


def _num(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    # json accepts NaN and Infinity (and 1e400 overflows to it): not numbers here.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"field {key!r} must be a finite number")
    return value


def encode_node(node: NodeRecord) -> bytes:
    return _dump(
        {
            "node_id": node.node_id,
            "region": node.region,
            "http_url": node.http_url,
            "volumes": [
                {"volume_id": v.volume_id, "free_bytes": v.free_bytes} for v in node.volumes
            ],
        }
    )


def decode_node(raw: bytes) -> NodeRecord:
    obj = _load(raw)
    volumes = obj.get("volumes")
    if not isinstance(volumes, list):
        raise SchemaError("field 'volumes' must be a list")
    try:
        return NodeRecord(
            node_id=NodeId(_str(obj, "node_id")),
            region=parse_region(_str(obj, "region")),
            http_url=_str(obj, "http_url"),
            volumes=tuple(
                VolumeInfo(VolumeId(_str(v, "volume_id")), int(_num(v, "free_bytes")))
                for v in volumes
                if isinstance(v, dict)
            ),
        )
    except InvalidRegion as exc:
        raise SchemaError(str(exc)) from exc


def encode_volume(volume: VolumeRecord) -> bytes:
    return _dump(
        {"volume_id": volume.volume_id, "region": volume.region, "node_id": volume.node_id}
    )


def decode_volume(raw: bytes) -> VolumeRecord:
    obj = _load(raw)
    try:
        return VolumeRecord(
            volume_id=VolumeId(_str(obj, "volume_id")),
            region=parse_region(_str(obj, "region")),
            node_id=NodeId(_str(obj, "node_id")),
        )
    except InvalidRegion as exc:
        raise SchemaError(str(exc)) from exc


def encode_repo(repo: RepoRecord) -> bytes:
    return _dump(
        {
            "name": repo.name.path,
            "volume_id": repo.volume_id,
            "region": repo.region,
            "created_at": repo.created_at,
        }
    )


def decode_repo(raw: bytes) -> RepoRecord:
    obj = _load(raw)
    try:
        return RepoRecord(
            name=RepoName.parse(_str(obj, "name")),
            volume_id=VolumeId(_str(obj, "volume_id")),
            region=parse_region(_str(obj, "region")),
            created_at=_num(obj, "created_at"),
        )
    except (InvalidRegion, InvalidRepoName) as exc:
        raise SchemaError(str(exc)) from exc
