"""Keeping an in-memory mirror equal to an etcd prefix: list, then watch.

A broken watch stream resumes after the last applied event; a compacted one
relists. Used by the edge's routing cache.
"""

from __future__ import annotations

import logging
import random
from typing import Protocol

import trio

from routing.etcd import (
    EtcdClient,
    EtcdError,
    EtcdUnavailable,
    KeyValue,
    Watch,
    WatchCompacted,
    WatchEvent,
)

log = logging.getLogger(__name__)


class PrefixMirror(Protocol):
    """What a cache implements to be fed by `mirror_prefix`."""

    def reset(self, kvs: list[KeyValue], revision: int) -> None:
        """Replace everything with this snapshot (the first list, or a relist)."""

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        """Apply events in order; `revision` is the last event's mod revision."""

    def set_synced(self, synced: bool) -> None:
        """Called on changes only: False while the watch is down, True once it is up."""


class _Backoff:
    """Exponential, capped, jittered (so edges do not reconnect in lockstep)."""

    def __init__(self, minimum: float, maximum: float) -> None:
        self._minimum = minimum
        self._maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        delay: float = min(self._maximum, self._minimum * 2.0**self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self.failures = 0


class _Mirroring:
    def __init__(
        self, client: EtcdClient, prefix: str, mirror: PrefixMirror, backoff: _Backoff
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.mirror = mirror
        self.backoff = backoff
        self.next_revision: int | None = None  # None: the mirror needs a full list
        self.synced: bool | None = None
        self.health_failure: EtcdError | None = None

    def set_synced(self, synced: bool) -> None:
        """Tell the mirror about changes only, so it can log transitions."""
        if synced != self.synced:
            self.synced = synced
            self.mirror.set_synced(synced)

    async def relist(self) -> None:
        snapshot = await self.client.range(self.prefix, prefix=True)
        self.mirror.reset(snapshot.kvs, snapshot.revision)
        self.next_revision = snapshot.revision + 1
        self.set_synced(True)

    async def follow(self, health_interval: float) -> None:
        """Watch from `next_revision` until the stream fails; always raises."""
        assert self.next_revision is not None
        self.health_failure = None
        failure: EtcdError | None = None
        async with self.client.open_watch(self.prefix, self.next_revision) as watch:
            self.backoff.reset()
            self.set_synced(True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.check_health, watch, health_interval, nursery.cancel_scope)
                try:
                    async for batch in watch:
                        # The last event's revision, not the header's: a catch-up batch
                        # is capped at 1000 revisions but carries the store's current
                        # revision, so resuming from the header could skip events.
                        revision = batch.events[-1].kv.mod_revision
                        self.mirror.apply(batch.events, revision)
                        self.next_revision = revision + 1
                except EtcdError as exc:
                    failure = exc
                nursery.cancel_scope.cancel()
        raise failure or self.health_failure or EtcdUnavailable("etcd watch stopped")

    async def check_health(
        self, watch: Watch, interval: float, watch_scope: trio.CancelScope
    ) -> None:
        """A TCP connection to a hung etcd may never close: probe it, and drop the watch."""
        while True:
            await trio.sleep(interval)
            try:
                await watch.check_member()
            except EtcdUnavailable as exc:
                self.health_failure = exc
                watch_scope.cancel()
                return


async def mirror_prefix(
    client: EtcdClient,
    prefix: str,
    mirror: PrefixMirror,
    *,
    retry_min: float = 0.1,
    retry_max: float = 5.0,
    health_interval: float = 5.0,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep `mirror` equal to the keys under `prefix`; runs until cancelled.

    List -> reset -> synced -> started, then watch. A broken stream resumes the
    watch after the last applied event (no relist); a compacted one relists.
    `apply` gets the revision of the batch's last event.
    """
    state = _Mirroring(client, prefix, mirror, _Backoff(retry_min, retry_max))
    started = False
    while True:
        try:
            if state.next_revision is None:
                await state.relist()
                if not started:
                    task_status.started()
                    started = True
            await state.follow(health_interval)
        except WatchCompacted as exc:
            log.info("mirror of %s: %s; relisting", prefix, exc)
            state.set_synced(False)
            state.next_revision = None
            # Relist at once; only a repeat (no watch opened since) backs off.
            delay = state.backoff.next_delay()
            if state.backoff.failures > 1:
                await trio.sleep(delay)
        except EtcdUnavailable as exc:
            state.set_synced(False)
            delay = state.backoff.next_delay()
            # The cache logs the outage once (DEGRADED); each retry after the first is detail.
            level = logging.WARNING if state.backoff.failures == 1 else logging.DEBUG
            log.log(
                level, "mirror of %s: etcd unavailable (%s); retry in %.2fs", prefix, exc, delay
            )
            await trio.sleep(delay)
        except EtcdError as exc:
            # Something this client cannot follow (e.g. an oversized message): start
            # over from a fresh list rather than replaying the same message forever.
            state.set_synced(False)
            state.next_revision = None
            delay = state.backoff.next_delay()
            log.warning("mirror of %s: %s; relisting in %.2fs", prefix, exc, delay)
            await trio.sleep(delay)
