"""Distance between regions: the operator's RTT table. Pure.

The edge config's `[regions.rtt]` gives round-trip times in milliseconds
between region pairs, each pair once, in either TOML spelling:

    [regions.rtt]
    fra.lax = 140            # dotted keys ...
    [regions.rtt.lax]
    syd = 150                # ... or a table per region: the same data

A link is symmetric (`fra.lax` is `lax.fra`); a region is at distance 0 from
itself; a pair the table does not name is unknown, farther than any named one.
Used to rank in-sync replicas for reads (routing/replicas.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from routing.model import InvalidRegion, Region, parse_region

MAX_RTT_MS = 10_000.0
"""Over ten seconds between two regions is a typo, not a network."""


class RttTableError(ValueError):
    """The table is malformed; the message names the entry."""


@dataclass(frozen=True)
class RttTable:
    links: Mapping[frozenset[Region], float] = field(default_factory=dict)

    def rtt_ms(self, a: Region, b: Region) -> float:
        """The round trip between `a` and `b` in ms; 0 for one region, inf if unknown."""
        if a == b:
            return 0.0
        return self.links.get(frozenset((a, b)), math.inf)

    def to_toml(self) -> str:
        """The table as `[regions.rtt]` lines (the devnet writes its edges' configs so)."""
        lines = ["[regions.rtt]"]
        for pair, rtt in sorted(self.links.items(), key=lambda item: sorted(item[0])):
            a, b = sorted(pair)
            lines.append(f"{a}.{b} = {rtt:g}")
        return "\n".join(lines)


def parse_rtt_table(raw: Mapping[str, object]) -> RttTable:
    """`{"fra": {"lax": 140}, ...}` (TOML's shape of `[regions.rtt]`) -> RttTable."""
    links: dict[frozenset[Region], float] = {}
    for a_raw, row in raw.items():
        a = _region(a_raw, a_raw)
        if not isinstance(row, Mapping):
            raise RttTableError(f"{a_raw}: give `{a_raw}.<region> = <ms>` entries")
        for b_raw, value in row.items():
            where = f"{a_raw}.{b_raw}"
            b = _region(b_raw, where)
            if a == b:
                raise RttTableError(f"{where}: a region is at 0 ms from itself; leave it out")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise RttTableError(f"{where}: must be a number of milliseconds")
            rtt = float(value)
            if not 0 <= rtt <= MAX_RTT_MS:
                raise RttTableError(f"{where}: must be between 0 and {MAX_RTT_MS:g} ms")
            pair = frozenset((a, b))
            if pair in links and links[pair] != rtt:
                raise RttTableError(
                    f"{where}: {b}.{a} already says {links[pair]:g} ms; give each link once"
                )
            links[pair] = rtt
    return RttTable(links)


def _region(raw: str, where: str) -> Region:
    try:
        return parse_region(raw)
    except InvalidRegion as exc:
        raise RttTableError(f"{where}: {exc}") from None
