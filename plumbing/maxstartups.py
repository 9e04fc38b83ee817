"""OpenSSH's MaxStartups: random early drop of unauthenticated connections.

`start:rate:full` (sshd_config(5)): below `start` unauthenticated connections
every new one is accepted; from `start` on, a new one is refused with
probability `rate`% rising linearly to 100% at `full`; at `full` and above all
are refused. The arithmetic is sshd's `should_drop_connection()` (sshd.c),
integer percentages included, so a config means here what it means there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


class MaxStartupsError(ValueError):
    pass


@dataclass(frozen=True)
class MaxStartups:
    start: int
    rate: int
    """Percent refused at `start`."""
    full: int

    def __post_init__(self) -> None:
        # sshd's own checks (servconf.c): begin <= max, 1 <= rate <= 100.
        if self.start < 1 or self.full < self.start:
            raise MaxStartupsError(f"need 1 <= start <= full, got {self.start}:{self.full}")
        if not 1 <= self.rate <= 100:
            raise MaxStartupsError(f"rate is a percentage 1..100, got {self.rate}")

    @classmethod
    def parse(cls, text: str) -> MaxStartups:
        """`"10:30:100"`, or one number `N`, which is `N:100:N` (refuse all from N on)."""
        parts = text.split(":")
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            raise MaxStartupsError(f"not start:rate:full or a number: {text!r}") from None
        if len(numbers) == 1:
            return cls(numbers[0], 100, numbers[0])
        if len(numbers) != 3:
            raise MaxStartupsError(f"not start:rate:full or a number: {text!r}")
        return cls(*numbers)

    def __str__(self) -> str:
        return f"{self.start}:{self.rate}:{self.full}"

    def drop_percent(self, unauthenticated: int) -> int:
        """The chance, in percent, that a new connection is refused while
        `unauthenticated` others are still before authentication."""
        if unauthenticated < self.start:
            return 0
        if unauthenticated >= self.full or self.rate == 100:
            return 100
        return self.rate + (100 - self.rate) * (unauthenticated - self.start) // (
            self.full - self.start
        )

    def should_drop(self, unauthenticated: int, rng: random.Random | None = None) -> bool:
        percent = self.drop_percent(unauthenticated)
        if percent in (0, 100):
            return percent == 100
        return (rng or _RNG).randrange(100) < percent


_RNG = random.SystemRandom()
