"""The routing cache: a watch-fed mirror of repos, volumes and nodes.

The hot path (`resolve`) is dict lookups. etcd is read only on a miss (a
repository created through another edge a moment ago, before its watch event
arrived), once per miss. `mirror_prefix` (routing/etcd.py) feeds `reset` and
`apply`; while its watch is down `synced` is False and `/readyz` says so, but
known repositories keep routing from what is here.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from routing.etcd import EtcdClient, EtcdError, KeyValue, WatchEvent
from routing.model import (
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
from routing.placement import choose_volume
from routing.schema import (
    Keys,
    SchemaError,
    decode_key_record,
    decode_node,
    decode_repo,
    decode_token,
    decode_user,
    decode_volume,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class NotFound(LookupError):
    """No such repository in etcd."""


class Unroutable(Exception):
    """The repository exists but its volume's node is not live."""


class StoreUnavailable(Exception):
    """A miss could not be checked against etcd."""


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
    def __init__(self, keys: Keys, etcd: EtcdClient) -> None:
        self.keys = keys
        self._etcd = etcd
        self.repos: dict[RepoName, RepoRecord] = {}
        self.volumes: dict[VolumeId, VolumeRecord] = {}
        self.nodes: dict[NodeId, NodeRecord] = {}
        self.repo_counts: Counter[VolumeId] = Counter()
        self.users: dict[str, UserRecord] = {}
        self.keys_by_fingerprint: dict[str, KeyRecord] = {}
        self.tokens: dict[str, TokenRecord] = {}
        self.synced = False
        self.revision = 0
        self.stats = CacheStats()
        self._miss_budget = TokenBucket(MISS_READS_PER_S, MISS_READ_BURST)

    # -- fed by mirror_prefix -------------------------------------------------

    def reset(self, kvs: list[KeyValue], revision: int) -> None:
        for table in self._tables():
            table.clear()
        self.repo_counts.clear()
        for kv in kvs:
            self._put(kv.key, kv.value)
        self.revision = revision
        self.stats.resets += 1

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        for event in events:
            if event.kind == "PUT":
                self._put(event.kv.key, event.kv.value)
            else:
                self._delete(event.kv.key)
        self.revision = max(self.revision, revision)
        self.stats.events += len(events)

    def set_synced(self, synced: bool) -> None:
        if synced != self.synced:
            log.info("routing cache %s", "in sync" if synced else "OUT OF SYNC (watch down)")
        self.synced = synced

    def _put(self, key: str, value: bytes) -> None:
        keys = self.keys
        try:
            if key.startswith(keys.repos):
                self._add_repo(decode_repo(value))
            elif key.startswith(keys.volumes):
                volume = decode_volume(value)
                self.volumes[volume.volume_id] = volume
            elif key.startswith(keys.nodes):
                node = decode_node(value)
                self.nodes[node.node_id] = node
            elif key.startswith(keys.users):
                user = decode_user(value)
                self.users[user.name] = user
            elif key.startswith(keys.keys):
                ssh_key = decode_key_record(value)
                self.keys_by_fingerprint[ssh_key.fingerprint] = ssh_key
            elif key.startswith(keys.tokens):
                token = decode_token(value)
                self.tokens[token.token_id] = token
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
            record = self.repos.pop(name, None)
            if record is not None:
                self.repo_counts[record.volume_id] -= 1
        elif key.startswith(keys.volumes):
            self.volumes.pop(VolumeId(key.removeprefix(keys.volumes)), None)
        elif key.startswith(keys.nodes):
            self.nodes.pop(NodeId(key.removeprefix(keys.nodes)), None)
        elif key.startswith(keys.users):
            self.users.pop(key.removeprefix(keys.users), None)
        elif key.startswith(keys.keys):
            self.keys_by_fingerprint.pop(key.removeprefix(keys.keys), None)
        elif key.startswith(keys.tokens):
            self.tokens.pop(key.removeprefix(keys.tokens), None)

    def _tables(self) -> tuple[dict[Any, Any], ...]:
        return (
            self.repos,
            self.volumes,
            self.nodes,
            self.users,
            self.keys_by_fingerprint,
            self.tokens,
        )

    def _add_repo(self, record: RepoRecord) -> None:
        old = self.repos.get(record.name)
        if old is not None:
            self.repo_counts[old.volume_id] -= 1
        self.repos[record.name] = record
        self.repo_counts[record.volume_id] += 1

    def add_created(self, record: RepoRecord) -> None:
        """Record a repository this edge just created, before its watch event."""
        self._add_repo(record)

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
        found = self.repos.get(name)
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
            self.keys_by_fingerprint, fingerprint, self.keys.key(fingerprint), decode_key_record
        )
        return found.user if found else None

    async def token(self, token_id: str) -> TokenRecord | None:
        return await self._mirrored(self.tokens, token_id, self.keys.token(token_id), decode_token)

    async def resolve(self, name: RepoName) -> RepoLocation:
        """Where to send git traffic for `name` right now."""
        record = await self.record(name)
        volume = self.volumes.get(record.volume_id)
        node = self.nodes.get(volume.node_id) if volume else None
        if volume is None or node is None:
            raise Unroutable(f"{name}: volume {record.volume_id} has no live node")
        if not any(v.volume_id == volume.volume_id for v in node.volumes):
            raise Unroutable(f"{name}: node {node.node_id} no longer serves {volume.volume_id}")
        return RepoLocation(name, volume.region, volume.volume_id, node.node_id, node.http_url)

    def place(self, region: Region, fallback: Region | None) -> tuple[VolumeRecord, NodeRecord]:
        """A live volume for a new repository (raises PlacementError)."""
        volume = choose_volume(
            region, self.volumes.values(), self.nodes, self.repo_counts, fallback
        )
        return volume, self.nodes[volume.node_id]
