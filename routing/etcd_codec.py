"""Sans-IO codec for etcd's v3 JSON gateway (the grpc-gateway in front of etcd's gRPC API).

Builds request bodies and decodes answers; `routing.etcd` does the HTTP. No I/O
imports here, so every quirk of the wire format is unit-testable.

Wire format, as etcd 3.4 writes it (proto3 JSON via grpc-gateway):

- `bytes` fields (keys, values, range_end) are base64.
- int64 fields (revisions, versions, lease ids, counts) are JSON *strings*.
- Fields at their zero value are omitted: a PUT event has no "type", a failed
  txn has no "succeeded", a deleted key has no "value", a keepalive for an
  unknown lease has no "TTL".
- Streaming endpoints (`/v3/watch`, `/v3/lease/keepalive`) wrap each message in
  `{"result": ...}`, one JSON object per line; a stream error is
  `{"error": {...}}` on a line of its own.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

# Keys are text in gitedge, but etcd keys are bytes: surrogateescape lets a key
# that is not UTF-8 (written by someone else) round-trip instead of breaking a list.
_KEY_ERRORS = "surrogateescape"

# gRPC status codes etcd returns that callers act on.
GRPC_OUT_OF_RANGE = 11
GRPC_NOT_FOUND = 5
GRPC_UNAVAILABLE = 14  # no leader, leader changed, request timed out
GRPC_INVALID_ARGUMENT = 3  # also: wrong password, no user name on an auth-enabled etcd
GRPC_FAILED_PRECONDITION = 9  # also: authentication is not enabled
GRPC_PERMISSION_DENIED = 7
GRPC_UNAUTHENTICATED = 16  # an expired or unknown auth token
_GRPC_NAMES = {
    "InvalidArgument": GRPC_INVALID_ARGUMENT,
    "NotFound": GRPC_NOT_FOUND,
    "PermissionDenied": GRPC_PERMISSION_DENIED,
    "FailedPrecondition": GRPC_FAILED_PRECONDITION,
    "OutOfRange": GRPC_OUT_OF_RANGE,
    "Unavailable": GRPC_UNAVAILABLE,
    "Unauthenticated": GRPC_UNAUTHENTICATED,
}
ERR_NO_LEADER = "etcdserver: no leader"
ERR_INVALID_TOKEN = "invalid auth token"
ERR_USER_EMPTY = "user name is empty"
ERR_AUTH_NOT_ENABLED = "authentication is not enabled"
ERR_COMPACTED = "mvcc: required revision has been compacted"
ERR_LEASE_NOT_FOUND = "requested lease not found"


class EtcdError(Exception):
    """etcd answered with an error, or with something this client does not understand."""

    def __init__(self, message: str, *, grpc_code: int | None = None) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


class EtcdStreamError(EtcdError):
    """etcd ended a stream (watch, keepalive) with an error or a cancel: the stream is
    over, but the same request may well work again later."""


class WatchCompacted(EtcdError):
    """The watch's start revision is older than etcd's compaction: relist, then watch again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"watch start revision is compacted (compacted up to {compact_revision})")
        self.compact_revision = compact_revision


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True)
class RangeResult:
    kvs: list[KeyValue]
    revision: int  # the header revision: the store as of which `kvs` is complete


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["PUT", "DELETE"]
    kv: KeyValue  # for DELETE: value == b"" and mod_revision is the delete's revision


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int


@dataclass(frozen=True)
class RangePage:
    """One page of a paginated range: `more` says etcd has keys past the last one."""

    kvs: list[KeyValue]
    revision: int
    more: bool


@dataclass(frozen=True)
class WatchCreated:
    revision: int  # the store revision when the watch was registered


@dataclass(frozen=True)
class WatchBatch:
    events: list[WatchEvent]  # empty for a progress notification
    revision: int


WatchMessage = WatchCreated | WatchBatch


# --- bytes and keys -------------------------------------------------------------


def encode_bytes(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise EtcdError(f"etcd sent invalid base64: {text[:40]!r}") from exc


def key_bytes(key: str) -> bytes:
    return key.encode("utf-8", _KEY_ERRORS)


def encode_etcd_key(key: str) -> str:
    return encode_bytes(key_bytes(key))


def decode_etcd_key(text: str) -> str:
    return decode_bytes(text).decode("utf-8", _KEY_ERRORS)


def prefix_range_end(prefix: bytes) -> bytes:
    """The exclusive end of the range holding every key that starts with `prefix`.

    The prefix with its last byte incremented; trailing 0xff bytes cannot be
    incremented, so they are dropped first (as clientv3's GetPrefixRangeEnd does).
    An empty or all-0xff prefix has no upper bound: etcd spells that `"\\0"`.
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b"\x00"
    return stripped[:-1] + bytes([stripped[-1] + 1])


def _key_range(key: str, prefix: bool) -> dict[str, str]:
    raw = key_bytes(key)
    body = {"key": encode_bytes(raw)}
    if prefix:
        body["range_end"] = encode_bytes(prefix_range_end(raw))
    return body


# --- request bodies ------------------------------------------------------------
# int64 fields are sent as strings, the canonical proto3 JSON form, so lease ids
# above 2**53 survive any JSON library on the way.


def range_request(
    key: str,
    *,
    prefix: bool = False,
    limit: int = 0,
    revision: int = 0,
    count_only: bool = False,
    start_key: str | None = None,
) -> dict[str, Any]:
    """A RangeRequest; `start_key` resumes a prefix range after a page (same range_end)."""
    body: dict[str, Any] = _key_range(key, prefix)
    if start_key is not None:
        body["key"] = encode_etcd_key(start_key)
    if limit:
        body["limit"] = str(limit)
    if revision:
        body["revision"] = str(revision)
    if count_only:
        body["count_only"] = True
    return body


def put_request(key: str, value: bytes, *, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": encode_etcd_key(key), "value": encode_bytes(value)}
    if lease:
        body["lease"] = str(lease)
    return body


def delete_request(key: str, *, prefix: bool = False) -> dict[str, Any]:
    return dict(_key_range(key, prefix))


def create_txn(key: str, value: bytes, *, lease: int = 0) -> dict[str, Any]:
    """Put only if the key does not exist (its create revision is 0)."""
    return _txn(compare_absent(key), {"request_put": put_request(key, value, lease=lease)})


def put_if_unchanged_txn(
    key: str, value: bytes, mod_revision: int, *, lease: int = 0
) -> dict[str, Any]:
    return _txn(
        _mod_equals(key, mod_revision), {"request_put": put_request(key, value, lease=lease)}
    )


def delete_if_unchanged_txn(key: str, mod_revision: int) -> dict[str, Any]:
    return _txn(_mod_equals(key, mod_revision), {"request_delete_range": delete_request(key)})


def _mod_equals(key: str, mod_revision: int) -> dict[str, Any]:
    return {
        "target": "MOD",
        "result": "EQUAL",
        "key": encode_etcd_key(key),
        "mod_revision": str(mod_revision),
    }


def _txn(compare: dict[str, Any], success: dict[str, Any]) -> dict[str, Any]:
    return {"compare": [compare], "success": [success], "failure": []}


# --- general transactions (several compares, several ops) -----------------------
# etcd applies all `success` ops atomically when every compare holds; its default
# limit is 128 ops per txn (--max-txn-ops), which callers keep far below.


def compare_mod_revision(key: str, mod_revision: int) -> dict[str, Any]:
    """Holds while `key` was last written at `mod_revision` (0: the key is absent)."""
    return _mod_equals(key, mod_revision)


def compare_absent(key: str) -> dict[str, Any]:
    """Holds while `key` does not exist (its create revision is 0)."""
    return {
        "target": "CREATE",
        "result": "EQUAL",
        "key": encode_etcd_key(key),
        "create_revision": "0",
    }


def compare_value(key: str, value: bytes) -> dict[str, Any]:
    """Holds while `key` exists with exactly this value."""
    return {
        "target": "VALUE",
        "result": "EQUAL",
        "key": encode_etcd_key(key),
        "value": encode_bytes(value),
    }


def put_op(key: str, value: bytes) -> dict[str, Any]:
    return {"request_put": put_request(key, value)}


def compare_exists(key: str) -> dict[str, Any]:
    """Holds while `key` exists (its create revision is above 0)."""
    return {
        "target": "CREATE",
        "result": "GREATER",
        "key": encode_etcd_key(key),
        "create_revision": "0",
    }


def delete_range_op(key: str, range_end: str) -> dict[str, Any]:
    """Delete every key in [key, range_end)."""
    body = {"key": encode_etcd_key(key), "range_end": encode_etcd_key(range_end)}
    return {"request_delete_range": body}


def delete_op(key: str, *, prefix: bool = False) -> dict[str, Any]:
    return {"request_delete_range": delete_request(key, prefix=prefix)}


def txn_request(compares: list[dict[str, Any]], success: list[dict[str, Any]]) -> dict[str, Any]:
    return {"compare": compares, "success": success, "failure": []}


def compaction_request(revision: int) -> dict[str, Any]:
    return {"revision": str(revision)}


def lease_grant_request(ttl: int) -> dict[str, Any]:
    return {"TTL": str(ttl)}


def lease_id_request(lease_id: int) -> dict[str, Any]:
    """Body of keepalive and revoke (the proto field is spelled `ID`)."""
    return {"ID": str(lease_id)}


def watch_create_request(prefix: str, start_revision: int) -> dict[str, Any]:
    return {"create_request": {**_key_range(prefix, True), "start_revision": str(start_revision)}}


# --- field decoding ------------------------------------------------------------


def _int(obj: dict[str, Any], name: str) -> int:
    """An int64 field: a JSON string (or a number from a lenient encoder); absent means 0."""
    raw = obj.get(name, 0)
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise EtcdError(f"etcd sent a non-integer {name}: {raw!r}")
    try:
        return int(raw)
    except ValueError as exc:
        raise EtcdError(f"etcd sent a non-integer {name}: {raw!r}") from exc


def _bool(obj: dict[str, Any], name: str) -> bool:
    raw = obj.get(name, False)
    if not isinstance(raw, bool):
        raise EtcdError(f"etcd sent a non-boolean {name}: {raw!r}")
    return raw


def _obj(obj: dict[str, Any], name: str) -> dict[str, Any]:
    raw = obj.get(name, {})
    if not isinstance(raw, dict):
        raise EtcdError(f"etcd sent a non-object {name}: {raw!r}")
    return raw


def _list(obj: dict[str, Any], name: str) -> list[dict[str, Any]]:
    raw = obj.get(name, [])
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise EtcdError(f"etcd sent a malformed {name} list")
    return raw


def _str(obj: dict[str, Any], name: str) -> str:
    raw = obj.get(name, "")
    if not isinstance(raw, str):
        raise EtcdError(f"etcd sent a non-string {name}: {raw!r}")
    return raw


def header_revision(body: dict[str, Any]) -> int:
    return _int(_obj(body, "header"), "revision")


def decode_kv(obj: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=decode_etcd_key(_str(obj, "key")),
        value=decode_bytes(_str(obj, "value")),
        create_revision=_int(obj, "create_revision"),
        mod_revision=_int(obj, "mod_revision"),
        version=_int(obj, "version"),
        lease=_int(obj, "lease"),
    )


def decode_range(body: dict[str, Any]) -> RangePage:
    return RangePage(
        kvs=[decode_kv(kv) for kv in _list(body, "kvs")],
        revision=header_revision(body),
        more=_bool(body, "more"),
    )


def decode_count(body: dict[str, Any]) -> int:
    return _int(body, "count")


def decode_deleted(body: dict[str, Any]) -> int:
    return _int(body, "deleted")


def decode_txn(body: dict[str, Any]) -> TxnResult:
    return TxnResult(succeeded=_bool(body, "succeeded"), revision=header_revision(body))


def decode_lease_grant(body: dict[str, Any]) -> int:
    if body.get("error"):
        raise EtcdError(f"lease grant failed: {body['error']}")
    lease_id = _int(body, "ID")
    if lease_id <= 0:
        raise EtcdError("etcd granted no lease id")
    return lease_id


def decode_lease_keepalive(body: dict[str, Any]) -> int:
    """Remaining TTL; etcd omits TTL (so 0) when the lease has expired or never existed."""
    return _int(_stream_result(body), "TTL")


def _stream_result(body: dict[str, Any]) -> dict[str, Any]:
    """Unwrap one message of a streaming endpoint, raising a stream error."""
    if "error" in body:
        error = body["error"]
        if isinstance(error, dict):
            code = error.get("grpc_code", error.get("code"))
            raise EtcdStreamError(
                f"etcd stream error: {error.get('message', error)}",
                grpc_code=code if isinstance(code, int) else None,
            )
        raise EtcdStreamError(f"etcd stream error: {error}")
    if "result" not in body:
        raise EtcdError("etcd stream message has no result")
    return _obj(body, "result")


# --- whole answers -------------------------------------------------------------


def parse_json_object(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EtcdError(f"etcd sent invalid JSON: {data[:80]!r}") from exc
    if not isinstance(obj, dict):
        raise EtcdError(f"etcd sent JSON that is not an object: {data[:80]!r}")
    return obj


def decode_response(status: int, data: bytes) -> dict[str, Any]:
    """The JSON object of a 2xx answer; otherwise raise EtcdError with etcd's message."""
    if 200 <= status < 300:
        return parse_json_object(data)
    try:
        body = parse_json_object(data)
    except EtcdError:
        raise EtcdError(f"etcd answered HTTP {status}: {data[:200]!r}") from None
    error = body.get("error")
    if isinstance(error, dict):
        # A streaming endpoint refusing before its first message nests the error.
        message, code = error.get("message") or error, error.get("grpc_code")
    else:
        message, code = body.get("message") or error or f"HTTP {status}", body.get("code")
    raise EtcdError(
        f"etcd answered HTTP {status}: {message}",
        grpc_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
    )


def authenticate_request(name: str, password: str) -> dict[str, Any]:
    return {"name": name, "password": password}


def decode_authenticate(body: dict[str, Any]) -> str:
    """The token of a `/v3/auth/authenticate` answer."""
    token = body.get("token")
    if not isinstance(token, str) or not token:
        raise EtcdError("etcd authenticate answer has no token")
    return token


def is_token_rejected(error: EtcdError) -> bool:
    """etcd wants a (new) token: ours expired or was dropped, or we sent none."""
    return (error.grpc_code == GRPC_UNAUTHENTICATED and ERR_INVALID_TOKEN in str(error)) or (
        error.grpc_code == GRPC_INVALID_ARGUMENT and ERR_USER_EMPTY in str(error)
    )


def is_auth_not_enabled(error: EtcdError) -> bool:
    return error.grpc_code == GRPC_FAILED_PRECONDITION and ERR_AUTH_NOT_ENABLED in str(error)


def is_permission_denied(error: EtcdError) -> bool:
    return error.grpc_code == GRPC_PERMISSION_DENIED


def grpc_code_in(reason: str) -> int | None:
    """The code of a watch's `cancel_reason` ("rpc error: code = Unauthenticated desc = ...")."""
    _, found, rest = reason.partition("code = ")
    return _GRPC_NAMES.get(rest.split(" ", 1)[0]) if found else None


def is_compacted(error: EtcdError) -> bool:
    return error.grpc_code == GRPC_OUT_OF_RANGE and ERR_COMPACTED in str(error)


def is_lease_not_found(error: EtcdError) -> bool:
    return error.grpc_code == GRPC_NOT_FOUND and ERR_LEASE_NOT_FOUND in str(error)


# --- the watch stream ----------------------------------------------------------


class LineSplitter:
    """Split a byte stream into lines without holding more than `max_line` bytes.

    The gateway writes one JSON message per line; a line longer than `max_line`
    means a broken or hostile peer, not a message worth buffering.
    """

    def __init__(self, max_line: int) -> None:
        self._max_line = max_line
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Complete lines (without the newline, blank ones dropped) found so far."""
        scan_from = len(self._buffer)
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while (end := self._buffer.find(b"\n", max(start, scan_from))) != -1:
            if end - start > self._max_line:
                raise EtcdError(f"etcd sent a line longer than {self._max_line} bytes")
            line = bytes(self._buffer[start:end]).strip()
            if line:
                lines.append(line)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self._max_line:
            raise EtcdError(f"etcd sent a line longer than {self._max_line} bytes")
        return lines

    def close(self) -> None:
        """End of stream: a partial line left over means the stream was cut mid-message."""
        if self._buffer.strip():
            raise EtcdError("etcd stream ended in the middle of a message")


def decode_watch_event(obj: dict[str, Any]) -> WatchEvent:
    kind = _str(obj, "type") or "PUT"  # PUT is enum value 0, so the gateway omits it
    if kind not in ("PUT", "DELETE"):
        raise EtcdError(f"etcd sent an unknown watch event type {kind!r}")
    return WatchEvent(kind="PUT" if kind == "PUT" else "DELETE", kv=decode_kv(_obj(obj, "kv")))


def decode_watch_line(line: bytes) -> WatchMessage:
    """One line of `POST /v3/watch`; a canceled watch raises (it is the stream's last word)."""
    result = _stream_result(parse_json_object(line))
    if _bool(result, "canceled"):
        compact_revision = _int(result, "compact_revision")
        if compact_revision:
            raise WatchCompacted(compact_revision)
        reason = _str(result, "cancel_reason") or "no reason given"
        raise EtcdStreamError(f"etcd canceled the watch: {reason}", grpc_code=grpc_code_in(reason))
    revision = header_revision(result)
    if _bool(result, "created"):
        return WatchCreated(revision)
    return WatchBatch([decode_watch_event(ev) for ev in _list(result, "events")], revision)
