"""Ref-log snapshots: the log of a replicated repository stays short. Pure.

Every accepted push adds a generation to the log (routing/consensus.py), and a
replica catching up folds the whole log into the consensus refs. Left alone the
log grows with the repository's history, in etcd, which holds its whole data
set in memory (8 GiB at most). So once SNAPSHOT_AFTER generations have
accumulated past the newest snapshot, the replica that just folded them writes
the refs as a snapshot of generation G and, in one txn, marks it done and trims
the log up to G and every older snapshot (schema: `<root>.refs/<repo>/snap/`).

Safe at any moment, by any replica, concurrently:

- `apply` needs only the consensus refs, never a replica's own older state: a
  replica at any generation moves straight to snapshot + later entries;
- the txn is fenced on generation G's log entry still existing: of two
  snapshotters the second finds it trimmed and writes nothing (its chunks
  written before the txn are left under snap/G and deleted by the next
  snapshot's trim);
- a snapshot counts only once its `done` key exists, and `done` is written by
  the trimming txn itself, so a reader never sees a trimmed log without the
  snapshot that replaces it (one range read is one etcd revision);
- the snapshot is written only from a fold whose checksum equals the consensus
  state's at G.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from routing import consensus as cons
from routing import etcd_codec as codec
from routing.model import RepoName
from routing.schema import Keys, SchemaError

SNAPSHOT_AFTER = 64
"""Log entries past the newest snapshot that make the next fold write one."""
MAX_SNAPSHOT_CHUNKS = 100
"""One txn deletes the log and puts `done`: far below etcd's 128 ops even so; a
repository whose refs need more is not snapshotted (logged by the caller)."""


@dataclass
class RefsHistory:
    """What etcd holds of one repository's refs: the newest done snapshot and the log."""

    snapshot_generation: int = 0
    snapshot_refs: dict[str, str] = field(default_factory=dict)
    entries: list[cons.LogEntry] = field(default_factory=list)
    """Log entries after the snapshot, in generation order."""

    @property
    def generation(self) -> int:
        return self.entries[-1].generation if self.entries else self.snapshot_generation

    def refs(self) -> dict[str, str]:
        """The consensus refs at `generation`."""
        refs = dict(self.snapshot_refs)
        for entry in self.entries:
            for update in entry.updates:
                if update.new == cons.ZERO_OID:
                    refs.pop(update.ref, None)
                else:
                    refs[update.ref] = update.new
        return refs

    def wants_snapshot(self, after: int = SNAPSHOT_AFTER) -> bool:
        return len(self.entries) >= after


def encode_snapshot(generation: int, refs: dict[str, str]) -> list[bytes]:
    obj = {"generation": generation, "refs": sorted([ref, oid] for ref, oid in refs.items())}
    packed = zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), 6)
    size = cons.LOG_CHUNK_BYTES
    return [packed[i : i + size] for i in range(0, len(packed), size)] or [packed]


def decode_snapshot(chunks: Sequence[bytes]) -> tuple[int, dict[str, str]]:
    try:
        obj: Any = json.loads(zlib.decompress(b"".join(chunks)))
    except (zlib.error, ValueError) as exc:
        raise SchemaError(f"snapshot is not zlib'd JSON: {exc}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("generation"), int):
        raise SchemaError("snapshot has no generation")
    refs: dict[str, str] = {}
    for item in obj.get("refs", []):
        if not (isinstance(item, list) and len(item) == 2):
            raise SchemaError("snapshot ref must be [ref, oid]")
        if not (isinstance(item[0], str) and isinstance(item[1], str)):
            raise SchemaError("snapshot ref must be [ref, oid]")
        refs[item[0]] = item[1]
    return obj["generation"], refs


def parse_history(keys: Keys, name: RepoName, kvs: Iterable[tuple[str, bytes]]) -> RefsHistory:
    """One prefix range of `keys.refs_repo(name)` (key order) -> its RefsHistory."""
    log_base, snap_base = keys.refs_log(name), keys.refs_snap(name)
    logs: dict[int, list[bytes]] = {}
    snaps: dict[int, list[bytes]] = {}
    done: set[int] = set()
    for key, value in kvs:
        base, into = (log_base, logs) if key.startswith(log_base) else (snap_base, snaps)
        if not key.startswith(base):
            continue  # neither (a future kind of key): not ours to judge
        generation_text, _, chunk = key.removeprefix(base).partition("/")
        try:
            generation = int(generation_text)
        except ValueError:
            raise SchemaError(f"bad generation in {key!r}") from None
        if into is snaps and chunk == "done":
            done.add(generation)
        else:
            into.setdefault(generation, []).append(value)
    history = RefsHistory()
    if done:
        newest = max(done)
        if newest not in snaps:
            raise SchemaError(f"{name}: snapshot {newest} is marked done but has no chunks")
        history.snapshot_generation, history.snapshot_refs = decode_snapshot(snaps[newest])
    history.entries = [
        cons.decode_log_entry(chunks)
        for generation, chunks in sorted(logs.items())
        if generation > history.snapshot_generation
    ]
    return history


def snapshot_txn(
    keys: Keys, name: RepoName, generation: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(compares, ops): mark snapshot `generation` done, trim the log to it and every
    older snapshot, if generation's log entry still exists (else a newer snapshot won)."""
    compares = [codec.compare_exists(keys.refs_log_chunk(name, generation, 0))]
    ops = [
        codec.put_op(keys.refs_snap_done(name, generation), b"{}"),
        codec.delete_range_op(keys.refs_log(name), keys.refs_log_generation(name, generation + 1)),
        codec.delete_range_op(keys.refs_snap(name), keys.refs_snap_chunk(name, generation, 0)),
    ]
    return compares, ops
