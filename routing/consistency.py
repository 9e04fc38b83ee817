"""`repo verify` (every replica's refs against the consensus) and `repo repair`.

verify: the consensus refs are the folded log (checked against the state's
checksum); each replica's refs come from its node's internal API. A replica is

    in-sync      its refs equal the consensus
    behind       its refs equal the consensus of the generation it published
                 (a replica catching up: consistent, not there yet)
    differs      anything else: N refs differ from the consensus
    unreachable  its node is down or did not answer

repair (piehole's clobber): the chosen replica's node makes its refs the
consensus (node/repl_ops.py, under its lock, one fenced txn: a new generation
whose log entry moves every differing ref to its value); the others catch up
to it through the watch like after any push.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from routing import consensus as cons
from routing import snapshots
from routing.cache import RoutingCache
from routing.errors import StoreUnavailable
from routing.etcd import EtcdClient, EtcdError
from routing.model import NodeRecord, RepoName, VolumeId
from routing.replica_changes import ReplicaChangeRefused, live_node, read_snapshot
from routing.schema import SchemaError

log = logging.getLogger(__name__)

IN_SYNC, BEHIND, DIFFERS, UNREACHABLE = "in-sync", "behind", "differs", "unreachable"


class ConsistencyNodes(Protocol):
    async def replica_refs(self, node: NodeRecord, name: RepoName) -> dict[str, str]: ...
    async def repair(self, node: NodeRecord, name: RepoName, by: str) -> tuple[int, int]:
        """(the new generation, how many refs it moved)."""
        ...


@dataclass(frozen=True)
class ReplicaReport:
    volume: VolumeId
    region: str | None
    node: str | None
    verdict: str
    differing: int = 0  # refs that differ from the consensus
    applied: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "volume": self.volume,
            "region": self.region,
            "node": self.node,
            "verdict": self.verdict,
            "differing_refs": self.differing,
            "applied": self.applied,
        }


def differing_refs(a: Mapping[str, str], b: Mapping[str, str]) -> int:
    return sum(1 for ref in set(a) | set(b) if a.get(ref) != b.get(ref))


def judge(
    refs: Mapping[str, str],
    consensus: Mapping[str, str],
    at_applied: Mapping[str, str] | None,
) -> tuple[str, int]:
    """(verdict, refs differing from the consensus) of one reachable replica."""
    differing = differing_refs(refs, consensus)
    if differing == 0:
        return IN_SYNC, 0
    if at_applied is not None and differing_refs(refs, at_applied) == 0:
        return BEHIND, differing
    return DIFFERS, differing


def fold_at(
    entries: Iterable[cons.LogEntry],
    wanted: set[int],
    start: Mapping[str, str] | None = None,
    start_generation: int = 0,
) -> dict[int, dict[str, str]]:
    """The consensus refs after each generation in `wanted`, from the refs `start` at
    `start_generation` (a snapshot; none: no refs at 0), and the last ones under key
    -1. Generations before the start are trimmed: not in the answer."""
    refs: dict[str, str] = dict(start or {})
    found: dict[int, dict[str, str]] = {}
    if start_generation in wanted:
        found[start_generation] = dict(refs)
    for entry in entries:
        cons.fold_log([entry], refs)
        if entry.generation in wanted:
            found[entry.generation] = dict(refs)
    found[-1] = refs
    return found


async def verify_repo(
    etcd: EtcdClient, cache: RoutingCache, nodes: ConsistencyNodes, name: RepoName
) -> dict[str, Any]:
    snap = await read_snapshot(etcd, cache.keys, name)
    if not snap.record.replicated:
        raise ReplicaChangeRefused(f"{name} is not replicated: there is no consensus to verify")
    try:
        listed = await etcd.range(cache.keys.refs_repo(name), prefix=True)
    except EtcdError as exc:
        raise StoreUnavailable(str(exc)) from exc
    wanted = {g for g, _rev in snap.applied.values()}
    try:
        kept = snapshots.parse_history(cache.keys, name, ((kv.key, kv.value) for kv in listed.kvs))
        history = fold_at(kept.entries, wanted, kept.snapshot_refs, kept.snapshot_generation)
    except SchemaError as exc:
        raise ReplicaChangeRefused(f"{name}: its consensus log is malformed ({exc})") from None
    consensus = history[-1]
    reports = []
    for volume_id in snap.record.replica_volumes:
        applied = snap.applied.get(volume_id, (None, 0))[0]
        volume = cache.volumes.get(volume_id)
        node = live_node(cache, volume_id)
        region = volume.region if volume else None
        if node is None:
            reports.append(ReplicaReport(volume_id, region, None, UNREACHABLE, applied=applied))
            continue
        try:
            refs = await nodes.replica_refs(node, name)
        except Exception as exc:  # an unanswered node is a row of the table, not a failure
            log.info("verify %s: %s did not answer: %s", name, node.node_id, exc)
            reports.append(ReplicaReport(volume_id, region, node.node_id, UNREACHABLE, 0, applied))
            continue
        at_applied = history.get(applied) if applied is not None else None
        verdict, differing = judge(refs, consensus, at_applied)
        reports.append(ReplicaReport(volume_id, region, node.node_id, verdict, differing, applied))
    return {
        "repo": name.path,
        "generation": snap.state.generation,
        "consensus_refs": len(consensus),
        "log_matches_checksum": cons.checksum(consensus) == snap.state.checksum,
        "replicas": [r.to_json() for r in reports],
    }


async def repair_repo(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ConsistencyNodes,
    name: RepoName,
    volume_id: VolumeId,
    by: str,
) -> dict[str, Any]:
    """Make `volume_id`'s refs the consensus (a new generation); logged at WARNING."""
    snap = await read_snapshot(etcd, cache.keys, name)
    record = snap.record
    if not record.replicated:
        raise ReplicaChangeRefused(f"{name} is not replicated: there is no consensus to repair")
    if volume_id not in record.replica_volumes:
        raise ReplicaChangeRefused(
            f"{volume_id} is not a replica of {name} (its replicas: {', '.join(record.replicas)})"
        )
    node = live_node(cache, volume_id)
    if node is None:
        raise ReplicaChangeRefused(f"the node of {volume_id} is down: it cannot be repaired from")
    generation, moved = await nodes.repair(node, name, by)
    log.warning(
        "REPAIR %s by %s: the consensus is now %s's refs (on %s): generation %d, %d refs moved"
        " from the consensus before",
        name,
        by,
        volume_id,
        node.node_id,
        generation,
        moved,
    )
    return {
        "repo": name.path,
        "from": volume_id,
        "node": node.node_id,
        "generation": generation,
        "moved_refs": moved,
    }
