"""The node's side of replica-set changes, repair and verify (routing/replica_changes.py,
routing/consistency.py). Each runs under the repository's lock (the one a vote
holds from pre-receive to post-receive), so it sees this copy's refs between
pushes, never in the middle of one.

    seed    the home of an unreplicated repository makes it replicated: hooks
            installed, then one fenced txn writes the replicated record and
            generation G+1 = this copy's refs
    repair  this replica's refs become the consensus: generation G+1
    unhook  an unreplicated repository's hooks and hidden refs removed
    refs    this copy's refs and checksum
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from node.replication import Replicator
from node.repos import (
    RepoStore,
    install_replication_hooks,
    remove_replication_hooks,
    replication_hooks_installed,
)
from routing import consensus as cons
from routing import etcd_codec as codec
from routing.model import RepoName, VolumeId
from routing.schema import Keys, encode_repo

log = logging.getLogger(__name__)

HOOK_GRACE = 1.0
"""After installing the hooks, before reading refs to seed: a receive-pack that
looked for pre-receive a moment before the hooks existed updates its refs right
after that lookup (receive-pack.c runs only the ref transaction in between);
this lets such a push land first, so the seed includes it."""


class OpRefused(Exception):
    """The operation does not apply to this copy now; the message says why."""


class ReplicaOps:
    def __init__(
        self, replicator: Replicator, store: RepoStore, keys: Keys, volume_id: VolumeId
    ) -> None:
        self._repl = replicator
        self._store = store
        self._keys = keys
        self._volume_id = volume_id

    def _git_dir(self, name: RepoName) -> Path:
        git_dir = self._store.existing(name)
        if git_dir is None:
            raise OpRefused(f"{name} is not on this volume")
        return git_dir

    async def seed(self, name: RepoName, added: VolumeId, sync_replicas: int) -> int:
        """Make this home's unreplicated repository replicated on (home, added)."""
        git_dir = self._git_dir(name)
        if not 1 <= sync_replicas <= 2 or added == self._volume_id:
            raise OpRefused("seed needs another volume and sync_replicas 1 or 2")
        if not await trio.to_thread.run_sync(replication_hooks_installed, git_dir):
            await trio.to_thread.run_sync(install_replication_hooks, git_dir)
            await trio.sleep(HOOK_GRACE)
        async with self._repl.lock(name):
            record, record_rev = await self._repl.record(name)
            if record.replicated:
                raise OpRefused(f"{name} is replicated already")
            if record.volume_id != self._volume_id:
                raise OpRefused(f"{name}'s home is not on this volume")
            new = record.with_replica(added, sync_replicas)
            extra = [
                codec.put_op(self._keys.repo(name), encode_repo(new)),
                codec.delete_op(self._keys.repl_applied(name, added)),
            ]
            generation, _moved = await self._reset(name, git_dir, record_rev, extra)
        log.info("%s: replicated on %s and %s from generation %d", name, *new.replicas, generation)
        return generation

    async def repair(self, name: RepoName, by: str) -> tuple[int, int]:
        """This replica's refs become the consensus: (new generation, refs moved)."""
        git_dir = self._git_dir(name)
        async with self._repl.lock(name):
            record, record_rev = await self._repl.record(name)
            if not record.replicated or self._volume_id not in record.replicas:
                raise OpRefused(f"this volume holds no replica of {name}")
            generation, moved = await self._reset(name, git_dir, record_rev)
        log.warning(
            "REPAIR %s requested by %s: the consensus is this replica's (%s) refs:"
            " generation %d, %d refs moved",
            name,
            by,
            self._volume_id,
            generation,
            moved,
        )
        return generation, moved

    async def _reset(
        self,
        name: RepoName,
        git_dir: Path,
        record_rev: int,
        extra: Sequence[dict[str, Any]] = (),
    ) -> tuple[int, int]:
        """One fenced txn: generation G+1 whose log entry moves the consensus to
        this copy's refs (plus `extra` ops); (G+1, refs moved). Lock held."""
        state = await self._repl.state(name)
        consensus = await self._repl.consensus_refs(name)
        local = await self._repl.local_refs(git_dir)
        updates = cons.reset_updates(consensus, local)
        txid = secrets.token_hex(8)
        compares, ops, new = cons.vote_txn(
            self._keys,
            name,
            record_rev,
            state,
            cons.checksum(local),
            self._volume_id,
            txid,
            updates,
        )
        if not await self._repl.commit(name, compares, [*ops, *extra], txid):
            raise OpRefused(f"{name} changed meanwhile (a push or a replica-set change); try again")
        return new.generation, len(updates)

    async def unhook(self, name: RepoName) -> None:
        """Hooks and hidden refs off a copy that is unreplicated again."""
        git_dir = self._git_dir(name)
        async with self._repl.lock(name):
            record, _rev = await self._repl.record(name)
            if record.replicated and self._volume_id in record.replicas:
                raise OpRefused(f"{name} is still replicated here")
            await self._repl.drop_hidden_refs(git_dir)
            await trio.to_thread.run_sync(remove_replication_hooks, git_dir)
        log.info("%s: replication hooks removed", name)

    async def refs(self, name: RepoName) -> dict[str, Any]:
        local = await self._repl.local_refs(self._git_dir(name))
        return {"refs": local, "checksum": cons.checksum(local)}
