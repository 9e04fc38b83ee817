"""Creating a repository: place it, record it, have its node init it.

The record is written in a create-if-absent transaction, so two edges racing
to create one name give one success and one AlreadyExists. Only then is the
node asked to `git init --bare`; if that fails (or the caller gives up), the
record is deleted again, but only if it is still the one written here
(compare mod_revision), so a later create by someone else is never undone.

The node call is injected (`InitOnNode`): routing knows how to record a
repository, not how to talk to a node's API.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from routing.cache import RoutingCache
from routing.errors import AlreadyExists, StoreUnavailable
from routing.etcd import EtcdClient, EtcdError
from routing.model import NodeRecord, Region, RepoLocation, RepoName, RepoRecord
from routing.schema import encode_repo

log = logging.getLogger(__name__)

InitOnNode = Callable[[NodeRecord, RepoName], Awaitable[None]]
"""Create the bare repository on the node; raise (anything) if it was not created."""

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


async def create_repo(
    etcd: EtcdClient,
    cache: RoutingCache,
    new: NewRepo,
    region: Region,
    fallback: Region | None,
    init_on_node: InitOnNode,
) -> RepoLocation:
    """Place, record (create-if-absent), then init on the node; roll back on failure.

    Raises PlacementError (no live volume), AlreadyExists, StoreUnavailable, or
    whatever `init_on_node` raised (after the rollback).
    """
    volume, node = cache.place(region, fallback)  # PlacementError propagates
    record = RepoRecord(
        new.name,
        volume.volume_id,
        volume.region,
        round(time.time(), 3),
        owner=new.owner,
        public=new.public,
        readers=new.readers,
        writers=new.writers,
    )
    key = cache.keys.repo(new.name)
    try:
        txn = await etcd.create(key, encode_repo(record))
    except EtcdError as exc:
        raise StoreUnavailable(f"create {key}: {exc}") from exc
    if not txn.succeeded:
        raise AlreadyExists(f"repository {new.name} already exists")
    try:
        await init_on_node(node, new.name)
    except BaseException as exc:
        # BaseException: a create cancelled mid-init (client gone, edge draining)
        # must not leave a record that routes to a repository no node has.
        rolled_back = await _roll_back(etcd, key, txn.revision)
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


async def _roll_back(etcd: EtcdClient, key: str, created_revision: int) -> bool:
    """Delete the record written at `created_revision`, if it is still that one."""
    with trio.move_on_after(ROLLBACK_TIMEOUT, shield=True):
        try:
            return (await etcd.delete_if_unchanged(key, created_revision)).succeeded
        except EtcdError as exc:
            log.error("rollback of %s failed: %s", key, exc)
    return False
