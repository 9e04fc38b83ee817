"""Creates whose etcd write has an unknown outcome, settled once etcd answers again.

A create-if-absent transaction that etcd did not acknowledge (a majority of
members down, the write timeout hit) may still be applied: the leader that took
it keeps it in its log and can commit it when the quorum returns. The client was
told 503 and no node initialised the repository, so such a record must not
survive. Each one is remembered here (in memory, bounded), and `settle_forever`
deletes it once etcd answers, if it is still exactly the value we wrote. Once
any write of the new term commits, the old entry is either applied or gone for
good, so one successful settling transaction decides it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from routing import etcd_codec as codec
from routing.etcd import EtcdClient, EtcdError

log = logging.getLogger(__name__)

# Creates refused while etcd is down are few (each is a client's 503); past this
# many, the oldest is forgotten (and logged), so memory stays bounded.
MAX_UNSETTLED = 1000


@dataclass
class UnsettledWrites:
    """Key -> (the value we wrote there, every key that transaction put)."""

    _pending: dict[str, tuple[bytes, tuple[str, ...]]] = field(default_factory=dict)
    _added: trio.Event = field(default_factory=trio.Event)

    def add(self, key: str, value: bytes, put_keys: tuple[str, ...]) -> None:
        if len(self._pending) >= MAX_UNSETTLED:
            oldest = next(iter(self._pending))
            log.error("unsettled create of %s forgotten (over %d)", oldest, MAX_UNSETTLED)
            del self._pending[oldest]
        self._pending[key] = (value, put_keys)
        self._added.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def settle(self, etcd: EtcdClient) -> None:
        """One pass: each entry whose transaction etcd answers is settled and dropped."""
        for key, (value, put_keys) in list(self._pending.items()):
            deletes = [codec.delete_op(k) for k in put_keys]
            try:
                txn = await etcd.txn([codec.compare_value(key, value)], deletes)
            except EtcdError as exc:
                log.debug("unsettled create of %s: %s; retrying", key, exc)
                return
            self._pending.pop(key, None)
            if txn.succeeded:
                log.warning("create of %s was applied after its 503: record deleted", key)
            else:
                log.info("create of %s was never applied: settled", key)

    async def settle_forever(self, etcd: EtcdClient, interval: float = 1.0) -> None:
        while True:
            if not self._pending:
                self._added = trio.Event()
                await self._added.wait()
            await self.settle(etcd)
            if self._pending:
                await trio.sleep(interval)
