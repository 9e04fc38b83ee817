"""The etcd schema: every key gitedge reads or writes, and its JSON value.

Layout under the configurable prefix (default `/gitedge/`):

    nodes/<node-id>         NodeRecord, under the node's lease (gone when it dies);
                            a TLS node's carries its certificate pin, tls_cert_sha256
    volumes/<volume-id>     VolumeRecord, durable
    repos/<owner>/<name>    RepoRecord, created in a create-if-absent txn
    users/<name>            UserRecord, created in a create-if-absent txn
    keys/<fingerprint>      KeyRecord: SSH key -> user (SHA256:... fingerprint, unique)
    tokens/<token-id>       TokenRecord: a personal HTTPS token's hash and owner
    drains/<node-id>        DrainRecord, durable: `gitedge node drain`; placement puts
                            no new repository or replica on that node (routing/drain.py)

Replicated repositories (issue 8; docs/replication.md has the whole design):

    repos/<owner>/<name>    with a factor N > 1 the record also holds
                            `replicas` (volume ids, home first) and
                            `sync_replicas` (W); a factor of 1 writes neither
    repl/<owner>/<name>/state
                            ConsensusState: {"generation", "checksum", "volume", "txid"}.
                            generation counts accepted pushes; checksum is the XOR
                            over all refs of sha1("<oid> <ref>") (Gitaly's), refs
                            under refs/gitedge/ excluded. Absent = generation 0, no refs.
    repl/<owner>/<name>/applied/<volume-id>
                            {"generation": g}: that replica's refs equal generation g.
                            The create txn writes 0 for every replica; a replica
                            with no key (being added) is never in sync. Written
                            by a node only if the record is unchanged since it read it.
    <prefix minus "/">.refs/<owner>/<name>/log/<G:012d>/<chunk:03d>
                            zlib(JSON) of the ref changes of generation G, cut in
                            chunks of at most 512 KiB: a 10,000-ref push is one entry.
                            A second root because edges mirror all of <prefix>;
                            only nodes read the log.
    <prefix minus "/">.refs/<owner>/<name>/snap/<G:012d>/<chunk:03d>, .../snap/<G>/done
                            a snapshot: zlib(JSON) of all consensus refs at generation G
                            (routing/snapshots.py). Chunks are written one request each;
                            `done` is put by the one txn that also deletes the log up to
                            G and every older snapshot. The consensus refs are the newest
                            done snapshot folded with the log entries after it.

A push's vote is one txn: compare state mod_revision (and the repo record's)
unchanged, then put state G+1, its log chunks and the primary's applied G+1.
A repair or the seed of a repository becoming replicated is the same txn
(whose entry moves every ref to one replica's value; the seed also puts the
record). Every replica-set change compares the record's mod_revision; going
back to factor 1 deletes `repl/<owner>/<name>/` and the repository's log
(routing/replica_changes.py).

Values are compact JSON objects. Decoders raise `SchemaError` on anything
malformed so one bad key cannot take the routing cache down.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from routing.model import (
    DrainRecord,
    InvalidRegion,
    InvalidRepoName,
    KeyRecord,
    NodeId,
    NodeRecord,
    RepoName,
    RepoRecord,
    TokenRecord,
    UserRecord,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
    parse_region,
)

DEFAULT_PREFIX = "/gitedge/"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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

    @property
    def users(self) -> str:
        return self.prefix + "users/"

    @property
    def keys(self) -> str:
        return self.prefix + "keys/"

    @property
    def tokens(self) -> str:
        return self.prefix + "tokens/"

    def user(self, name: str) -> str:
        return self.users + name

    def key(self, fingerprint: str) -> str:
        return self.keys + fingerprint

    def token(self, token_id: str) -> str:
        return self.tokens + token_id

    @property
    def drains(self) -> str:
        return self.prefix + "drains/"

    def drain(self, node_id: str) -> str:
        return self.drains + node_id

    # -- replication (issue 8) ----------------------------------------------------

    @property
    def repl(self) -> str:
        return self.prefix + "repl/"

    def repl_repo(self, name: RepoName) -> str:
        """Every consensus key of one repository (state and applied/*)."""
        return f"{self.repl}{name.path}/"

    def repl_state(self, name: RepoName) -> str:
        return f"{self.repl_repo(name)}state"

    def repl_applied_prefix(self, name: RepoName) -> str:
        return f"{self.repl_repo(name)}applied/"

    def repl_applied(self, name: RepoName, volume_id: str) -> str:
        return f"{self.repl_applied_prefix(name)}{volume_id}"

    @property
    def refs_root(self) -> str:
        """Outside `prefix`: edges mirror all of `prefix`, and only nodes read ref logs."""
        return self.prefix.rstrip("/") + ".refs/"

    def refs_log(self, name: RepoName) -> str:
        return f"{self.refs_repo(name)}log/"

    def refs_log_chunk(self, name: RepoName, generation: int, chunk: int) -> str:
        return f"{self.refs_log(name)}{generation:012d}/{chunk:03d}"

    def refs_log_generation(self, name: RepoName, generation: int) -> str:
        """The prefix of one generation's chunks (a range end for trimming below it)."""
        return f"{self.refs_log(name)}{generation:012d}/"

    def refs_repo(self, name: RepoName) -> str:
        """Everything of one repository under refs_root: its log and its snapshots."""
        return f"{self.refs_root}{name.path}/"

    def refs_snap(self, name: RepoName) -> str:
        return f"{self.refs_repo(name)}snap/"

    def refs_snap_chunk(self, name: RepoName, generation: int, chunk: int) -> str:
        return f"{self.refs_snap(name)}{generation:012d}/{chunk:03d}"

    def refs_snap_done(self, name: RepoName, generation: int) -> str:
        """Written last, in the txn that trims the log: a snapshot counts only with it."""
        return f"{self.refs_snap(name)}{generation:012d}/done"

    def parse_repl_key(self, key: str) -> tuple[RepoName, str | None] | None:
        """`(repo, None)` for a state key, `(repo, volume_id)` for an applied key."""
        parts = key.removeprefix(self.repl).split("/")
        try:
            if len(parts) == 3 and parts[2] == "state":
                return RepoName.parse(f"{parts[0]}/{parts[1]}"), None
            if len(parts) == 4 and parts[2] == "applied" and parts[3]:
                return RepoName.parse(f"{parts[0]}/{parts[1]}"), parts[3]
        except InvalidRepoName:
            return None
        return None


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


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SchemaError(f"field {key!r} must be a string")
    return value


def _str_tuple(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SchemaError(f"field {key!r} must be a list of strings")
    return tuple(value)


def _num(obj: dict[str, Any], key: str) -> float:
    value = obj.get(key)
    # json accepts NaN and Infinity (and 1e400 overflows to it): not numbers here.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SchemaError(f"field {key!r} must be a finite number")
    return value


def encode_node(node: NodeRecord) -> bytes:
    obj: dict[str, Any] = {
        "node_id": node.node_id,
        "region": node.region,
        "http_url": node.http_url,
        "volumes": [{"volume_id": v.volume_id, "free_bytes": v.free_bytes} for v in node.volumes],
    }
    if node.tls_cert_sha256:
        obj["tls_cert_sha256"] = node.tls_cert_sha256
    return _dump(obj)


def decode_node(raw: bytes) -> NodeRecord:
    """A node record. Records from nodes that still ran an SSH listener carry
    `ssh_address` and `ssh_host_key`; edges no longer use them, so they are
    ignored, whatever their values, until those nodes re-register."""
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
            # Records from before node TLS have none: those nodes serve plain http.
            tls_cert_sha256=_opt_sha256(obj, "tls_cert_sha256"),
        )
    except InvalidRegion as exc:
        raise SchemaError(str(exc)) from exc


def _opt_sha256(obj: dict[str, Any], key: str) -> str | None:
    value = _opt_str(obj, key)
    if value is not None and not _SHA256_HEX.fullmatch(value):
        raise SchemaError(f"field {key!r} must be 64 lowercase hex digits")
    return value


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
    obj: dict[str, Any] = {
        "name": repo.name.path,
        "volume_id": repo.volume_id,
        "region": repo.region,
        "created_at": repo.created_at,
        "owner": repo.owner,
        "public": repo.public,
        "readers": list(repo.readers),
        "writers": list(repo.writers),
    }
    if repo.replicated:
        obj["replicas"] = list(repo.replicas)
        obj["sync_replicas"] = repo.sync_replicas
    return _dump(obj)


def decode_repo(raw: bytes) -> RepoRecord:
    obj = _load(raw)
    try:
        return RepoRecord(
            name=RepoName.parse(_str(obj, "name")),
            volume_id=VolumeId(_str(obj, "volume_id")),
            region=parse_region(_str(obj, "region")),
            created_at=_num(obj, "created_at"),
            # Access fields came later: records without them are private to the name's owner.
            owner=_opt_str(obj, "owner") or "",
            public=obj.get("public") is True,
            readers=_str_tuple(obj, "readers"),
            writers=_str_tuple(obj, "writers"),
            **_replica_fields(obj),
        )
    except (InvalidRegion, InvalidRepoName) as exc:
        raise SchemaError(str(exc)) from exc


def _replica_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """`replicas` and `sync_replicas`, checked together (records before issue 8 have neither)."""
    if "replicas" not in obj:
        return {}
    replicas = tuple(VolumeId(v) for v in _str_tuple(obj, "replicas"))
    sync = _num(obj, "sync_replicas")
    if len(replicas) < 2 or len(set(replicas)) != len(replicas):
        raise SchemaError("field 'replicas' must list at least 2 distinct volumes")
    if replicas[0] != obj.get("volume_id"):
        raise SchemaError("field 'replicas' must start with the home volume")
    if sync != int(sync) or not 1 <= sync <= len(replicas):
        raise SchemaError("field 'sync_replicas' must be between 1 and the number of replicas")
    return {"replicas": replicas, "sync_replicas": int(sync)}


def encode_user(user: UserRecord) -> bytes:
    return _dump({"name": user.name, "created_at": user.created_at})


def decode_user(raw: bytes) -> UserRecord:
    obj = _load(raw)
    return UserRecord(name=_str(obj, "name"), created_at=_num(obj, "created_at"))


def encode_key_record(key: KeyRecord) -> bytes:
    return _dump(
        {
            "fingerprint": key.fingerprint,
            "user": key.user,
            "title": key.title,
            "public_key": key.public_key,
            "created_at": key.created_at,
        }
    )


def decode_key_record(raw: bytes) -> KeyRecord:
    obj = _load(raw)
    return KeyRecord(
        fingerprint=_str(obj, "fingerprint"),
        user=_str(obj, "user"),
        title=str(obj.get("title") or ""),
        public_key=_str(obj, "public_key"),
        created_at=_num(obj, "created_at"),
    )


def encode_token(token: TokenRecord) -> bytes:
    return _dump(
        {
            "token_id": token.token_id,
            "user": token.user,
            "secret_sha256": token.secret_sha256,
            "created_at": token.created_at,
        }
    )


def decode_token(raw: bytes) -> TokenRecord:
    obj = _load(raw)
    return TokenRecord(
        token_id=_str(obj, "token_id"),
        user=_str(obj, "user"),
        secret_sha256=_str(obj, "secret_sha256"),
        created_at=_num(obj, "created_at"),
    )


def encode_drain(drain: DrainRecord) -> bytes:
    return _dump({"node_id": drain.node_id, "since": drain.since, "by": drain.by})


def decode_drain(raw: bytes) -> DrainRecord:
    obj = _load(raw)
    return DrainRecord(
        node_id=NodeId(_str(obj, "node_id")), since=_num(obj, "since"), by=str(obj.get("by") or "")
    )
