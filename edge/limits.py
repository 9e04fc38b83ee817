"""The edge's limits on git operations, failed authentications and API writes (trio).

One `Limits` per edge, shared by the HTTPS and SSH fronts, so a user's HTTPS
requests and SSH sessions count against the same slots and buckets. The
bookkeeping is edge/quotas.py's; this module adds the clock, the waiting,
and the refusals in their wire form (edge/errors.py: 429 with Retry-After, or
one SSH line and exit status 1).

Every check happens before the node is asked, so a refusal leaves no git
process anywhere. The client address is the caller's: whatever the front
decided is the real one (the socket's peer today, a PROXY header later).

A git operation is one HTTPS git request (info/refs, upload-pack or
receive-pack: a clone is two or three) or one SSH session. It takes, in this
order, and holds until it ends: a slot of its user (or, anonymous, of its
client address), of its repository, and of its node, where one user or
address may hold only `node_user_share` of the slots. All the waiting in
those queues shares one `queue_wait` deadline.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

import trio

from edge.config import OpLimits, RateRule
from edge.errors import RateLimited, TooManyOperations
from edge.quotas import BucketTable, SlotTable, Ticket
from plumbing.connlimit import address_key

log = logging.getLogger(__name__)


@dataclass
class LimitStats:
    ops_admitted: int = 0
    ops_refused_busy: int = 0
    """Refused by a concurrency limit: queue full, or the queue wait ran out."""
    ops_refused_rate: int = 0
    auth_refused: int = 0
    """Requests or SSH logins refused because their address failed too often."""
    api_writes_refused: int = 0
    rate_keys_evicted: int = 0


def _owner(user: str | None, client_ip: str) -> str:
    """Who holds a slot: a user, or an anonymous client address (the prefixes cannot
    collide: a user name has no ':')."""
    return f"user:{user}" if user is not None else f"addr:{client_ip}"


class Limits:
    """The edge's git operation, failed-login and API-write limits.

    Per-address limits count an IPv6 client by its prefix (`ipv6_prefix`, as the
    connection caps do: one host often owns a /64), and skip the addresses
    `exempt` names (the trusted proxies: without the PROXY protocol every client
    arrives through them, and one bad client would block them all).
    """

    def __init__(
        self,
        config: OpLimits,
        *,
        ipv6_prefix: int = 64,
        exempt: Callable[[str], bool] = lambda ip: False,
    ) -> None:
        self.config = config
        self._ipv6_prefix = ipv6_prefix
        self._exempt = exempt
        self._events: dict[int, trio.Event] = {}
        self._users = SlotTable(config.per_user.limit, config.per_user.queue, self._wake)
        self._addresses = SlotTable(config.per_address.limit, config.per_address.queue, self._wake)
        self._repos = SlotTable(config.per_repo.limit, config.per_repo.queue, self._wake)
        self._nodes = SlotTable(
            config.per_node.limit,
            config.per_node.queue,
            self._wake,
            owner_share=config.node_user_share,
        )

        def table(rule: RateRule) -> BucketTable:
            return BucketTable(rule.per_minute, rule.burst, config.tracked_keys)

        self._git_user_rate = table(config.git_rate_per_user)
        self._git_address_rate = table(config.git_rate_per_address)
        self._auth_fail_rate = table(config.auth_fail_rate_per_address)
        self._api_user_rate = table(config.api_write_rate)
        self._api_address_rate = table(config.api_write_rate)
        self.stats = LimitStats()
        self.active = 0
        """Git operations holding their slots now."""

    def _address(self, client_ip: str) -> str | None:
        """What per-address limits count `client_ip` under; None: exempt."""
        return None if self._exempt(client_ip) else address_key(client_ip, self._ipv6_prefix)

    def _wake(self, ticket: Ticket) -> None:
        event = self._events.get(id(ticket))
        if event is not None:
            event.set()

    # -- token buckets ------------------------------------------------------------------

    def check_git_rate(self, user: str | None, client_ip: str) -> None:
        """Take one git operation from `user`'s bucket and the address's; RateLimited if
        either is empty (then neither is charged)."""
        wait = self._take_both(self._git_user_rate, user, self._git_address_rate, client_ip)
        if wait > 0:
            self.stats.ops_refused_rate += 1
            raise RateLimited("git operations", wait, f"git rate: {user or '-'} {client_ip}")

    def check_auth_allowed(self, client_ip: str) -> None:
        """Before credentials are checked: RateLimited once the address failed too often."""
        address = self._address(client_ip)
        if address is None:
            return
        wait = self._auth_fail_rate.wait_for(address, trio.current_time())
        if wait > 0:
            self.stats.auth_refused += 1
            raise RateLimited("failed authentications", wait, f"auth failures from {client_ip}")

    def auth_failed(self, client_ip: str) -> None:
        if (address := self._address(client_ip)) is not None:
            self._auth_fail_rate.take(address, trio.current_time())

    def auth_blocked(self, client_ip: str) -> bool:
        """`check_auth_allowed` for callers without an error to raise (the SSH login)."""
        try:
            self.check_auth_allowed(client_ip)
        except RateLimited:
            return True
        return False

    def check_api_write(self, user: str | None, client_ip: str) -> None:
        """One API write for `user` (None: anonymous) from `client_ip`."""
        wait = self._take_both(self._api_user_rate, user, self._api_address_rate, client_ip)
        if wait > 0:
            self.stats.api_writes_refused += 1
            raise RateLimited("API writes", wait, f"API writes: {user or '-'} {client_ip}")

    def _take_both(
        self,
        per_user: BucketTable,
        user: str | None,
        per_address: BucketTable,
        client_ip: str,
    ) -> float:
        """0.0 and a token from the user's bucket and the address's; or the seconds
        until both have one, and neither taken."""
        now = trio.current_time()
        address = self._address(client_ip)
        wait = 0.0
        if address is not None:
            wait = per_address.wait_for(address, now)
        if user is not None:
            wait = max(wait, per_user.wait_for(user, now))
        if wait > 0:
            return wait
        if address is not None:
            per_address.take(address, now)
        if user is not None:
            per_user.take(user, now)
        return 0.0

    # -- concurrency ------------------------------------------------------------------

    @asynccontextmanager
    async def git_operation(
        self, *, user: str | None, client_ip: str, repo: str, node_id: str
    ) -> AsyncIterator[None]:
        """Hold the operation's slots while the body runs; TooManyOperations if they
        cannot all be had within `queue_wait`."""
        address = self._address(client_ip)
        owner = _owner(user, address or client_ip)
        wanted = [(self._repos, repo), (self._nodes, node_id)]
        if user is not None:
            wanted.insert(0, (self._users, user))
        elif address is not None:
            wanted.insert(0, (self._addresses, address))
        held: list[tuple[SlotTable, str, Ticket]] = []
        try:
            with trio.move_on_after(self.config.queue_wait):
                for table, key in wanted:
                    if not table.enabled:
                        continue
                    ticket = await self._take(table, key, owner)
                    held.append((table, key, ticket))
            if len(held) < sum(table.enabled for table, _ in wanted):
                # The queue wait ran out (a full queue raised already).
                self.stats.ops_refused_busy += 1
                raise TooManyOperations(f"{owner} {repo} on {node_id}: queue wait ran out")
            self.stats.ops_admitted += 1
            self.active += 1
            try:
                yield
            finally:
                self.active -= 1
        finally:
            for table, key, ticket in reversed(held):
                table.finish(key, ticket)

    async def _take(self, table: SlotTable, key: str, owner: str) -> Ticket:
        ticket = table.request(key, owner)
        if ticket is None:
            self.stats.ops_refused_busy += 1
            raise TooManyOperations(f"{owner}: queue for {key} full")
        if ticket.granted:
            return ticket
        event = self._events[id(ticket)] = trio.Event()
        try:
            await event.wait()
        except BaseException:
            # Cancelled (the queue wait, or the client went): give the place up,
            # or the slot if it was granted in the same instant.
            table.finish(key, ticket)
            raise
        finally:
            del self._events[id(ticket)]
        return ticket

    def stats_dict(self) -> dict[str, int]:
        self.stats.rate_keys_evicted = sum(
            t.evicted
            for t in (
                self._git_user_rate,
                self._git_address_rate,
                self._auth_fail_rate,
                self._api_user_rate,
                self._api_address_rate,
            )
        )
        return {
            **{f"limits_{k}": v for k, v in asdict(self.stats).items()},
            "limits_ops_active": self.active,
            "limits_ops_queued": sum(
                t.waiting() for t in (self._users, self._addresses, self._repos, self._nodes)
            ),
            "limits_node_slots_held": self._nodes.held(),
            "limits_rate_keys": len(self._git_user_rate) + len(self._git_address_rate),
        }

    def node_slots_of(self, node_id: str, user: str | None, client_ip: str) -> int:
        return self._nodes.holding(node_id, _owner(user, self._address(client_ip) or client_ip))
