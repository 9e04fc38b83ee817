"""Consensus refs of a replicated repository: state, checksum, log, vote txn. Pure.

The keys and their meaning are in routing/schema.py's docstring and
docs/replication.md. This module decides, from data only:

- the order-free ref checksum (Gitaly's: XOR of sha1("<oid> <ref>") over all refs),
  and how one push moves it;
- what a push may do given the consensus (its old values must be the agreed ones);
- the log entry of a generation, compressed and cut in chunks that fit etcd;
- the one txn that commits a vote, fenced by the state's and the record's mod_revision;
- folding a log into the full ref map, and the `update-ref --stdin` lines that
  move a replica's refs to it.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from routing import etcd_codec as codec
from routing.model import RepoName, VolumeId
from routing.schema import Keys, SchemaError

ZERO_OID = "0" * 40
ZERO_CHECKSUM = "0" * 40
INTERNAL_REFS = "refs/gitedge/"
"""The node's own refs (objects in flight between replicas): never in the consensus."""
LOG_CHUNK_BYTES = 512 * 1024
"""A log chunk's compressed size: etcd takes requests up to 1.5 MiB by default, and
the gateway's base64 makes a value 4/3 as big on the way."""
MAX_LOG_CHUNKS = 64
_OID = re.compile(r"[0-9a-f]{40}")


class PushRefused(Exception):
    """The push cannot be accepted; `message` is what the pusher sees (a git `remote:` line)."""


@dataclass(frozen=True)
class RefUpdate:
    ref: str
    old: str  # ZERO_OID: the ref did not exist
    new: str  # ZERO_OID: the ref is deleted

    @classmethod
    def parse(cls, line: str) -> RefUpdate:
        """One line of pre-receive's stdin: `<old> <new> <ref>`."""
        parts = line.split(" ", 2)
        if len(parts) != 3 or not _OID.fullmatch(parts[0]) or not _OID.fullmatch(parts[1]):
            raise ValueError(f"not a ref update line: {line[:100]!r}")
        if not parts[2].startswith("refs/") or "\n" in parts[2]:
            raise ValueError(f"not a ref name: {parts[2][:100]!r}")
        return cls(parts[2], parts[0], parts[1])


def ref_hash(oid: str, ref: str) -> int:
    return int.from_bytes(hashlib.sha1(f"{oid} {ref}".encode()).digest(), "big")


def checksum(refs: Mapping[str, str]) -> str:
    """XOR over sha1("<oid> <ref>") of every replicated ref; order-free."""
    value = 0
    for ref, oid in refs.items():
        if not ref.startswith(INTERNAL_REFS):
            value ^= ref_hash(oid, ref)
    return f"{value:040x}"


def advance_checksum(current: str, updates: Iterable[RefUpdate]) -> str:
    value = int(current, 16)
    for update in updates:
        if update.old != ZERO_OID:
            value ^= ref_hash(update.old, update.ref)
        if update.new != ZERO_OID:
            value ^= ref_hash(update.new, update.ref)
    return f"{value:040x}"


@dataclass(frozen=True)
class ConsensusState:
    generation: int = 0
    checksum: str = ZERO_CHECKSUM
    volume: str = ""  # the primary that committed this generation
    txid: str = ""  # the push that did: read back after an ambiguous txn
    mod_revision: int = 0  # of the state key; 0: absent (generation 0, no refs)


def encode_state(state: ConsensusState) -> bytes:
    obj = {
        "generation": state.generation,
        "checksum": state.checksum,
        "volume": state.volume,
        "txid": state.txid,
    }
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def decode_state(raw: bytes, mod_revision: int) -> ConsensusState:
    obj = _json(raw)
    generation, check = obj.get("generation"), obj.get("checksum")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise SchemaError("consensus generation must be a whole number")
    if not isinstance(check, str) or not re.fullmatch(r"[0-9a-f]{40}", check):
        raise SchemaError("consensus checksum must be 40 hex digits")
    return ConsensusState(
        generation, check, str(obj.get("volume", "")), str(obj.get("txid", "")), mod_revision
    )


def encode_applied(generation: int) -> bytes:
    return b'{"generation":%d}' % generation


def decode_applied(raw: bytes) -> int:
    generation = _json(raw).get("generation")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise SchemaError("applied generation must be a whole number")
    return generation


def _json(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise SchemaError("not a JSON object")
    return obj


def check_push(
    local_refs: Mapping[str, str], state: ConsensusState, updates: Sequence[RefUpdate]
) -> str:
    """The checksum after `updates`, if this replica may vote them; else PushRefused.

    The replica's refs must equal the consensus (same checksum): then every old
    value git will check against the local refs is the agreed one too.
    """
    if not updates:
        raise PushRefused("nothing to update")
    internal = [u.ref for u in updates if u.ref.startswith(INTERNAL_REFS)]
    if internal:
        raise PushRefused(f"{internal[0]}: refs/gitedge/ is reserved")
    if checksum(local_refs) != state.checksum:
        raise PushRefused(
            "this replica is behind the agreed refs (catching up); push again in a moment"
        )
    for update in updates:
        if local_refs.get(update.ref, ZERO_OID) != update.old:
            raise PushRefused(
                f"{update.ref} moved meanwhile: fetch first (git pull), then push again"
            )
    return advance_checksum(state.checksum, updates)


def encode_log_entry(generation: int, txid: str, updates: Sequence[RefUpdate]) -> list[bytes]:
    """The log entry of `generation`, zlib'd and cut in chunks of LOG_CHUNK_BYTES."""
    obj = {
        "generation": generation,
        "txid": txid,
        "updates": [[u.ref, u.old, u.new] for u in updates],
    }
    packed = zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 6)
    chunks = [packed[i : i + LOG_CHUNK_BYTES] for i in range(0, len(packed), LOG_CHUNK_BYTES)]
    if len(chunks) > MAX_LOG_CHUNKS:
        raise PushRefused(f"a push of {len(updates)} refs is too big for one generation")
    return chunks or [packed]


@dataclass(frozen=True)
class LogEntry:
    generation: int
    txid: str
    updates: tuple[RefUpdate, ...]


def decode_log_entry(chunks: Sequence[bytes]) -> LogEntry:
    try:
        obj = _json(zlib.decompress(b"".join(chunks)))
    except zlib.error as exc:
        raise SchemaError(f"log entry is not zlib data: {exc}") from exc
    raw_updates = obj.get("updates")
    if not isinstance(raw_updates, list):
        raise SchemaError("log entry has no updates")
    updates: list[RefUpdate] = []
    for item in raw_updates:
        if not (
            isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)
        ):
            raise SchemaError("log update must be [ref, old, new]")
        updates.append(RefUpdate(item[0], item[1], item[2]))
    generation = obj.get("generation")
    if not isinstance(generation, int):
        raise SchemaError("log entry has no generation")
    return LogEntry(generation, str(obj.get("txid", "")), tuple(updates))


def group_log_chunks(
    keys: Keys, name: RepoName, kvs: Iterable[tuple[str, bytes]]
) -> list[list[bytes]]:
    """A prefix range of the repo's log (key order) -> each generation's chunks, in order."""
    by_generation: dict[str, list[bytes]] = {}
    base = keys.refs_log(name)
    for key, value in kvs:
        generation = key.removeprefix(base).split("/")[0]
        by_generation.setdefault(generation, []).append(value)
    return [by_generation[g] for g in sorted(by_generation)]


def fold_log(entries: Iterable[LogEntry], refs: dict[str, str] | None = None) -> dict[str, str]:
    """The refs after applying every entry in order (the consensus refs), folded
    into `refs` (changed in place) when given."""
    refs = {} if refs is None else refs
    for entry in entries:
        for update in entry.updates:
            if update.new == ZERO_OID:
                refs.pop(update.ref, None)
            else:
                refs[update.ref] = update.new
    return refs


def reset_updates(consensus: Mapping[str, str], replica: Mapping[str, str]) -> list[RefUpdate]:
    """Every change that moves the consensus refs to `replica`'s (internal refs aside).

    The log entry of a repair (piehole's clobber) and of the seed that makes an
    unreplicated repository replicated: folded after the log so far, it gives
    exactly `replica`'s refs.
    """
    updates = []
    for ref in sorted(set(consensus) | set(replica)):
        old, new = consensus.get(ref, ZERO_OID), replica.get(ref, ZERO_OID)
        if old != new and not ref.startswith(INTERNAL_REFS):
            updates.append(RefUpdate(ref, old, new))
    return updates


def vote_txn(
    keys: Keys,
    name: RepoName,
    record_mod_revision: int,
    state: ConsensusState,
    new_checksum: str,
    volume: VolumeId,
    txid: str,
    updates: Sequence[RefUpdate],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], ConsensusState]:
    """(compares, ops, new state) of the one txn that commits generation G+1.

    Fenced twice: the state must be the one the vote read (a concurrent push
    through any replica changes its mod_revision), and the repo record must be
    unchanged (a replica-set change ends every vote begun before it).
    """
    generation = state.generation + 1
    new = ConsensusState(generation, new_checksum, volume, txid)
    compares = [
        codec.compare_mod_revision(keys.repl_state(name), state.mod_revision),
        codec.compare_mod_revision(keys.repo(name), record_mod_revision),
    ]
    ops = [
        codec.put_op(keys.repl_state(name), encode_state(new)),
        codec.put_op(keys.repl_applied(name, volume), encode_applied(generation)),
    ]
    for index, chunk in enumerate(encode_log_entry(generation, txid, updates)):
        ops.append(codec.put_op(keys.refs_log_chunk(name, generation, index), chunk))
    return compares, ops, new


def update_ref_script(local: Mapping[str, str], target: Mapping[str, str]) -> bytes:
    """`git update-ref --stdin -z` input moving `local` to `target`, old values checked.

    One transaction (start ... commit): all refs move or none.
    """
    lines: list[str] = []
    for ref in sorted(set(local) | set(target)):
        if ref.startswith(INTERNAL_REFS):
            continue
        have, want = local.get(ref), target.get(ref)
        if have == want:
            continue
        if want is None:
            lines.append(f"delete {ref}\0{have}\0")
        elif have is None:
            lines.append(f"create {ref}\0{want}\0")
        else:
            lines.append(f"update {ref}\0{want}\0{have}\0")
    if not lines:
        return b""
    return ("start\0" + "".join(lines) + "commit\0").encode()
