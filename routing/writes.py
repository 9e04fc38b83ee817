"""Creating a repository: place it, record it, have its node init it.

The record is written in a create-if-absent transaction, so two edges racing
to create one name give one success and one AlreadyExists. Only then is the
node asked to `git init --bare`; if that fails (or the caller gives up), the
record is deleted again, but only if it is still the one written here
(compare mod_revision), so a later create by someone else is never undone.

The node call is injected (`InitOnNode`): routing knows how to record a
repository, not how to talk to a node's API.

A replicated repository (`replicas` > 1) records its whole replica set in the
same create-if-absent txn, with every replica's applied generation 0 (all are
empty: in sync with the empty consensus; a replica with no applied key is never
in sync, see routing/replicas.py). Every replica is initialised (concurrently,
by `init_replica`, which installs the replication hooks); if any init fails, the
record is rolled back and every replica that was made is removed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from routing import etcd_codec as codec
from routing.cache import RoutingCache
from routing.consensus import encode_applied
from routing.errors import AlreadyExists, StoreUnavailable
from routing.etcd import EtcdClient, EtcdError, EtcdOutcomeUnknown
from routing.model import (
    NodeRecord,
    Region,
    RepoLocation,
    RepoName,
    RepoRecord,
    VolumeId,
    VolumeRecord,
)
from routing.schema import encode_repo

log = logging.getLogger(__name__)

InitOnNode = Callable[[NodeRecord, RepoName], Awaitable[None]]
"""Create the bare repository on the node; raise (anything) if it was not created."""
DropOnNode = Callable[[NodeRecord, RepoName], Awaitable[None]]
"""Delete a replica made by a create that is being rolled back (best effort)."""

# A rollback is cleanup after a failure the caller is already hearing about: it
# gets its own deadline, shielded, so a cancelled create still tries to undo itself.
ROLLBACK_TIMEOUT = 5.0


@dataclass(frozen=True)
class NewRepo:
    """What the creator asks for; placement adds where it goes."""

    name: RepoName
    owner: str
    public: bool = False
    readers: tuple[str, ...] = ()
    writers: tuple[str, ...] = ()
    replicas: int = 1
    sync_replicas: int | None = None
    """W; None: 2 when replicated (a push durable on two replicas), else 1."""
    replica_regions: tuple[Region, ...] = ()
    """Where the replicas after the home must go, in order (the rest: placement's choice)."""

    def write_quorum(self) -> int:
        if self.replicas <= 1:
            return 0
        wanted = 2 if self.sync_replicas is None else self.sync_replicas
        if not 1 <= wanted <= self.replicas:
            raise ValueError(f"sync_replicas must be between 1 and {self.replicas}")
        return wanted


async def create_repo(
    etcd: EtcdClient,
    cache: RoutingCache,
    new: NewRepo,
    region: Region,
    fallback: Region | None,
    init_on_node: InitOnNode,
    *,
    init_replica: InitOnNode | None = None,
    drop_replica: DropOnNode | None = None,
) -> RepoLocation:
    """Place, record (create-if-absent), then init on the node; roll back on failure.

    Raises PlacementError (no live volume), AlreadyExists, StoreUnavailable, or
    whatever `init_on_node` raised (after the rollback).
    """
    if new.replicas > 1:
        if init_replica is None or drop_replica is None:
            raise ValueError("a replicated create needs init_replica and drop_replica")
        return await _create_replicated(
            etcd, cache, new, region, fallback, init_replica, drop_replica
        )
    volume, node = cache.place(region, fallback)  # PlacementError propagates
    record = _record(new, volume)
    key, revision = await _write_record(etcd, cache, record)
    try:
        await init_on_node(node, new.name)
    except BaseException as exc:
        # BaseException: a create cancelled mid-init (client gone, edge draining)
        # must not leave a record that routes to a repository no node has.
        rolled_back = await _roll_back(etcd, key, revision)
        log.warning(
            "init of %s on %s failed (%r); record rolled back: %s",
            new.name,
            node.node_id,
            exc,
            rolled_back,
        )
        raise
    cache.add_created(record)
    return RepoLocation(new.name, volume.region, volume.volume_id, node.node_id, node.http_url)


async def _create_replicated(
    etcd: EtcdClient,
    cache: RoutingCache,
    new: NewRepo,
    region: Region,
    fallback: Region | None,
    init_replica: InitOnNode,
    drop_replica: DropOnNode,
) -> RepoLocation:
    quorum = new.write_quorum()
    # PlacementError propagates
    placed = cache.place_replicas(region, new.replicas, fallback, new.replica_regions)
    home, home_node = placed[0]
    record = _record(
        new,
        home,
        replicas=tuple(volume.volume_id for volume, _ in placed),
        sync_replicas=quorum,
    )
    key, revision = await _write_record(etcd, cache, record)
    made: list[NodeRecord] = []
    failures: list[Exception] = []

    async def init_one(node: NodeRecord) -> None:
        try:
            await init_replica(node, new.name)
        except Exception as exc:  # kept, so the caller hears the node's own error
            failures.append(exc)
        else:
            made.append(node)

    try:
        async with trio.open_nursery() as nursery:
            for _volume, node in placed:
                nursery.start_soon(init_one, node)
        if failures:
            raise failures[0]
    except BaseException as exc:
        rolled_back = await _roll_back(etcd, key, revision, cache.keys.repl_repo(new.name))
        with trio.move_on_after(ROLLBACK_TIMEOUT, shield=True):
            for node in made:
                try:
                    await drop_replica(node, new.name)
                except Exception as drop_exc:  # best effort: an orphan dir routes nowhere
                    log.warning(
                        "dropping replica of %s on %s: %r", new.name, node.node_id, drop_exc
                    )
        log.warning(
            "init of replicated %s failed (%r); rolled back: %s", new.name, exc, rolled_back
        )
        raise
    cache.add_created(record)
    return RepoLocation(
        new.name, home.region, home.volume_id, home_node.node_id, home_node.http_url
    )


def _record(
    new: NewRepo,
    home: VolumeRecord,
    *,
    replicas: tuple[VolumeId, ...] = (),
    sync_replicas: int = 0,
) -> RepoRecord:
    return RepoRecord(
        new.name,
        home.volume_id,
        home.region,
        round(time.time(), 3),
        owner=new.owner,
        public=new.public,
        readers=new.readers,
        writers=new.writers,
        replicas=replicas,
        sync_replicas=sync_replicas,
    )


async def _write_record(
    etcd: EtcdClient, cache: RoutingCache, record: RepoRecord
) -> tuple[str, int]:
    """The create-if-absent txn: (key, the revision it was written at)."""
    keys = cache.keys
    key = keys.repo(record.name)
    value = encode_repo(record)
    ops = [codec.put_op(key, value)]
    put_keys = [key]
    if record.replicated:
        put_keys += [keys.repl_applied(record.name, v) for v in record.replicas]
        ops += [codec.put_op(k, encode_applied(0)) for k in put_keys[1:]]
    try:
        txn = await etcd.txn([codec.compare_absent(key)], ops)
    except EtcdOutcomeUnknown as exc:
        # The client gets 503, so the record must not appear later (unsettled.py).
        cache.unsettled.add(key, value, tuple(put_keys))
        raise StoreUnavailable(f"create {key}: {exc}") from exc
    except EtcdError as exc:
        raise StoreUnavailable(f"create {key}: {exc}") from exc
    if not txn.succeeded:
        raise AlreadyExists(f"repository {record.name} already exists")
    return key, txn.revision


async def _roll_back(
    etcd: EtcdClient, key: str, created_revision: int, consensus_prefix: str | None = None
) -> bool:
    """Delete the record written at `created_revision`, if it is still that one
    (and, for a replicated create, the applied keys written with it)."""
    ops = [codec.delete_op(key)]
    if consensus_prefix is not None:
        ops.append(codec.delete_op(consensus_prefix, prefix=True))
    with trio.move_on_after(ROLLBACK_TIMEOUT, shield=True):
        try:
            compare = codec.compare_mod_revision(key, created_revision)
            return (await etcd.txn([compare], ops)).succeeded
        except EtcdError as exc:
            log.error("rollback of %s failed: %s", key, exc)
    return False
