"""Changing a repository's replica set online: add, remove, move (and repair's checks).

docs/replication.md ("Replica-set changes") has the design. In short:

- Every change of the set is one etcd txn that compares the repo record's
  mod_revision. A vote compares it too (`consensus.vote_txn`), so a push whose
  vote began before the change fails its own txn and its pusher is told to push
  again: no push is acknowledged by a replica set that no longer exists.
- A removal also compares the consensus state and an in-sync survivor's applied
  key: a push that commits meanwhile makes it retry with a fresh read, and the
  set never loses its last in-sync replica to a race.
- An added replica has no applied key (the add txn deletes any stale one): it is
  never in sync, so never read from, until its node has caught it up from an
  in-sync replica and published one.
- A factor-1 repository becomes replicated on its home's node (`seed`): under
  the repository's lock there, one txn writes the replicated record and a first
  generation holding the home's refs. Back to factor 1 (the end of a move, a
  removal down to one replica with W=1): one txn writes the plain record and
  deletes every consensus key of the repository (state, applied, log).

The node calls are injected (`ReplicaNodes`): routing knows what to write,
the edge how to reach a node.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from routing import etcd_codec as codec
from routing.cache import RoutingCache
from routing.consensus import ConsensusState, decode_applied, decode_state
from routing.errors import ChangedMeanwhile, NotFound, StoreUnavailable
from routing.etcd import EtcdClient, EtcdError
from routing.model import NodeRecord, Region, RepoName, RepoRecord, VolumeId
from routing.placement import choose_added_replica
from routing.schema import Keys, SchemaError, decode_repo, encode_repo

log = logging.getLogger(__name__)

CATCH_UP_TIMEOUT = 60.0
MOVE_SYNC_REPLICAS = 2
"""W while a repository is replicated for a move (and the W an unreplicated
repository gets from `replicas add`): a push is acknowledged only once both
copies hold it."""
CHANGE_ATTEMPTS = 5
"""A change whose txn lost to a push is retried with a fresh read this often."""
CLEANUP_TIMEOUT = 10.0


class ReplicaChangeRefused(Exception):
    """The change cannot be made; the message says why (safe to show the caller)."""


class ReplicaNodes(Protocol):
    """What a change asks of nodes (edge/api/node_admin.py); any failure raises."""

    async def init_replica(self, node: NodeRecord, name: RepoName) -> None: ...
    async def drop_replica(self, node: NodeRecord, name: RepoName) -> None: ...
    async def seed(
        self, node: NodeRecord, name: RepoName, added: VolumeId, sync_replicas: int
    ) -> int: ...
    async def apply(self, node: NodeRecord, name: RepoName) -> int: ...
    async def unhook(self, node: NodeRecord, name: RepoName) -> None: ...


@dataclass(frozen=True)
class Snapshot:
    """The record, the consensus state and every applied key, as etcd has them now."""

    record: RepoRecord
    record_rev: int
    state: ConsensusState
    applied: dict[VolumeId, tuple[int, int]]  # volume -> (generation, mod_revision)

    def in_sync(self, volume_id: VolumeId) -> bool:
        found = self.applied.get(volume_id)
        return found is not None and found[0] == self.state.generation


async def read_snapshot(etcd: EtcdClient, keys: Keys, name: RepoName) -> Snapshot:
    try:
        kv = await etcd.get(keys.repo(name))
        if kv is None:
            raise NotFound(name.path)
        state_kv = await etcd.get(keys.repl_state(name))
        listed = await etcd.range(keys.repl_applied_prefix(name), prefix=True)
    except EtcdError as exc:
        raise StoreUnavailable(str(exc)) from exc
    base = keys.repl_applied_prefix(name)
    try:
        record = decode_repo(kv.value)
        state = (
            ConsensusState()
            if state_kv is None
            else decode_state(state_kv.value, state_kv.mod_revision)
        )
        applied = {
            VolumeId(a.key.removeprefix(base)): (decode_applied(a.value), a.mod_revision)
            for a in listed.kvs
        }
    except SchemaError as exc:
        raise ReplicaChangeRefused(f"{name}: malformed record or consensus key ({exc})") from None
    return Snapshot(record, kv.mod_revision, state, applied)


@dataclass(frozen=True)
class ChangeResult:
    record: RepoRecord
    volume: VolumeId
    """The replica added or removed."""
    in_sync: bool | None = None
    """add/move: the new replica caught up within the deadline."""
    disk_deleted: bool | None = None
    """remove/move: the removed copy is gone from its node (False: node down; an
    orphan directory that nothing routes to is left there)."""

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "repo": self.record.name.path,
            "volume": self.volume,
            "home": self.record.volume_id,
            "region": self.record.region,
            "replicas": list(self.record.replica_volumes),
            "sync_replicas": self.record.sync_replicas,
        }
        if self.in_sync is not None:
            body["in_sync"] = self.in_sync
        if self.disk_deleted is not None:
            body["disk_deleted"] = self.disk_deleted
        return body


def live_node(cache: RoutingCache, volume_id: VolumeId) -> NodeRecord | None:
    volume = cache.volumes.get(volume_id)
    node = cache.nodes.get(volume.node_id) if volume else None
    if node is None or not any(v.volume_id == volume_id for v in node.volumes):
        return None
    return node


async def add_replica(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ReplicaNodes,
    name: RepoName,
    region: Region,
    *,
    catch_up_timeout: float = CATCH_UP_TIMEOUT,
) -> ChangeResult:
    """A new replica in `region`: init it, add it to the set, let it catch up."""
    keys = cache.keys
    snap = await read_snapshot(etcd, keys, name)
    record = snap.record
    home = live_node(cache, record.volume_id)
    if not record.replicated and home is None:
        raise ReplicaChangeRefused(f"{name}: its only copy's node is down")
    volume = choose_added_replica(
        region,
        record.replica_volumes,
        cache.volumes.values(),
        cache.placeable_nodes,
        cache.repo_counts,
    )  # PlacementError propagates
    node = cache.nodes[volume.node_id]
    await nodes.init_replica(node, name)
    try:
        if record.replicated:
            changed = await _txn(
                etcd,
                [codec.compare_mod_revision(keys.repo(name), snap.record_rev)],
                [
                    codec.put_op(
                        keys.repo(name), encode_repo(record.with_replica(volume.volume_id))
                    ),
                    codec.delete_op(keys.repl_applied(name, volume.volume_id)),
                ],
            )
            if not changed:
                raise ChangedMeanwhile(f"{name} changed meanwhile; try again")
        else:
            assert home is not None
            # The home writes the replicated record and seeds the consensus from its
            # refs under its lock, so no push of the unreplicated repo slips past.
            await nodes.seed(home, name, volume.volume_id, MOVE_SYNC_REPLICAS)
    except BaseException:
        await _drop_unless_listed(etcd, keys, nodes, node, name, volume.volume_id)
        raise
    log.info("%s: replica %s added on %s", name, volume.volume_id, node.node_id)
    synced = await catch_up(etcd, keys, nodes, node, name, volume.volume_id, catch_up_timeout)
    after = await read_snapshot(etcd, keys, name)
    return ChangeResult(after.record, volume.volume_id, in_sync=synced)


async def remove_replica(
    etcd: EtcdClient, cache: RoutingCache, nodes: ReplicaNodes, name: RepoName, where: str
) -> ChangeResult:
    """Take the replica in region (or on volume) `where` out of the set, then off its disk."""
    for _attempt in range(CHANGE_ATTEMPTS):
        snap = await read_snapshot(etcd, cache.keys, name)
        record = snap.record
        if not record.replicated:
            raise ReplicaChangeRefused(
                f"{name} is not replicated: its one copy cannot be removed (repo move moves it)"
            )
        volume = _replica_at(cache, record, where)
        left = len(record.replicas) - 1
        if left < record.sync_replicas:
            raise ReplicaChangeRefused(
                f"removing {volume} would leave {left} replica(s), fewer than"
                f" sync_replicas={record.sync_replicas}; add a replica first"
            )
        new = await _take_out(etcd, cache, snap, volume)
        if new is not None:
            deleted = await _after_take_out(cache, nodes, new, volume)
            return ChangeResult(new, volume, disk_deleted=deleted)
    raise ChangedMeanwhile(f"{name} kept changing (pushes); try again")


async def move_repo(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ReplicaNodes,
    name: RepoName,
    region: Region,
    *,
    catch_up_timeout: float = CATCH_UP_TIMEOUT,
) -> ChangeResult:
    """An unreplicated repository's one copy to `region`: add, sync, switch, remove.

    While it runs the repository is replicated with W=2 (pushes reach both
    copies before they are acknowledged). A move cut short leaves it so; run
    again, it finishes (a 2-replica set with one replica in `region`).
    """
    snap = await read_snapshot(etcd, cache.keys, name)
    record = snap.record
    if not record.replicated:
        if record.region == region:
            raise ReplicaChangeRefused(f"{name} is already in region {region}")
        target = (
            await add_replica(etcd, cache, nodes, name, region, catch_up_timeout=catch_up_timeout)
        ).volume
    else:
        here = [v for v in record.replicas if _region_of(cache, v) == region]
        if len(record.replicas) != 2 or len(here) != 1:
            raise ReplicaChangeRefused(
                f"{name} has {len(record.replicas)} replicas: repo move moves an unreplicated"
                " repository; use repo replicas add/remove"
            )
        target = here[0]
    return await finish_move(etcd, cache, nodes, name, target, catch_up_timeout)


class NotCaughtUp(ReplicaChangeRefused):
    """A move's new copy did not catch up in time; both copies are still in the set."""


async def finish_move(
    etcd: EtcdClient,
    cache: RoutingCache,
    nodes: ReplicaNodes,
    name: RepoName,
    target: VolumeId,
    catch_up_timeout: float,
) -> ChangeResult:
    """The second half of a move: once the added copy `target` is in sync, the
    other one leaves the set and its disk; NotCaughtUp if it does not catch up."""
    node = live_node(cache, target)
    if node is None:
        raise ReplicaChangeRefused(f"{name}: the node of the new copy {target} is down")
    for _attempt in range(CHANGE_ATTEMPTS):
        if not await catch_up(etcd, cache.keys, nodes, node, name, target, catch_up_timeout):
            raise NotCaughtUp(
                f"{name}: the new copy {target} did not catch up within {catch_up_timeout:.0f}s;"
                " the repository stays replicated on both for now: run repo move again"
            )
        snap = await read_snapshot(etcd, cache.keys, name)
        old = next(v for v in snap.record.replica_volumes if v != target)
        new = await _take_out(etcd, cache, snap, old, keep=target)
        if new is not None:
            deleted = await _after_take_out(cache, nodes, new, old)
            log.info("%s: moved from %s to %s", name, old, target)
            return ChangeResult(new, old, in_sync=True, disk_deleted=deleted)
    raise ChangedMeanwhile(f"{name} kept changing (pushes); run repo move again")


async def undo_move(
    etcd: EtcdClient, cache: RoutingCache, nodes: ReplicaNodes, name: RepoName, added: VolumeId
) -> ChangeResult:
    """Back out a move whose new copy `added` did not catch up: it leaves the set and
    its disk, and the old copy is the repository's one copy again (factor 1), as
    before the move. Refused unless the old copy is in sync and up."""
    for _attempt in range(CHANGE_ATTEMPTS):
        snap = await read_snapshot(etcd, cache.keys, name)
        others = [v for v in snap.record.replica_volumes if v != added]
        if len(others) != 1 or added not in snap.record.replica_volumes:
            raise ReplicaChangeRefused(f"{name}: not a move to {added} in progress")
        new = await _take_out(etcd, cache, snap, added, keep=others[0])
        if new is not None:
            deleted = await _after_take_out(cache, nodes, new, added)
            log.info("%s: move to %s undone; it stays on %s", name, added, others[0])
            return ChangeResult(new, added, disk_deleted=deleted)
    raise ChangedMeanwhile(f"{name} kept changing (pushes); the move to {added} is not undone")


async def catch_up(
    etcd: EtcdClient,
    keys: Keys,
    nodes: ReplicaNodes,
    node: NodeRecord,
    name: RepoName,
    volume_id: VolumeId,
    timeout: float,
) -> bool:
    """Have the replica's node apply until its applied key equals the consensus."""
    delay = 0.2
    with trio.move_on_after(timeout):
        while True:
            try:
                await nodes.apply(node, name)
            except Exception as exc:  # any failure means "not yet": the applied key decides
                log.info("%s: catch-up of %s: %s", name, volume_id, exc)
            if (await read_snapshot(etcd, keys, name)).in_sync(volume_id):
                return True
            await trio.sleep(delay)
            delay = min(delay * 2, 2.0)
    return False


async def _take_out(
    etcd: EtcdClient,
    cache: RoutingCache,
    snap: Snapshot,
    volume_id: VolumeId,
    keep: VolumeId | None = None,
) -> RepoRecord | None:
    """The txn that takes `volume_id` out of the set; None if it lost a race (retry)."""
    keys, record, name = cache.keys, snap.record, snap.record.name
    survivors = [
        v
        for v in record.replica_volumes
        if v != volume_id and snap.in_sync(v) and live_node(cache, v) is not None
    ]
    if keep is not None:
        survivors = [v for v in survivors if v == keep]
    if not survivors:
        if keep is not None:
            return None  # a push moved the consensus meanwhile: catch up again
        if snap.in_sync(volume_id):
            raise ReplicaChangeRefused(
                f"{volume_id} is the last in-sync replica of {name}; wait until another one"
                " has caught up (repo where)"
            )
        raise ReplicaChangeRefused(f"no other replica of {name} is in sync and up right now")
    anchor = survivors[0]
    home = cache.volumes[record.volume_id if record.volume_id != volume_id else anchor]
    new = record.without_replica(volume_id, home)
    compares = [
        codec.compare_mod_revision(keys.repo(name), snap.record_rev),
        codec.compare_mod_revision(keys.repl_state(name), snap.state.mod_revision),
        codec.compare_mod_revision(keys.repl_applied(name, anchor), snap.applied[anchor][1]),
    ]
    ops = [codec.put_op(keys.repo(name), encode_repo(new))]
    if new.replicated:
        ops.append(codec.delete_op(keys.repl_applied(name, volume_id)))
    else:  # factor 1 again: exactly as a repository that was never replicated
        ops.append(codec.delete_op(keys.repl_repo(name), prefix=True))
        ops.append(codec.delete_op(keys.refs_repo(name), prefix=True))
    return new if await _txn(etcd, compares, ops) else None


async def _after_take_out(
    cache: RoutingCache, nodes: ReplicaNodes, new: RepoRecord, removed: VolumeId
) -> bool:
    """Delete the removed copy (True if done); unhook the one copy of a factor-1 repo."""
    deleted = False
    node = live_node(cache, removed)
    with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
        if node is not None:
            try:
                await nodes.drop_replica(node, new.name)
                deleted = True
            except Exception as exc:  # reported to the caller as disk_deleted: false
                log.warning("%s: deleting the copy on %s failed: %s", new.name, node.node_id, exc)
        home = live_node(cache, new.volume_id)
        if not new.replicated and home is not None:
            try:
                await nodes.unhook(home, new.name)
            except Exception as exc:  # hooks left on an unreplicated repo accept pushes as is
                log.warning("%s: removing the hooks on %s failed: %s", new.name, home.node_id, exc)
    log.info("%s: replica %s removed (disk copy deleted: %s)", new.name, removed, deleted)
    return deleted


async def _drop_unless_listed(
    etcd: EtcdClient,
    keys: Keys,
    nodes: ReplicaNodes,
    node: NodeRecord,
    name: RepoName,
    volume_id: VolumeId,
) -> None:
    """Undo an init whose add failed, unless the add did land (an ambiguous outcome)."""
    with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
        try:
            listed = volume_id in (await read_snapshot(etcd, keys, name)).record.replica_volumes
        except (StoreUnavailable, NotFound, ReplicaChangeRefused):
            return  # unknown: keep the copy (an orphan dir routes nowhere)
        if not listed:
            try:
                await nodes.drop_replica(node, name)
            except Exception as exc:
                log.warning("%s: dropping the unused copy on %s: %s", name, node.node_id, exc)


def _replica_at(cache: RoutingCache, record: RepoRecord, where: str) -> VolumeId:
    """The replica on volume `where`, or the one in region `where`."""
    if where in record.replica_volumes:
        return VolumeId(where)
    here = [v for v in record.replica_volumes if _region_of(cache, v) == where]
    if len(here) == 1:
        return here[0]
    if not here:
        raise ReplicaChangeRefused(f"{record.name} has no replica in {where!r}")
    raise ReplicaChangeRefused(
        f"{record.name} has {len(here)} replicas in {where}: name the volume ({', '.join(here)})"
    )


def _region_of(cache: RoutingCache, volume_id: VolumeId) -> str | None:
    volume = cache.volumes.get(volume_id)
    return volume.region if volume else None


async def _txn(etcd: EtcdClient, compares: list[dict[str, Any]], ops: list[dict[str, Any]]) -> bool:
    try:
        return (await etcd.txn(compares, ops)).succeeded
    except EtcdError as exc:
        # A timed-out txn may have been applied: `repo where` shows which.
        raise StoreUnavailable(f"replica-set change: {exc}") from exc
