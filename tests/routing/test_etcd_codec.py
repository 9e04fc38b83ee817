"""The etcd JSON gateway codec, fed what etcd 3.4's gateway actually writes (captured by curl)."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path
from typing import Any

import pytest

from routing import etcd_codec as codec
from routing.etcd_codec import EtcdError, KeyValue, WatchBatch, WatchCompacted, WatchCreated

HEADER = {"cluster_id": "324952591200643719", "member_id": "3319814642761637952", "raft_term": "2"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def test_codec_imports_no_io_library() -> None:
    tree = ast.parse(Path(codec.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    }
    assert not imported & {"trio", "httpx", "asyncio", "anyio", "socket"}


@pytest.mark.parametrize(
    "value",
    [b"", b"plain", "héllo wörld ✓".encode(), bytes(range(256)), b"\x00\xff\x00"],
)
def test_bytes_round_trip(value: bytes) -> None:
    assert codec.decode_bytes(codec.encode_bytes(value)) == value


@pytest.mark.parametrize("key", ["/gitedge/repos/a/b", "/ключ/名前", "/k/\udcff\udc80"])
def test_key_round_trip_including_non_utf8_bytes(key: str) -> None:
    assert codec.decode_etcd_key(codec.encode_etcd_key(key)) == key


def test_non_utf8_key_from_etcd_is_kept_byte_exact() -> None:
    raw = b"/k/\xff\xfe"
    key = codec.decode_etcd_key(b64(raw))
    assert codec.key_bytes(key) == raw


def test_invalid_base64_is_an_etcd_error() -> None:
    with pytest.raises(EtcdError, match="base64"):
        codec.decode_bytes("not base64!")


@pytest.mark.parametrize(
    ("prefix", "end"),
    [
        (b"/gitedge/", b"/gitedge0"),
        (b"a", b"b"),
        (b"a\xff", b"b"),
        (b"a\xfe", b"a\xff"),
        (b"ab\xff\xff", b"ac"),
        (b"\xff", b"\x00"),
        (b"\xff\xff", b"\x00"),
        (b"", b"\x00"),
    ],
)
def test_prefix_range_end(prefix: bytes, end: bytes) -> None:
    assert codec.prefix_range_end(prefix) == end


def test_prefix_range_end_bounds_exactly_the_prefix() -> None:
    prefix = b"p\xff"
    end = codec.prefix_range_end(prefix)
    inside = [prefix, prefix + b"\x00", prefix + b"\xff\xff\xff"]
    outside = [b"p\xfe\xff", b"q", b"q\x00"]
    assert all(prefix <= key < end for key in inside)
    assert not any(prefix <= key < end for key in outside)


def test_range_request_for_prefix_has_range_end_and_string_ints() -> None:
    body = codec.range_request("/p/", prefix=True, limit=10, revision=7, start_key="/p/b\0")
    assert body == {
        "key": b64(b"/p/b\0"),
        "range_end": b64(b"/p0"),
        "limit": "10",
        "revision": "7",
    }
    assert codec.range_request("/k") == {"key": b64(b"/k")}


def test_txn_bodies() -> None:
    create = codec.create_txn("/k", b"v", lease=123)
    assert create["compare"] == [
        {"target": "CREATE", "result": "EQUAL", "key": b64(b"/k"), "create_revision": "0"}
    ]
    assert create["success"] == [
        {"request_put": {"key": b64(b"/k"), "value": b64(b"v"), "lease": "123"}}
    ]
    put = codec.put_if_unchanged_txn("/k", b"v", 42)
    assert put["compare"][0]["target"] == "MOD"
    assert put["compare"][0]["mod_revision"] == "42"
    delete = codec.delete_if_unchanged_txn("/k", 42)
    assert delete["success"] == [{"request_delete_range": {"key": b64(b"/k")}}]


def test_watch_create_request() -> None:
    assert codec.watch_create_request("/p/", 5) == {
        "create_request": {"key": b64(b"/p/"), "range_end": b64(b"/p0"), "start_revision": "5"}
    }


def test_decode_range_with_omitted_fields_and_string_int64() -> None:
    body = {
        "header": {**HEADER, "revision": "12"},
        "kvs": [
            {
                "key": b64(b"/p/a"),
                "create_revision": "2",
                "mod_revision": "9",
                "version": "3",
                "value": b64(b"\x00\xff"),
                "lease": "7587883123456789012",
            },
            # An empty value and no lease: both omitted by the gateway.
            {"key": b64(b"/p/b"), "create_revision": "4", "mod_revision": "4", "version": "1"},
        ],
        "more": True,
        "count": "2",
    }
    page = codec.decode_range(body)
    assert page.revision == 12
    assert page.more is True
    assert page.kvs == [
        KeyValue("/p/a", b"\x00\xff", 2, 9, 3, 7587883123456789012),
        KeyValue("/p/b", b"", 4, 4, 1, 0),
    ]


def test_decode_empty_range_has_no_kvs_field() -> None:
    page = codec.decode_range({"header": {**HEADER, "revision": "2"}})
    assert page.kvs == []
    assert page.more is False


def test_failed_txn_omits_succeeded() -> None:
    result = codec.decode_txn({"header": {**HEADER, "revision": "4"}})
    assert (result.succeeded, result.revision) == (False, 4)
    ok = codec.decode_txn({"header": {**HEADER, "revision": "5"}, "succeeded": True})
    assert (ok.succeeded, ok.revision) == (True, 5)


def test_delete_count_omitted_when_nothing_deleted() -> None:
    assert codec.decode_deleted({"header": {**HEADER, "revision": "3"}}) == 0
    assert codec.decode_deleted({"header": HEADER, "deleted": "2"}) == 2


def test_lease_answers() -> None:
    assert codec.decode_lease_grant(
        {"header": HEADER, "ID": "2324035528483189773", "TTL": "5"}
    ) == (2324035528483189773)
    alive = {"result": {"header": HEADER, "ID": "5", "TTL": "4"}}
    assert codec.decode_lease_keepalive(alive) == 4
    # An expired or unknown lease: the keepalive answer simply has no TTL.
    assert codec.decode_lease_keepalive({"result": {"header": HEADER, "ID": "123"}}) == 0


def test_wrong_types_are_etcd_errors() -> None:
    with pytest.raises(EtcdError, match="non-integer revision"):
        codec.decode_txn({"header": {"revision": "twelve"}})
    with pytest.raises(EtcdError, match="non-integer"):
        codec.decode_kv({"key": b64(b"k"), "version": True})
    with pytest.raises(EtcdError, match="kvs"):
        codec.decode_range({"kvs": "nope"})


def test_error_answer_carries_etcds_message_and_code() -> None:
    data = line(
        {
            "error": "etcdserver: mvcc: required revision has been compacted",
            "message": "etcdserver: mvcc: required revision has been compacted",
            "code": 11,
        }
    )
    with pytest.raises(EtcdError, match="required revision has been compacted") as info:
        codec.decode_response(400, data)
    assert info.value.grpc_code == 11
    assert codec.is_compacted(info.value)


def test_streaming_endpoint_refusal_nests_the_error() -> None:
    # Verbatim: /v3/watch on a member without a leader, before any message.
    data = line(
        {
            "error": {
                "grpc_code": 14,
                "http_code": 503,
                "message": "etcdserver: no leader",
                "http_status": "Service Unavailable",
            }
        }
    )
    with pytest.raises(EtcdError, match=r"HTTP 503: etcdserver: no leader$") as info:
        codec.decode_response(503, data)
    assert info.value.grpc_code == codec.GRPC_UNAVAILABLE


def test_error_answer_that_is_not_json() -> None:
    with pytest.raises(EtcdError, match=r"HTTP 405.*Method Not Allowed"):
        codec.decode_response(405, b"Method Not Allowed\n")


def test_ok_answer_that_is_not_an_object() -> None:
    with pytest.raises(EtcdError, match="not an object"):
        codec.decode_response(200, b"[1, 2]")
    with pytest.raises(EtcdError, match="invalid JSON"):
        codec.decode_response(200, b'{"header":')


def test_lease_not_found_is_recognised() -> None:
    data = line(
        {
            "error": "etcdserver: requested lease not found",
            "message": "etcdserver: requested lease not found",
            "code": 5,
        }
    )
    with pytest.raises(EtcdError) as info:
        codec.decode_response(404, data)
    assert codec.is_lease_not_found(info.value)
    assert not codec.is_compacted(info.value)


# --- watch stream ----------------------------------------------------------------

CREATED = line({"result": {"header": {**HEADER, "revision": "5"}, "created": True}})
PUT_THEN_DELETE = line(
    {
        "result": {
            "header": {**HEADER, "revision": "8"},
            "events": [
                {
                    "kv": {
                        "key": b64(b"/p/a"),
                        "create_revision": "6",
                        "mod_revision": "7",
                        "version": "2",
                        "value": b64(b"v2"),
                    }
                },
                {"type": "DELETE", "kv": {"key": b64(b"/p/a"), "mod_revision": "8"}},
            ],
        }
    }
)


def test_watch_created() -> None:
    assert codec.decode_watch_line(CREATED) == WatchCreated(5)


def test_watch_events_put_has_no_type_and_delete_has_no_value() -> None:
    message = codec.decode_watch_line(PUT_THEN_DELETE)
    assert isinstance(message, WatchBatch)
    assert message.revision == 8
    put, delete = message.events
    assert put.kind == "PUT"
    assert put.kv == KeyValue("/p/a", b"v2", 6, 7, 2, 0)
    assert delete.kind == "DELETE"
    assert delete.kv == KeyValue("/p/a", b"", 0, 8, 0, 0)


def test_watch_progress_notification_has_no_events() -> None:
    message = codec.decode_watch_line(line({"result": {"header": {**HEADER, "revision": "9"}}}))
    assert message == WatchBatch([], 9)


def test_watch_compacted_raises_with_the_compact_revision() -> None:
    # Verbatim from etcd 3.4: the header of a canceled watch has no revision.
    canceled = line({"result": {"header": HEADER, "canceled": True, "compact_revision": "3"}})
    with pytest.raises(WatchCompacted) as info:
        codec.decode_watch_line(canceled)
    assert info.value.compact_revision == 3


def test_watch_canceled_for_another_reason() -> None:
    canceled = line(
        {
            "result": {
                "header": HEADER,
                "canceled": True,
                "cancel_reason": "etcdserver: permission denied",
            }
        }
    )
    with pytest.raises(codec.EtcdStreamError, match="permission denied"):
        codec.decode_watch_line(canceled)


def test_watch_stream_error_object() -> None:
    error = line(
        {
            "error": {
                "grpc_code": 14,
                "http_code": 503,
                "message": "etcdserver: no leader",
                "http_status": "Service Unavailable",
            }
        }
    )
    with pytest.raises(codec.EtcdStreamError, match="no leader") as info:
        codec.decode_watch_line(error)
    assert info.value.grpc_code == 14


def test_watch_unknown_event_type_is_a_decoding_error_not_a_stream_error() -> None:
    bad = line({"result": {"header": HEADER, "events": [{"type": "EXPIRE", "kv": {}}]}})
    with pytest.raises(EtcdError, match="EXPIRE") as info:
        codec.decode_watch_line(bad)
    assert not isinstance(info.value, codec.EtcdStreamError)


# --- line splitting ----------------------------------------------------------------

STREAM = CREATED + b"\n" + PUT_THEN_DELETE + b"\n"


def test_lines_fed_whole() -> None:
    assert codec.LineSplitter(1024).feed(STREAM) == [CREATED, PUT_THEN_DELETE]


def test_lines_fed_byte_by_byte() -> None:
    splitter = codec.LineSplitter(1024)
    lines: list[bytes] = []
    for i in range(len(STREAM)):
        lines += splitter.feed(STREAM[i : i + 1])
    assert lines == [CREATED, PUT_THEN_DELETE]


def test_lines_with_trailing_partial_message_and_blank_lines() -> None:
    splitter = codec.LineSplitter(1024)
    assert splitter.feed(b"\n\r\n" + CREATED + b"\r\n" + PUT_THEN_DELETE[:10]) == [CREATED]
    assert splitter.feed(PUT_THEN_DELETE[10:] + b"\n") == [PUT_THEN_DELETE]


def test_overlong_line_is_refused_before_it_is_buffered() -> None:
    splitter = codec.LineSplitter(100)
    assert splitter.feed(b"x" * 100) == []
    with pytest.raises(EtcdError, match="longer than 100"):
        splitter.feed(b"x")


def test_overlong_complete_line_is_refused() -> None:
    with pytest.raises(EtcdError, match="longer than 100"):
        codec.LineSplitter(100).feed(b"y" * 101 + b"\n")
