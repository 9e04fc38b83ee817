"""Interleaved runs of several variants in one process, and their medians and ratios.

Timings on this machine vary by about +-30 % between runs (DESIGN.md), so a
benchmark never compares a variant with a figure from another run: every
variant runs once per round, one after another, and the comparison is between
medians (and per-round ratios) of one run. The statistics here are pure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from bench.common import median

S = TypeVar("S")


def interleave(
    variants: Sequence[str],
    rounds: int,
    run_one: Callable[[str, int, bool], S],
    *,
    warmup: bool = True,
    after_warmup: Callable[[], None] | None = None,
) -> list[S]:
    """`run_one(variant, round, warmup)` for round 0 (untimed warm-up) and rounds 1..`rounds`.

    Within a round the variants run in the order given, so a slow minute of
    the machine lands on every variant of that round alike. `after_warmup`
    runs once, between the warm-up round and the first timed one. Without
    `warmup` (the servers are warm already) round 0 is left out.
    """
    samples: list[S] = []
    for round_no in range(0 if warmup else 1, rounds + 1):
        for variant in variants:
            samples.append(run_one(variant, round_no, round_no == 0))
        if round_no == 0 and after_warmup is not None:
            after_warmup()
    return samples


class Timing(Protocol):
    """What a sample must have to be compared: which variant, warm-up or not, wall time."""

    @property
    def path(self) -> str: ...
    @property
    def warmup(self) -> bool: ...
    @property
    def wall_s(self) -> float: ...


T = TypeVar("T", bound=Timing)


def timed(samples: Sequence[T], variant: str) -> list[T]:
    """The timed (not warm-up) samples of `variant`, in run order."""
    return [s for s in samples if s.path == variant and not s.warmup]


@dataclass(frozen=True)
class Comparison:
    """`variant` against `reference` over one run's timed samples."""

    variant: str
    reference: str
    median_variant_s: float
    median_reference_s: float
    pair_ratios: list[float]

    @property
    def ratio(self) -> float:
        """Ratio of the medians (variant / reference)."""
        return self.median_variant_s / self.median_reference_s

    @property
    def median_pair_ratio(self) -> float:
        """Median of round-by-round ratios: less sensitive to drift within the run."""
        return median(self.pair_ratios)

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "reference": self.reference,
            "median_variant_s": self.median_variant_s,
            "median_reference_s": self.median_reference_s,
            "ratio": self.ratio,
            "median_pair_ratio": self.median_pair_ratio,
            "pair_ratios": self.pair_ratios,
        }


def compare(samples: Sequence[Timing], variant: str, reference: str) -> Comparison:
    """Medians and ratios of `variant` vs `reference`; pairs are the i-th timed run of each."""
    var, ref = timed(samples, variant), timed(samples, reference)
    if not var or not ref:
        raise ValueError(f"no timed samples of {variant if not var else reference}")
    return Comparison(
        variant=variant,
        reference=reference,
        median_variant_s=median([s.wall_s for s in var]),
        median_reference_s=median([s.wall_s for s in ref]),
        pair_ratios=[v.wall_s / r.wall_s for r, v in zip(ref, var, strict=True)],
    )


@dataclass(frozen=True)
class Metric:
    """One row of a side-by-side table: a summary key, how to print it, what it is."""

    label: str
    key: str
    fmt: str = ".3f"


def side_by_side(
    metrics: Sequence[Metric], this: dict[str, Any], baseline: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each metric of two summaries of one shape, and this / baseline where both are numbers."""
    rows = []
    for m in metrics:
        a, b = baseline.get(m.key), this.get(m.key)
        numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
        ratio = b / a if numbers and a else None
        rows.append(
            {
                "metric": m.label,
                "key": m.key,
                "fmt": m.fmt,
                "baseline": a,
                "this": b,
                "ratio": ratio,
            }
        )
    return rows
