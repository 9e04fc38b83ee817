"""A floor under the rate at which a request body arrives (sans-IO).

A per-read idle timeout alone lets a client hold a request, and the git
process at the node behind it, for as long as it sends one byte per timeout
(issue 9: `Content-Length: 100000000`, then a byte every 20 s, held 30 `git
upload-pack` processes). Here the body must keep up with `min_rate` bytes a
second on average, and may fall behind that by at most `grace` seconds: the
deadline starts `grace` away, each byte received moves it `1 / min_rate`
seconds later, and it is never more than `grace` ahead of now. So a client
at line rate may stall for up to `grace` at any point, one that trickles is
cut once it is `grace` seconds behind (Apache's mod_reqtimeout `body=N,MinRate=R`
works the same way, without the cap on saved-up credit).

Times are whatever clock the caller passes (trio.current_time() in the edge).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BodyRate:
    """`[limits] body_min_rate` and `body_rate_grace`."""

    min_rate: float
    """Bytes per second, averaged; 0: no floor."""
    grace: float
    """Seconds a body may fall behind `min_rate` (and the longest stall)."""

    def start(self, now: float) -> BodyPace | None:
        return BodyPace(self, now) if self.min_rate > 0 else None


class BodyPace:
    """One body's deadline under a `BodyRate`."""

    def __init__(self, rate: BodyRate, now: float) -> None:
        self._rate = rate
        self.deadline = now + rate.grace

    def received(self, n: int, now: float) -> None:
        self.deadline = min(self.deadline + n / self._rate.min_rate, now + self._rate.grace)

    def paused(self, seconds: float) -> None:
        """The reader did not read for `seconds` (its sink was full): not the sender's fault."""
        self.deadline += seconds

    def overdue(self, now: float) -> bool:
        return now >= self.deadline
