"""Who may start a git operation now: token buckets and fair slot queues, sans-IO.

Pure bookkeeping, fed the time by the caller (`now`, seconds on any monotonic
clock) and told of grants through a callback; edge/limits.py puts it on trio.

- `BucketTable`: one token bucket per key (user, client address). An idle key's
  bucket refills to full, and a full bucket is the same as none, so such
  entries are dropped; past `max_keys` the least recently used go too, so a
  flood of addresses costs a bounded dict (each evicted key starts full again).
- `Slots`: at most `limit` holders, at most `max_queue` waiters, then a refusal
  (Gitaly's `max_per_repo`, `max_queue_size`). With `owner_cap` below `limit`
  it is a fair share: one owner (a user, or an anonymous address) holds at
  most `owner_cap` slots and has at most `owner_queue_cap` waiters, and a freed
  slot goes to the waiting owner who holds fewest, so one party cannot take a
  node's capacity from everyone else.
- `SlotTable`: `Slots` per key (a repository, a node), dropped when nobody
  holds or waits: its size is bounded by the operations in flight.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field


class TokenBucket:
    """`burst` tokens, refilled at `per_second`; an operation takes one."""

    __slots__ = ("burst", "per_second", "stamp", "tokens")

    def __init__(self, per_second: float, burst: float, now: float) -> None:
        self.per_second = per_second
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.per_second)
        self.stamp = max(self.stamp, now)

    def wait_for(self, now: float, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0.0: now), taking none."""
        self._refill(now)
        if self.tokens >= cost:
            return 0.0
        return (cost - self.tokens) / self.per_second

    def take(self, now: float, cost: float = 1.0) -> float:
        """Take `cost` tokens and return 0.0, or take none and return the wait."""
        wait = self.wait_for(now, cost)
        if wait == 0.0:
            self.tokens -= cost
        return wait

    def full(self, now: float) -> bool:
        self._refill(now)
        return self.tokens >= self.burst


class BucketTable:
    """A token bucket per key, `per_minute` and `burst` each; 0 per minute: no limit."""

    def __init__(self, per_minute: float, burst: int, max_keys: int) -> None:
        self.per_second = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.evicted = 0
        """Keys dropped while their bucket was not full (their state was lost)."""

    @property
    def enabled(self) -> bool:
        return self.per_second > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, key: str, now: float) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._make_room(now)
            bucket = self._buckets[key] = TokenBucket(self.per_second, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def _make_room(self, now: float) -> None:
        """Drop every full bucket (nothing lost); if that leaves the table over three
        quarters full, the least recently used down to that. One sweep per quarter
        of `max_keys` new keys: a flood costs O(1) per key, not a scan each."""
        self.sweep(now)
        keep = self.max_keys * 3 // 4
        while len(self._buckets) > keep:
            self._buckets.popitem(last=False)
            self.evicted += 1

    def take(self, key: str, now: float) -> float:
        """0.0 and one token taken, or the seconds until `key` has one."""
        if not self.enabled:
            return 0.0
        return self._bucket(key, now).take(now)

    def wait_for(self, key: str, now: float) -> float:
        """Like `take`, but takes nothing: is `key` allowed one more now?"""
        if not self.enabled:
            return 0.0
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.wait_for(now)

    def sweep(self, now: float) -> None:
        """Drop full buckets: an idle key's state is the same as none."""
        for key in [k for k, b in self._buckets.items() if b.full(now)]:
            del self._buckets[key]


@dataclass(eq=False)
class Ticket:
    """One request for a slot: waiting until `granted`, or holding it."""

    owner: str
    granted: bool = False
    done: bool = False


@dataclass
class Slots:
    """Holders and a bounded queue of waiters for one key (see the module doc)."""

    limit: int
    max_queue: int
    on_grant: Callable[[Ticket], None]
    owner_cap: int = 0
    """Most slots one owner may hold; 0: `limit` (no fair share)."""
    owner_queue_cap: int = 0
    """Most waiters one owner may have; 0: `max_queue`."""
    held: int = 0
    holding: Counter[str] = field(default_factory=Counter)
    waiters: deque[Ticket] = field(default_factory=deque)
    queued_by: Counter[str] = field(default_factory=Counter)

    @property
    def idle(self) -> bool:
        return self.held == 0 and not self.waiters

    def _cap(self) -> int:
        return self.owner_cap or self.limit

    def _grantable(self, owner: str) -> bool:
        return self.held < self.limit and self.holding[owner] < self._cap()

    def request(self, owner: str) -> Ticket | None:
        """A granted ticket, a waiting one, or None: the queue (or the owner's share
        of it) is full, and the caller refuses."""
        ticket = Ticket(owner)
        if self._grantable(owner):
            self._grant(ticket)
            return ticket
        if len(self.waiters) >= self.max_queue:
            return None
        if self.queued_by[owner] >= (self.owner_queue_cap or self.max_queue):
            return None
        self.waiters.append(ticket)
        self.queued_by[owner] += 1
        return ticket

    def _grant(self, ticket: Ticket) -> None:
        ticket.granted = True
        self.held += 1
        self.holding[ticket.owner] += 1

    def finish(self, ticket: Ticket) -> None:
        """The holder is done, or the waiter gave up; slots freed go to waiters."""
        if ticket.done:
            return
        ticket.done = True
        if ticket.granted:
            self.held -= 1
            self.holding[ticket.owner] -= 1
            if not self.holding[ticket.owner]:
                del self.holding[ticket.owner]
        else:
            self.waiters.remove(ticket)
            self._unqueue(ticket.owner)
        self._promote()

    def _unqueue(self, owner: str) -> None:
        self.queued_by[owner] -= 1
        if not self.queued_by[owner]:
            del self.queued_by[owner]

    def _promote(self) -> None:
        """Fill free slots: each goes to the grantable waiter whose owner holds fewest,
        the earliest of those (FIFO among equals)."""
        while self.held < self.limit and self.waiters:
            best: Ticket | None = None
            for ticket in self.waiters:
                if self._grantable(ticket.owner) and (
                    best is None or self.holding[ticket.owner] < self.holding[best.owner]
                ):
                    best = ticket
            if best is None:
                return  # every waiter's owner is at its cap
            self.waiters.remove(best)
            self._unqueue(best.owner)
            self._grant(best)
            self.on_grant(best)


class SlotTable:
    """`Slots` per key, made on first use and dropped once idle."""

    def __init__(
        self,
        limit: int,
        max_queue: int,
        on_grant: Callable[[Ticket], None],
        *,
        owner_share: float = 1.0,
    ) -> None:
        self.limit = limit
        self.max_queue = max_queue
        self._on_grant = on_grant
        # A share is a fraction of the slots (and of the queue), at least one of each.
        self._owner_cap = max(1, math.floor(limit * owner_share)) if owner_share < 1 else 0
        self._owner_queue_cap = (
            max(1, math.floor(max_queue * owner_share)) if owner_share < 1 else 0
        )
        self._slots: dict[str, Slots] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def __len__(self) -> int:
        return len(self._slots)

    def request(self, key: str, owner: str) -> Ticket | None:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = Slots(
                self.limit,
                self.max_queue,
                self._on_grant,
                owner_cap=self._owner_cap,
                owner_queue_cap=self._owner_queue_cap,
            )
        ticket = slots.request(owner)
        if slots.idle:
            del self._slots[key]
        return ticket

    def finish(self, key: str, ticket: Ticket) -> None:
        slots = self._slots.get(key)
        if slots is None:
            return
        slots.finish(ticket)
        if slots.idle:
            del self._slots[key]

    def held(self) -> int:
        return sum(s.held for s in self._slots.values())

    def waiting(self) -> int:
        return sum(len(s.waiters) for s in self._slots.values())

    def holding(self, key: str, owner: str) -> int:
        slots = self._slots.get(key)
        return slots.holding[owner] if slots else 0
