"""Counting client connections per listener and per client address, in bounded memory.

A front asks `admit(ip)` when a connection arrives and `release(ip)` when it
ends. Only addresses with a connection open have an entry, and every entry
holds at least one of at most `max_total` connections, so the table never
outgrows the listener's cap, whatever addresses arrive.

IPv6 clients are counted per prefix (`ipv6_prefix`, default /64): one host
commonly owns a whole /64 (RFC 7421) and can pick a new address per
connection. Addresses the caller exempts (its trusted proxies: a load balancer
brings every client through one address) count toward the listener's cap only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from enum import Enum


class Refusal(Enum):
    LISTENER_FULL = "listener full"
    ADDRESS_FULL = "too many connections from this address"


def address_key(ip: str, ipv6_prefix: int) -> str:
    """What a connection from `ip` is counted under: the address, or its IPv6 prefix."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip  # not an address (a Unix socket's peer): counted as itself
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, ipv6_prefix), strict=False))
    return str(addr)


class ConnLimiter:
    def __init__(
        self,
        max_total: int,
        max_per_address: int,
        *,
        ipv6_prefix: int = 64,
        exempt: Callable[[str], bool] = lambda ip: False,
    ) -> None:
        if max_total < 1 or max_per_address < 1:
            raise ValueError("limits must be at least 1")
        if not 0 <= ipv6_prefix <= 128:
            raise ValueError("ipv6_prefix must be 0..128")
        self.max_total = max_total
        self.max_per_address = max_per_address
        self._ipv6_prefix = ipv6_prefix
        self._exempt = exempt
        self._per_key: dict[str, int] = {}
        self.total = 0
        self.refused: dict[Refusal, int] = {reason: 0 for reason in Refusal}

    def admit(self, ip: str) -> Refusal | None:
        """Count a new connection from `ip`, or say why it is refused (then nothing is counted)."""
        if self.total >= self.max_total:
            self.refused[Refusal.LISTENER_FULL] += 1
            return Refusal.LISTENER_FULL
        key = self._key(ip)
        if key is not None:
            held = self._per_key.get(key, 0)
            if held >= self.max_per_address:
                self.refused[Refusal.ADDRESS_FULL] += 1
                return Refusal.ADDRESS_FULL
            self._per_key[key] = held + 1
        self.total += 1
        return None

    def release(self, ip: str) -> None:
        """A connection admitted from `ip` ended."""
        key = self._key(ip)
        if key is not None:
            held = self._per_key.pop(key)
            if held > 1:
                self._per_key[key] = held - 1
        self.total -= 1

    def held_by(self, ip: str) -> int:
        key = self._key(ip)
        return self._per_key.get(key, 0) if key is not None else 0

    @property
    def addresses(self) -> int:
        """How many addresses (or IPv6 prefixes) hold a connection: the table's size."""
        return len(self._per_key)

    def _key(self, ip: str) -> str | None:
        if self._exempt(ip):
            return None
        return address_key(ip, self._ipv6_prefix)
