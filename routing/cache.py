"""The routing cache: a watch-fed mirror of repos, volumes, nodes and accounts.

The hot path (`resolve`) is dict lookups. etcd is read only on a miss (a
repository created through another edge a moment ago, before its watch event
arrived), once per miss. `mirror_prefix` (routing/mirror.py) feeds `reset` and
`apply`; while its watch is down `synced` is False and `/readyz` says so, but
known repositories keep routing from what is here.

Only this class changes its tables: the mirror through `reset`/`apply`, this
edge's own writes (routing/writes.py, routing/accounts.py) through `add_created`,
`put_*` and `drop_*` so they are visible before their watch events arrive.
Everyone else sees read-only views.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, TypeVar

import trio

from routing.consensus import ConsensusState, decode_applied, decode_state
from routing.errors import (
    ConsensusUnavailable,
    NoReplicaInSync,
    NotFound,
    StoreUnavailable,
    Unroutable,
)
from routing.etcd import EtcdClient, EtcdError, KeyValue, WatchEvent
from routing.model import (
    DrainRecord,
    KeyRecord,
    NodeId,
    NodeRecord,
    Region,
    RepoLocation,
    RepoName,
    RepoRecord,
    TokenRecord,
    UserRecord,
    VolumeId,
    VolumeRecord,
)
from routing.placement import choose_replicas, choose_volume, placeable_nodes
from routing.regions import RttTable
from routing.replicas import ReplicaStatus, choose_read_replica, replica_statuses
from routing.schema import (
    Keys,
    SchemaError,
    decode_drain,
    decode_key_record,
    decode_node,
    decode_repo,
    decode_token,
    decode_user,
    decode_volume,
)
from routing.unsettled import UnsettledWrites

__all__ = ["CacheStats", "RoutingCache"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class CacheStats:
    etcd_reads: int = 0  # reads made on behalf of lookups (misses)
    miss_reads_refused: int = 0
    resets: int = 0
    events: int = 0


MISS_READS_PER_S = 50.0
MISS_READ_BURST = 100.0


class TokenBucket:
    def __init__(self, rate: float, burst: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._last = 0.0

    def take(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class RoutingCache:
    def __init__(self, keys: Keys, etcd: EtcdClient, *, rtt: RttTable | None = None) -> None:
        self.keys: Final = keys
        self._rtt = rtt or RttTable()
        self._etcd = etcd
        self._repos: dict[RepoName, RepoRecord] = {}
        self._volumes: dict[VolumeId, VolumeRecord] = {}
        self._nodes: dict[NodeId, NodeRecord] = {}
        self._repo_counts: Counter[VolumeId] = Counter()
        self._users: dict[str, UserRecord] = {}
        self._keys_by_fingerprint: dict[str, KeyRecord] = {}
        self._tokens: dict[str, TokenRecord] = {}
        self._consensus: dict[RepoName, ConsensusState] = {}
        self._applied: dict[RepoName, dict[VolumeId, int]] = {}
        self._drains: dict[NodeId, DrainRecord] = {}
        # Live read-only views: the tables are cleared and refilled, never replaced.
        self.repos: Final[Mapping[RepoName, RepoRecord]] = MappingProxyType(self._repos)
        self.volumes: Final[Mapping[VolumeId, VolumeRecord]] = MappingProxyType(self._volumes)
        self.nodes: Final[Mapping[NodeId, NodeRecord]] = MappingProxyType(self._nodes)
        self.repo_counts: Final[Mapping[VolumeId, int]] = MappingProxyType(self._repo_counts)
        self.users: Final[Mapping[str, UserRecord]] = MappingProxyType(self._users)
        self.keys_by_fingerprint: Final[Mapping[str, KeyRecord]] = MappingProxyType(
            self._keys_by_fingerprint
        )
        self.tokens: Final[Mapping[str, TokenRecord]] = MappingProxyType(self._tokens)
        self.drains: Final[Mapping[NodeId, DrainRecord]] = MappingProxyType(self._drains)
        self.stats: Final = CacheStats()
        self._synced = False
        self._ever_synced = False
        self._revision = 0
        # Set (and replaced) on every change the mirror applies: what a read
        # waiting for a replica to catch up sleeps on (no polling).
        self._changed = trio.Event()
        self._miss_budget = TokenBucket(MISS_READS_PER_S, MISS_READ_BURST)
        # Creates etcd may apply after their 503; the edge settles them (unsettled.py).
        self.unsettled: Final = UnsettledWrites()

    @property
    def synced(self) -> bool:
        """False while the watch is down: lookups still answer from what is here."""
        return self._synced

    @property
    def revision(self) -> int:
        """The etcd revision this cache reflects (the last list or event applied)."""
        return self._revision

    # -- fed by mirror_prefix -------------------------------------------------

    def reset(self, kvs: list[KeyValue], revision: int) -> None:
        for table in self._tables():
            table.clear()
        self._repo_counts.clear()
        for kv in kvs:
            self._put(kv.key, kv.value)
        self._revision = revision
        self.stats.resets += 1
        self._notify_changed()

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        for event in events:
            if event.kind == "PUT":
                self._put(event.kv.key, event.kv.value)
            else:
                self._delete(event.kv.key)
        self._revision = max(self._revision, revision)
        self.stats.events += len(events)
        self._notify_changed()

    def _notify_changed(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def set_synced(self, synced: bool) -> None:
        """The mirror's watch is up (True) or down; one log line per transition.

        Losing it after a first sync is the edge's degraded mode (etcd without
        quorum or unreachable): reads go on from what is mirrored here, pushes
        to replicated repositories are refused (`DEGRADED`, then `RECOVERED`).
        """
        if synced == self._synced:
            return
        if synced and not self._ever_synced:
            log.info("routing cache in sync")
        elif synced:
            log.warning(
                "edge RECOVERED: etcd reachable again; pushes to replicated repositories"
                " are accepted again"
            )
        else:
            log.warning(
                "edge DEGRADED: etcd unreachable (watch down); reads are served from the"
                " replicas last known in sync, pushes to replicated repositories are refused"
            )
        self._ever_synced = self._ever_synced or synced
        self._synced = synced

    def _put(self, key: str, value: bytes) -> None:
        keys = self.keys
        try:
            if key.startswith(keys.repos):
                self._add_repo(decode_repo(value))
            elif key.startswith(keys.volumes):
                volume = decode_volume(value)
                self._volumes[volume.volume_id] = volume
            elif key.startswith(keys.nodes):
                node = decode_node(value)
                self._nodes[node.node_id] = node
            elif key.startswith(keys.users):
                self.put_user(decode_user(value))
            elif key.startswith(keys.keys):
                self.put_key(decode_key_record(value))
            elif key.startswith(keys.tokens):
                self.put_token(decode_token(value))
            elif key.startswith(keys.repl):
                self._put_repl(key, value)
            elif key.startswith(keys.drains):
                self.put_drain(decode_drain(value))
        except SchemaError as exc:
            # One bad record must not stop routing for everything else. What it
            # replaced is gone too: a key overwritten with garbage is no key.
            log.warning("ignoring malformed etcd record %s: %s", key, exc)
            self._delete(key)

    def _delete(self, key: str) -> None:
        keys = self.keys
        rest = key
        if key.startswith(keys.repos):
            rest = key.removeprefix(keys.repos)
            try:
                name = RepoName.parse(rest)
            except ValueError:
                return
            record = self._repos.pop(name, None)
            if record is not None:
                self._repo_counts.subtract(record.replica_volumes)
        elif key.startswith(keys.volumes):
            self._volumes.pop(VolumeId(key.removeprefix(keys.volumes)), None)
        elif key.startswith(keys.nodes):
            self._nodes.pop(NodeId(key.removeprefix(keys.nodes)), None)
        elif key.startswith(keys.users):
            self._users.pop(key.removeprefix(keys.users), None)
        elif key.startswith(keys.keys):
            self.drop_key(key.removeprefix(keys.keys))
        elif key.startswith(keys.tokens):
            self.drop_token(key.removeprefix(keys.tokens))
        elif key.startswith(keys.drains):
            self.drop_drain(NodeId(key.removeprefix(keys.drains)))
        elif key.startswith(keys.repl) and (parsed := keys.parse_repl_key(key)) is not None:
            name, volume = parsed
            if volume is None:
                self._consensus.pop(name, None)
            else:
                self._applied.get(name, {}).pop(VolumeId(volume), None)

    def _put_repl(self, key: str, value: bytes) -> None:
        parsed = self.keys.parse_repl_key(key)
        if parsed is None:
            return
        name, volume = parsed
        if volume is None:
            self._consensus[name] = decode_state(value, 0)
        else:
            self._applied.setdefault(name, {})[VolumeId(volume)] = decode_applied(value)

    def _tables(self) -> tuple[dict[Any, Any], ...]:
        return (
            self._repos,
            self._volumes,
            self._nodes,
            self._users,
            self._keys_by_fingerprint,
            self._tokens,
            self._consensus,
            self._applied,
            self._drains,
        )

    def _add_repo(self, record: RepoRecord) -> None:
        old = self._repos.get(record.name)
        if old is not None:
            self._repo_counts.subtract(old.replica_volumes)
        self._repos[record.name] = record
        self._repo_counts.update(record.replica_volumes)

    # -- this edge's own writes, ahead of their watch events -------------------------
    # The watch delivers the same change moments later; applying it twice is a no-op.

    def add_created(self, record: RepoRecord) -> None:
        """Record a repository this edge just created."""
        self._add_repo(record)

    def put_user(self, user: UserRecord) -> None:
        self._users[user.name] = user

    def put_key(self, key: KeyRecord) -> None:
        self._keys_by_fingerprint[key.fingerprint] = key

    def put_token(self, token: TokenRecord) -> None:
        self._tokens[token.token_id] = token

    def drop_key(self, fingerprint: str) -> None:
        """Forget a revoked SSH key: new connections with it are refused from now on."""
        self._keys_by_fingerprint.pop(fingerprint, None)

    def drop_token(self, token_id: str) -> None:
        """Forget a revoked token: requests with it are refused from now on."""
        self._tokens.pop(token_id, None)

    def put_drain(self, drain: DrainRecord) -> None:
        self._drains[drain.node_id] = drain

    def drop_drain(self, node_id: NodeId) -> None:
        self._drains.pop(node_id, None)

    @property
    def placeable_nodes(self) -> Mapping[NodeId, NodeRecord]:
        """The live nodes that may take a new repository or replica (not drained)."""
        return placeable_nodes(self._nodes, self._drains)

    # -- lookups ---------------------------------------------------------------

    async def _read_miss(self, key: str) -> bytes | None:
        """One etcd read for something not (yet) mirrored: created a moment ago
        through another edge, before its watch event arrived here.

        Misses are client-driven (any made-up repo name or token id is one), so
        they are rate limited: past the budget a miss is simply not found, and
        etcd never sees more than MISS_READS_PER_S from this edge.
        """
        if not self._miss_budget.take(trio.current_time()):
            self.stats.miss_reads_refused += 1
            return None
        self.stats.etcd_reads += 1
        try:
            kv = await self._etcd.get(key)
        except EtcdError as exc:
            raise StoreUnavailable(str(exc)) from exc
        return None if kv is None else kv.value

    async def record(self, name: RepoName) -> RepoRecord:
        """The repository's record: from memory, or one etcd read on a miss."""
        found = self._repos.get(name)
        if found is not None:
            return found
        raw = await self._read_miss(self.keys.repo(name))
        if raw is None:
            raise NotFound(name.path)
        try:
            record = decode_repo(raw)
        except SchemaError as exc:
            log.warning("malformed repo record %s: %s", name, exc)
            raise NotFound(name.path) from exc
        self._add_repo(record)
        return record

    async def _mirrored(
        self, table: dict[str, T], key: str, etcd_key: str, decode: Callable[[bytes], T]
    ) -> T | None:
        """`table[key]`, or one (rate-limited) etcd read on a miss."""
        found = table.get(key)
        if found is None:
            raw = await self._read_miss(etcd_key)
            if raw is None:
                return None
            try:
                found = decode(raw)
            except SchemaError:
                return None
            table[key] = found
        return found

    async def key_owner(self, fingerprint: str) -> str | None:
        """The user an SSH key (by SHA256 fingerprint) belongs to, if any."""
        found = await self._mirrored(
            self._keys_by_fingerprint, fingerprint, self.keys.key(fingerprint), decode_key_record
        )
        return found.user if found else None

    async def token(self, token_id: str) -> TokenRecord | None:
        return await self._mirrored(self._tokens, token_id, self.keys.token(token_id), decode_token)

    async def resolve(self, name: RepoName) -> RepoLocation:
        """Where to send git traffic for `name` right now."""
        return self._home(await self.record(name))

    def _home(self, record: RepoRecord) -> RepoLocation:
        name = record.name
        volume = self._volumes.get(record.volume_id)
        node = self._nodes.get(volume.node_id) if volume else None
        if volume is None or node is None:
            raise Unroutable(f"{name}: volume {record.volume_id} has no live node")
        if not any(v.volume_id == volume.volume_id for v in node.volumes):
            raise Unroutable(f"{name}: node {node.node_id} no longer serves {volume.volume_id}")
        return RepoLocation(name, volume.region, volume.volume_id, node.node_id, node.http_url)

    def consensus_generation(self, name: RepoName) -> int:
        state = self._consensus.get(name)
        return state.generation if state else 0

    def replica_statuses(self, record: RepoRecord) -> list[ReplicaStatus]:
        """Every replica of `record` with its state against the mirrored consensus."""
        state = self._consensus.get(record.name)
        return replica_statuses(
            record,
            state.generation if state else 0,
            self._applied.get(record.name, {}),
            self._volumes,
            self._nodes,
        )

    async def resolve_read(
        self, name: RepoName, region: Region, *, wait: float = 0.0, push: bool = False
    ) -> RepoLocation:
        """Where to send a clone, fetch, ls-remote (or push) from a client in `region`.

        Unreplicated: the home, as `resolve`. Replicated: the in-sync replica
        nearest `region` (routing/replicas.py). With none in sync, wait up to
        `wait` seconds for one, woken by each change the watch applies; then
        NoReplicaInSync. Never a replica behind the consensus.

        A `push` to a replicated repository needs etcd for its vote: while the
        watch is down (etcd unreachable or without quorum) it is refused here at
        once (ConsensusUnavailable) rather than after the node's etcd timeouts.
        Pushes never wait for a replica to catch up: none in sync fails at once.
        """
        record = await self.record(name)
        if not record.replicated:
            return self._home(record)
        if push and not self._synced:
            raise ConsensusUnavailable(f"{name}: push while the etcd watch is down")
        if push:
            wait = 0.0  # a push fails fast (issue 8); its client retries, a read's may not
        with trio.move_on_after(wait):
            while True:
                record = self._repos.get(name, record)
                chosen = choose_read_replica(self.replica_statuses(record), region, self._rtt)
                if chosen is not None and chosen.node is not None and chosen.region is not None:
                    node = chosen.node
                    return RepoLocation(
                        name, chosen.region, chosen.volume_id, node.node_id, node.http_url
                    )
                await self._changed.wait()
        raise NoReplicaInSync(f"{name}: no replica in sync with the consensus within {wait}s")

    def place(self, region: Region, fallback: Region | None) -> tuple[VolumeRecord, NodeRecord]:
        """A live volume for a new repository (raises PlacementError)."""
        volume = choose_volume(
            region, self._volumes.values(), self.placeable_nodes, self._repo_counts, fallback
        )
        return volume, self._nodes[volume.node_id]

    def place_replicas(
        self,
        region: Region,
        factor: int,
        fallback: Region | None,
        regions: Sequence[Region] = (),
    ) -> list[tuple[VolumeRecord, NodeRecord]]:
        """`factor` live volumes on distinct nodes, home first, then one in each of
        `regions` (raises PlacementError)."""
        chosen = choose_replicas(
            region,
            factor,
            self._volumes.values(),
            self.placeable_nodes,
            self._repo_counts,
            fallback,
            regions,
        )
        return [(volume, self._nodes[volume.node_id]) for volume in chosen]
