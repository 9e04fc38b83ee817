"""The node record's TLS pin: round trip, old records without it, malformed ones refused."""

from __future__ import annotations

import json

import pytest

from routing.model import NodeId, NodeRecord, Region, VolumeId, VolumeInfo
from routing.schema import SchemaError, decode_node, encode_node

PIN = "ab" * 32
VOLUMES = (VolumeInfo(VolumeId("v-0123456789abcdef"), 10),)


def test_pin_round_trips() -> None:
    node = NodeRecord(
        NodeId("lax-1"), Region("lax"), "https://10.0.0.7:9001", VOLUMES, tls_cert_sha256=PIN
    )
    assert decode_node(encode_node(node)) == node


def test_a_record_from_before_node_tls_decodes_without_a_pin() -> None:
    old = (
        b'{"http_url":"http://10.0.0.7:9001","node_id":"lax-1","region":"lax",'
        b'"volumes":[{"free_bytes":10,"volume_id":"v-0123456789abcdef"}]}'
    )
    node = decode_node(old)
    assert node.tls_cert_sha256 is None
    assert node == NodeRecord(NodeId("lax-1"), Region("lax"), "http://10.0.0.7:9001", VOLUMES)
    # ... and a plain node still encodes as it did, for edges that predate the field.
    assert encode_node(node) == old


@pytest.mark.parametrize(
    "pin", ["AB" * 32, "ab" * 31, "ab" * 33, "sha256:" + "ab" * 32, 7, "", "zz" * 32]
)
def test_a_malformed_pin_is_a_schema_error(pin: object) -> None:
    obj = json.loads(
        encode_node(NodeRecord(NodeId("lax-1"), Region("lax"), "https://h:1", VOLUMES))
    )
    obj["tls_cert_sha256"] = pin
    with pytest.raises(SchemaError, match="tls_cert_sha256"):
        decode_node(json.dumps(obj).encode())
