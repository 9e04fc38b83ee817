"""The node's side of replicated repositories: vote, transfer, apply.

docs/replication.md is the design. In short, for a push to a replicated
repository whose primary is this node (its pre-receive hook calls `vote`):
lock the repository, check this replica equals the consensus and the
push's old values, `git push` the new objects (from the quarantine) to the
other replicas' nodes until W-1 acked, then one fenced etcd txn. git then
updates the refs; post-receive calls `done`: unlock, reconcile if git did
not do all it was told, tell the peers to `apply`.

`apply` moves this replica's refs to the consensus (fold the log, one
`update-ref --stdin` transaction, old values checked) and publishes its
applied generation.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client import CollectorRegistry

from node.faultpoints import FaultPoints
from node.metrics import ReplicaMetrics
from node.peer_tls import PeerCerts, PeerTlsError
from node.repl_git import (
    GIT_TIMEOUT,
    GitFailed,
    list_refs,
    run_git,
    transfer_url,
    with_node_credential,
)
from node.repos import RepoStore
from routing import consensus as cons
from routing import etcd_codec as codec
from routing import snapshots
from routing.etcd import EtcdClient, EtcdError, EtcdUnavailable
from routing.model import NodeRecord, Region, RepoName, RepoRecord, VolumeId
from routing.replicas import durable_enough, regions_needed
from routing.schema import Keys, SchemaError, decode_node, decode_repo, decode_volume

log = logging.getLogger(__name__)

TRANSFER_TIMEOUT = 60.0  # one git push of a push's objects to one peer
HOLD_TIMEOUT = 60.0
PUBLISH_ATTEMPTS = 3  # the lock from vote to post-receive, should post-receive never come
NOTIFY_TIMEOUT = 5.0
RETRY_FIRST, RETRY_MAX = 0.5, 10.0  # a failed catch-up's backoff, seconds
INCOMING = "refs/gitedge/incoming/"
MOVED = "this copy of the repository is no longer one of its replicas (it moved): push again"


@dataclass(frozen=True)
class HookCall:
    name: RepoName
    git_dir: Path
    push_id: str
    updates: tuple[cons.RefUpdate, ...]
    quarantine: str
    user: str = ""
    """The user an edge pushed for (GITEDGE_USER); empty for the node's own transfers."""


class Replicator:
    def __init__(
        self,
        etcd: EtcdClient,
        keys: Keys,
        store: RepoStore,
        volume_id: VolumeId,
        admin_secret: str,
        *,
        snapshot_after: int = snapshots.SNAPSHOT_AFTER,
        faults: FaultPoints | None = None,
        metrics: ReplicaMetrics | None = None,
    ) -> None:
        self._snapshot_after = snapshot_after
        self._metrics = metrics or ReplicaMetrics(CollectorRegistry(), volume_id)
        self._faults = faults or FaultPoints()
        self._etcd = etcd
        self._keys = keys
        self._store = store
        self._volume_id = volume_id
        self._secret = admin_secret
        self._locks: dict[RepoName, trio.Semaphore] = {}
        self._holds: dict[tuple[str, str], tuple[trio.CancelScope, str]] = {}
        self._retrying: set[RepoName] = set()
        self._nursery: trio.Nursery | None = None
        self._http = httpx.AsyncClient(timeout=NOTIFY_TIMEOUT, trust_env=False)
        self._peers = PeerCerts()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background nursery for holds, late transfers and notifications."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.move_on_after(2, shield=True):
                await self._http.aclose()

    def lock(self, name: RepoName) -> trio.Semaphore:
        # A semaphore, not a Lock: the vote takes it, `done` (another request) gives it back.
        return self._locks.setdefault(name, trio.Semaphore(1))

    # -- vote (pre-receive) ------------------------------------------------------

    async def vote(self, call: HookCall) -> None:
        """Accept the push (return) or refuse it (PushRefused, its text for the pusher).

        The record is read under the lock: a replica-set change made on this node
        (node/repl_ops.py's seed and unhook take the same lock) is either wholly
        before this push or wholly after it. An unreplicated repository with the
        hooks still installed (during and after a move) is not voted, but its
        push holds the lock too, so a seed never reads refs a push is changing.
        """
        if call.user:
            # A user's push: git itself rejects its refs/gitedge/ updates ("deny
            # updating a hidden ref", transfer.hideRefs, node/git_proto.on_behalf_of)
            # but still lists them here; only the rest is voted on.
            kept = tuple(u for u in call.updates if not u.ref.startswith(cons.INTERNAL_REFS))
            if not kept:
                return
            call = dataclasses.replace(call, updates=kept)
        elif all(u.ref.startswith(INCOMING) for u in call.updates):
            return  # a peer's transfer into the hidden namespace: objects only
        lock = self.lock(call.name)
        with trio.fail_after(HOLD_TIMEOUT):
            await lock.acquire()
        try:
            record, record_rev = await self.record(call.name)
            if not record.replicated:
                if record.volume_id != self._volume_id:
                    raise cons.PushRefused(MOVED)
            elif self._volume_id not in record.replicas:
                raise cons.PushRefused(MOVED)
            else:
                await self._vote_locked(call, record, record_rev)
        except BaseException:
            lock.release()
            raise
        self._hold(call, lock, voted=record.replicated)

    async def _vote_locked(self, call: HookCall, record: RepoRecord, record_rev: int) -> None:
        await self._faults.reach("vote-start", call.name)
        state = await self.state(call.name)
        local = await self.local_refs(call.git_dir)
        new_checksum = cons.check_push(local, state, call.updates)
        txid = secrets.token_hex(8)
        await self._transfer(call, record, txid)
        await self._faults.reach("vote-before-commit", call.name)
        compares, ops, _new = cons.vote_txn(
            self._keys,
            call.name,
            record_rev,
            state,
            new_checksum,
            self._volume_id,
            txid,
            call.updates,
        )
        try:
            won = await self.commit(call.name, compares, ops, txid)
        except EtcdError as exc:
            raise cons.PushRefused(f"the consensus store is unreachable ({exc})") from None
        if not won:
            raise cons.PushRefused(
                "another push (or a replica-set change) came first: fetch first (git pull),"
                " then push again"
            )
        await self._faults.reach("vote-after-commit", call.name)
        log.info(
            "%s: generation %d by %s (%s)", call.name, state.generation + 1, txid, self._volume_id
        )

    async def commit(
        self, name: RepoName, compares: list[dict[str, Any]], ops: list[dict[str, Any]], txid: str
    ) -> bool:
        """One generation's fenced txn: True if it committed. An unknown outcome (a
        timed-out request) is read back: consensus wins, our txid says whether it is ours."""
        try:
            return (await self._etcd.txn(compares, ops)).succeeded
        except EtcdUnavailable as exc:
            log.warning("txn for %s ambiguous (%s): reading back", name, exc)
            return (await self.state(name)).txid == txid

    def _hold(self, call: HookCall, lock: trio.Semaphore, *, voted: bool) -> None:
        """Keep the lock until post-receive (`done`), or HOLD_TIMEOUT should it never come."""
        scope = trio.CancelScope()
        key = (str(call.git_dir), call.push_id)
        self._holds[key] = (scope, call.name.path)

        async def hold() -> None:
            try:
                with scope:
                    await trio.sleep(HOLD_TIMEOUT)
                    log.warning("%s: no post-receive within %ss", call.name, HOLD_TIMEOUT)
            finally:
                self._holds.pop(key, None)
                lock.release()
                if voted:
                    await self._after_push(call.name, call.git_dir)

        assert self._nursery is not None
        self._nursery.start_soon(hold)

    async def done(self, call: HookCall) -> None:
        held = self._holds.get((str(call.git_dir), call.push_id))
        if held is not None:
            held[0].cancel()

    async def _after_push(self, name: RepoName, git_dir: Path) -> None:
        """git has updated its refs: make sure they are the consensus, then tell the peers."""
        with trio.move_on_after(GIT_TIMEOUT, shield=True):
            try:
                await self.apply(name)
            except NotAReplica as exc:
                log.debug("%s", exc)
            except _APPLY_ERRORS as exc:
                log.error("%s: reconcile after push failed: %s; retrying", name, exc)
                await self._withdraw_false_claim(name)
                self._retry_later(name)
        assert self._nursery is not None
        self._nursery.start_soon(self._notify_peers, name)

    # -- catch-up (the watch) --------------------------------------------------------

    async def catch_up_all(self, *, own_too: bool = False) -> int:
        """Apply every replicated repository of this volume once; the etcd revision read.

        `own_too` (at node start): states this volume committed are applied too. A
        node SIGKILLed between its vote's txn and git's ref update comes back with
        its disk behind the applied generation that txn published, and no
        post-receive is coming to reconcile it.
        """
        listed = await self._etcd.range(self._keys.repl, prefix=True)
        for kv in listed.kvs:
            await self._catch_up(kv.key, kv.value, own_too=own_too)
        return listed.revision

    async def follow(self) -> None:
        """Forever: watch the consensus keys, apply what moved (relist after any break)."""
        delay = 0.2
        while True:
            try:
                revision = await self.catch_up_all()
                async with self._etcd.open_watch(self._keys.repl, revision + 1) as watch:
                    delay = 0.2
                    async for batch in watch:
                        for event in batch.events:
                            if event.kind == "PUT":
                                await self._catch_up(event.kv.key, event.kv.value)
            except (EtcdError, OSError) as exc:
                log.info("replication watch: %s; again in %.1fs", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _catch_up(self, key: str, value: bytes, *, own_too: bool = False) -> None:
        parsed = self._keys.parse_repl_key(key)
        if parsed is None or parsed[1] is not None or self._store.existing(parsed[0]) is None:
            return
        try:
            if not own_too and cons.decode_state(value, 0).volume == self._volume_id:
                return  # our own push: `done` reconciles it
            await self.apply(parsed[0])
        except NotAReplica as exc:
            log.debug("%s", exc)  # an orphan copy (removed while this node was down)
        except _APPLY_ERRORS as exc:
            log.warning("%s: catch-up failed: %s; retrying", parsed[0], exc)
            await self._withdraw_false_claim(parsed[0])
            self._retry_later(parsed[0])

    def _retry_later(self, name: RepoName) -> None:
        """Apply `name` again with backoff until it works (one retry task a repository).

        A failed catch-up (no in-sync replica up to fetch the objects from, etcd
        briefly away) is not left for the next push to repair."""
        if name in self._retrying or self._nursery is None:
            return
        self._retrying.add(name)
        self._nursery.start_soon(self._retry, name)

    async def _retry(self, name: RepoName) -> None:
        delay = RETRY_FIRST
        try:
            while self._store.existing(name) is not None:
                await trio.sleep(delay)
                try:
                    await self.apply(name)
                    log.info("%s: caught up on retry", name)
                    return
                except NotAReplica:
                    return
                except _APPLY_ERRORS as exc:
                    delay = min(delay * 2, RETRY_MAX)
                    log.info("%s: catch-up failed again (%s); next try in %.1fs", name, exc, delay)
        finally:
            self._retrying.discard(name)
            if self._store.existing(name) is None:
                self._metrics.forget(name.path)  # the copy is gone: nothing lags

    async def _withdraw_false_claim(self, name: RepoName) -> None:
        """After a failed apply: if this replica's applied key claims the consensus
        generation but its refs are not the consensus (a primary killed between
        its vote's txn and git's ref update, restarted while no replica it could
        fetch from was up), delete the claim so that no read is routed here. The
        apply that later succeeds publishes it again. Under the lock: our own
        vote's claim, ahead of git's ref update by design, is never withdrawn.
        """
        git_dir = self._store.existing(name)
        if git_dir is None:
            return
        try:
            async with self.lock(name):
                state = await self.state(name)
                key = self._keys.repl_applied(name, self._volume_id)
                kv = await self._etcd.get(key)
                if kv is None or cons.decode_applied(kv.value) != state.generation:
                    return
                if cons.checksum(await self.local_refs(git_dir)) == state.checksum:
                    return
                await self._etcd.delete_if_unchanged(key, kv.mod_revision)
                log.warning(
                    "%s: refs behind generation %d although published: claim withdrawn",
                    name,
                    state.generation,
                )
        except _APPLY_ERRORS as exc:
            log.warning("%s: could not check this replica's published generation: %s", name, exc)

    # -- transfer ------------------------------------------------------------------

    async def _transfer(self, call: HookCall, record: RepoRecord, txid: str) -> None:
        """The push's new objects onto W-1 other replicas, or PushRefused.

        The W copies (this one and W-1 acks) must span 2 regions where the
        replica set does (`routing.replicas.durable_enough`): an ack from this
        region's other replica alone is not enough while another region's
        replica has not acked.
        """
        copies = record.sync_replicas
        places = {v: await self._place(v) for v in record.replica_volumes}
        set_regions = [region for region, _ in places.values() if region is not None]
        here = places.get(self._volume_id, (None, None))[0] or Region("")
        peers = {
            volume: (region, node)
            for volume, (region, node) in places.items()
            if volume != self._volume_id and region is not None and node is not None
        }
        up = [r for r, _ in peers.values()]
        if len(up) + 1 < copies:
            raise cons.PushRefused(
                f"only {len(up) + 1} of the {copies} replicas this push must reach are up;"
                " nothing was changed, try again later"
            )
        if not durable_enough(here, up, copies, set_regions):
            raise cons.PushRefused(
                f"this push must reach replicas in {regions_needed(copies, set_regions)}"
                f" regions and no replica outside {here} is up; nothing was changed,"
                " try again later"
            )
        oids = sorted({u.new for u in call.updates if u.new != cons.ZERO_OID})
        if copies <= 1 or not oids:
            return
        acked: list[Region] = []
        pending = dict(peers)
        failures: list[str] = []
        settled = trio.Event()

        async def one(volume: VolumeId, region: Region, node: NodeRecord) -> None:
            try:
                await self._push_objects(call, node, txid, oids)
            except (OSError, trio.TooSlowError, GitFailed, PeerTlsError) as exc:
                failures.append(f"{node.node_id}: {exc}")
            else:
                acked.append(region)
            del pending[volume]
            still = [r for r, _ in pending.values()]
            if durable_enough(here, acked, copies, set_regions) or not durable_enough(
                here, acked + still, copies, set_regions
            ):
                settled.set()  # enough, or it can no longer be

        async with trio.open_nursery() as nursery:
            for volume, (region, node) in peers.items():
                nursery.start_soon(one, volume, region, node)
            await settled.wait()
            nursery.cancel_scope.cancel()  # a straggler catches up after the vote
        if not durable_enough(here, acked, copies, set_regions):
            log.warning("%s: transfer failed: %s", call.name, "; ".join(failures))
            raise cons.PushRefused(
                f"the push reached {len(acked) + 1} replicas in {len({here, *acked})} regions,"
                f" not the {copies} in {regions_needed(copies, set_regions)} regions it needs;"
                " nothing was changed, try again later"
            )

    async def _push_objects(
        self, call: HookCall, node: NodeRecord, txid: str, oids: list[str]
    ) -> None:
        env = with_node_credential(self._store.env(), self._secret, await self._peers.get(node))
        if call.quarantine:
            # Where receive-pack keeps the pack until pre-receive said yes (githooks(5)).
            env["GIT_OBJECT_DIRECTORY"] = call.quarantine
            env["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = str(call.git_dir / "objects")
        url = transfer_url(node.http_url, call.name)  # receive-pack without the peer's vote
        refspecs = [f"{oid}:{INCOMING}{txid}/{i}" for i, oid in enumerate(oids)]
        await run_git(
            ["push", "--quiet", "--no-verify", url, *refspecs],
            call.git_dir,
            env,
            TRANSFER_TIMEOUT,
        )

    # -- apply ---------------------------------------------------------------------

    async def apply(self, name: RepoName) -> int:
        """Move this replica's refs to the consensus; publish and return its generation."""
        git_dir = self._store.existing(name)
        if git_dir is None:
            raise ApplyError(f"{name} is not on this volume")
        await self._faults.reach("apply-start", name)
        with self._metrics.applying(name.path, not_lag=(NotAReplica,)):
            async with self.lock(name):
                for _attempt in range(PUBLISH_ATTEMPTS):
                    applied = await self._apply_locked(name, git_dir)
                    if applied is not None:
                        break
                else:
                    raise ApplyError(f"{name}: its replica set kept changing; applied nothing")
        generation, snapshot = applied
        if snapshot is not None:
            await self._write_snapshot(name, *snapshot)
        return generation

    async def _apply_locked(
        self, name: RepoName, git_dir: Path
    ) -> tuple[int, tuple[int, dict[str, str]] | None] | None:
        """One apply: the generation and, when one is due, a snapshot to write; None
        if the replica set changed before it could publish.

        The publish compares the record's mod_revision: a replica removed (and
        maybe added again, empty) meanwhile must not get an applied key that
        claims refs it no longer has. And without a consensus (factor 1) there is
        nothing to move to: moving to "no refs" would delete every ref.
        """
        record, record_rev = await self.record(name)
        if not record.replicated or self._volume_id not in record.replicas:
            raise NotAReplica(f"{name}: this volume holds no replica of it")
        state = await self.state(name)
        local = await self.local_refs(git_dir)
        snapshot: tuple[int, dict[str, str]] | None = None
        if cons.checksum(local) != state.checksum:
            history = await self.history(name)
            target = history.refs()
            if cons.checksum(target) != state.checksum:
                raise ApplyError(f"{name}: the log does not add up to the consensus checksum")
            due = history.wants_snapshot(self._snapshot_after)
            if due and history.generation == state.generation:
                snapshot = (history.generation, target)
            script = cons.update_ref_script(local, target)
            try:
                await self._update_refs(git_dir, script)
            except GitFailed:
                # Objects missing (this replica missed a transfer): take them from
                # a replica that is in sync, then try once more.
                await self._fetch_from_in_sync(name, git_dir, state.generation)
                await self._update_refs(git_dir, script)
            log.info("%s: applied generation %d", name, state.generation)
        await self.drop_hidden_refs(git_dir)
        published = await self._etcd.txn(
            [codec.compare_mod_revision(self._keys.repo(name), record_rev)],
            [
                codec.put_op(
                    self._keys.repl_applied(name, self._volume_id),
                    cons.encode_applied(state.generation),
                )
            ],
        )
        return (state.generation, snapshot) if published.succeeded else None

    async def _update_refs(self, git_dir: Path, script: bytes) -> None:
        await run_git(
            ["update-ref", "--stdin", "-z"], git_dir, self._store.env(), GIT_TIMEOUT, script
        )

    async def _fetch_from_in_sync(self, name: RepoName, git_dir: Path, generation: int) -> None:
        record, _ = await self.record(name)
        for volume in record.replica_volumes:
            if volume == self._volume_id:
                continue
            kv = await self._etcd.get(self._keys.repl_applied(name, volume))
            node = await self.live_node(volume)
            if kv is None or node is None or cons.decode_applied(kv.value) != generation:
                continue
            try:
                await run_git(
                    [
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        "--no-write-fetch-head",
                        f"{node.http_url}/{name.path}.git",
                        f"+refs/*:{INCOMING}catchup/*",
                    ],
                    git_dir,
                    with_node_credential(
                        self._store.env(), self._secret, await self._peers.get(node)
                    ),
                    TRANSFER_TIMEOUT,
                )
                log.info("%s: fetched generation %d from %s", name, generation, node.node_id)
                return
            except (GitFailed, trio.TooSlowError, PeerTlsError) as exc:
                log.warning("%s: fetch from %s failed: %s", name, node.node_id, exc)
        raise ApplyError(f"{name}: no in-sync replica to fetch generation {generation} from")

    async def history(self, name: RepoName) -> snapshots.RefsHistory:
        """The newest snapshot and the log after it, read at one etcd revision."""
        listed = await self._etcd.range(self._keys.refs_repo(name), prefix=True)
        return snapshots.parse_history(self._keys, name, ((kv.key, kv.value) for kv in listed.kvs))

    async def consensus_refs(self, name: RepoName) -> dict[str, str]:
        return (await self.history(name)).refs()

    async def _write_snapshot(self, name: RepoName, generation: int, refs: dict[str, str]) -> None:
        """Snapshot `refs` as generation `generation` and trim the log below it
        (routing/snapshots.py says why that is safe at any moment). Best effort:
        a failure leaves the log as it was, and the next fold tries again."""
        chunks = snapshots.encode_snapshot(generation, refs)
        if len(chunks) > snapshots.MAX_SNAPSHOT_CHUNKS:
            log.warning(
                "%s: %d refs are too many to snapshot; the log keeps growing", name, len(refs)
            )
            return
        try:
            for index, chunk in enumerate(chunks):
                await self._etcd.put(self._keys.refs_snap_chunk(name, generation, index), chunk)
            compares, ops = snapshots.snapshot_txn(self._keys, name, generation)
            result = await self._etcd.txn(compares, ops)
        except EtcdError as exc:
            log.warning("%s: snapshot of generation %d not written: %s", name, generation, exc)
            return
        if result.succeeded:
            log.info("%s: snapshot of generation %d; log trimmed to it", name, generation)

    async def drop_hidden_refs(self, git_dir: Path) -> None:
        refs = await list_refs(self._store.env(), git_dir, INCOMING)
        if refs:
            script = "".join(f"delete {ref}\0\0" for ref in refs).encode()
            await self._update_refs(git_dir, script)

    async def _notify_peers(self, name: RepoName) -> None:
        try:
            record, _ = await self.record(name)
        except (EtcdError, SchemaError, ApplyError):
            return
        for volume in record.replica_volumes:
            if volume == self._volume_id:
                continue
            node = await self.live_node(volume)
            if node is None:
                continue
            try:
                with trio.fail_after(NOTIFY_TIMEOUT):
                    await self._notify(node, name)
            except (httpx.HTTPError, trio.TooSlowError, PeerTlsError, OSError) as exc:
                log.info("%s: telling %s to apply failed: %r", name, node.node_id, exc)

    async def _notify(self, node: NodeRecord, name: RepoName) -> None:
        url = f"{node.http_url}/_gitedge/repl/apply"
        body, headers = {"name": name.path}, {"authorization": f"Bearer {self._secret}"}
        peer = await self._peers.get(node)
        if peer is None:
            await self._http.post(url, json=body, headers=headers)
            return
        # Trusting exactly the pinned certificate: the credential goes to no one else.
        async with httpx.AsyncClient(
            timeout=NOTIFY_TIMEOUT, trust_env=False, verify=peer.ssl_context()
        ) as client:
            await client.post(url, json=body, headers=headers)

    # -- etcd and git --------------------------------------------------------------

    async def record(self, name: RepoName) -> tuple[RepoRecord, int]:
        kv = await self._etcd.get(self._keys.repo(name))
        if kv is None:
            raise ApplyError(f"{name} has no record")
        return decode_repo(kv.value), kv.mod_revision

    async def state(self, name: RepoName) -> cons.ConsensusState:
        kv = await self._etcd.get(self._keys.repl_state(name))
        return cons.ConsensusState() if kv is None else cons.decode_state(kv.value, kv.mod_revision)

    async def live_node(self, volume_id: VolumeId) -> NodeRecord | None:
        return (await self._place(volume_id))[1]

    async def _place(self, volume_id: VolumeId) -> tuple[Region | None, NodeRecord | None]:
        """The volume's region (None: no such volume) and its live node (None: down)."""
        kv = await self._etcd.get(self._keys.volume(volume_id))
        if kv is None:
            return None, None
        volume = decode_volume(kv.value)
        node_kv = await self._etcd.get(self._keys.node(volume.node_id))
        if node_kv is None:
            return volume.region, None
        node = decode_node(node_kv.value)
        serves = any(v.volume_id == volume_id for v in node.volumes)
        return volume.region, node if serves else None

    async def local_refs(self, git_dir: Path) -> dict[str, str]:
        refs = await list_refs(self._store.env(), git_dir, "refs/")
        return {r: o for r, o in refs.items() if not r.startswith(cons.INTERNAL_REFS)}


class ApplyError(Exception):
    pass


_APPLY_ERRORS = (ApplyError, GitFailed, SchemaError, EtcdError, OSError, trio.TooSlowError)


class NotAReplica(ApplyError):
    """This volume has a copy the record no longer lists (removed while its node was down)."""
