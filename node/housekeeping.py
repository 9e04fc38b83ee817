"""When and how to optimize a bare repository: pure heuristics, no I/O.

Modelled on Gitaly's `OptimizeRepository` (internal/git/housekeeping): look at
what a repository has (loose objects, packs, bitmaps, commit-graph, loose refs)
and decide the few git commands that bring it back to a shape clones are cheap
from. node/housekeeper.py gathers the `RepoStats` and runs the `Plan`.

Why each step (docs/housekeeping.md has the long form):

- Loose objects: receive-pack keeps a push of fewer than `receive.unpackLimit`
  (100) objects loose, so every small push adds loose files and every clone
  then compresses and delta-searches all of them again in `git pack-objects`.
- Packs: each larger push adds a pack; a clone walks all of them. A geometric
  repack (git-repack(1) `--geometric=2`) merges only the small packs, so its
  cost follows what was pushed since, not the repository's size; the
  multi-pack-index bitmap then lets `pack-objects` skip the object walk.
- A full repack (`-a -d -b`) is for when packs pile up anyway; it is written
  with `--cruft` so unreachable objects go to a cruft pack instead of being
  dropped: a push whose objects are in place but whose refs are not yet
  updated is "unreachable" at that moment, and must not lose them.
- commit-graph (`--split`, appended to, not rewritten): cheap, speeds up the
  walks of negotiation and bitmap selection.
- pack-refs: many loose ref files slow every ref advertisement.
- prune: only loose objects older than the grace period, never a fresh push's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

PRUNE_EXPIRE = "2.weeks.ago"
"""git gc's own default grace (gc.pruneExpire): far longer than any push takes."""
PRUNE_GRACE_SECONDS = 14 * 24 * 3600


class Repack(enum.Enum):
    NONE = "none"
    GEOMETRIC = "geometric"
    FULL = "full"


@dataclass(frozen=True)
class ObjectCounts:
    """What `git count-objects -v` says (sizes in KiB, as git prints them)."""

    loose: int = 0
    loose_kib: int = 0
    in_pack: int = 0
    packs: int = 0
    pack_kib: int = 0


@dataclass(frozen=True)
class RepoStats:
    objects: ObjectCounts
    has_bitmap: bool = False
    """A pack bitmap or a multi-pack-index bitmap exists."""
    has_commit_graph: bool = False
    loose_refs: int = 0
    stale_loose_objects: int = 0
    """Loose objects older than the prune grace period."""


@dataclass(frozen=True)
class Limits:
    loose_objects: int = 256
    """Loose objects that make a geometric repack worth it. Gitaly waits for 1024; a
    geometric repack costs what was pushed since, and 600 loose objects (200 small
    pushes) already made a clone 4x dearer in CPU (bench/results/housekeeping.md)."""
    loose_kib: int = 64 * 1024
    """Or this much loose data: a few huge loose blobs cost a clone as much as many."""
    max_packs: int = 32
    """More packs than this (after geometric merging failed to keep them few): full repack."""
    loose_refs: int = 64


@dataclass(frozen=True)
class HousekeepingConfig:
    """`[housekeeping]` in the node's config (node/config.py checks the ranges)."""

    enabled: bool = True
    """Optimize in the background after pushes; `gitedge repo optimize` works either way."""
    max_concurrent: int = 1
    """Optimizations running at once on this node: each is a CPU-bound git process."""
    timeout: float = 3600.0
    """Seconds one optimization may take before it is killed (git's temp files stay harmless)."""
    limits: Limits = Limits()


@dataclass(frozen=True)
class Plan:
    repack: Repack = Repack.NONE
    commit_graph: bool = False
    pack_refs: bool = False
    prune: bool = False

    @property
    def needed(self) -> bool:
        return self != Plan()

    def describe(self) -> str:
        steps = [f"repack={self.repack.value}"] if self.repack is not Repack.NONE else []
        steps += [name for name in ("commit_graph", "pack_refs", "prune") if getattr(self, name)]
        return ",".join(steps) or "nothing"


class CountObjectsError(ValueError):
    pass


def parse_count_objects(text: str) -> ObjectCounts:
    """`git count-objects -v` output -> ObjectCounts; unknown lines are ignored."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        try:
            fields[key.strip()] = int(value.strip())
        except ValueError:
            raise CountObjectsError(f"bad count-objects line {line!r}") from None
    if "count" not in fields or "packs" not in fields:
        raise CountObjectsError("count-objects output lacks count or packs")
    return ObjectCounts(
        loose=fields["count"],
        loose_kib=fields.get("size", 0),
        in_pack=fields.get("in-pack", 0),
        packs=fields["packs"],
        pack_kib=fields.get("size-pack", 0),
    )


def plan(stats: RepoStats, limits: Limits = Limits()) -> Plan:
    """What to run now; `Plan()` when the repository is in shape."""
    objects = stats.objects
    if objects.packs > limits.max_packs:
        repack = Repack.FULL
    elif objects.loose >= limits.loose_objects or objects.loose_kib >= limits.loose_kib:
        repack = Repack.GEOMETRIC
    elif objects.packs > 1 and not stats.has_bitmap:
        # Several packs and nothing to let pack-objects skip the walk.
        repack = Repack.GEOMETRIC
    else:
        repack = Repack.NONE
    has_objects = objects.loose + objects.in_pack > 0
    return Plan(
        repack=repack,
        commit_graph=has_objects and (repack is not Repack.NONE or not stats.has_commit_graph),
        pack_refs=stats.loose_refs >= limits.loose_refs,
        prune=stats.stale_loose_objects > 0,
    )


def forced_plan(stats: RepoStats) -> Plan:
    """`gitedge repo optimize`: everything worth doing now, whatever the limits say."""
    objects = stats.objects
    full = objects.packs > 1 or objects.loose > 0 or not stats.has_bitmap
    has_objects = objects.loose + objects.in_pack > 0
    return Plan(
        repack=Repack.FULL if full and has_objects else Repack.NONE,
        commit_graph=has_objects,
        pack_refs=stats.loose_refs > 0,
        prune=stats.stale_loose_objects > 0,
    )


def repack_argv(repack: Repack) -> list[str]:
    if repack is Repack.GEOMETRIC:
        # Merges packs so each is at least twice the next smaller one, loose
        # objects included; the multi-pack-index bitmap covers all packs (git >= 2.34).
        return ["repack", "-d", "--geometric=2", "--write-midx", "--write-bitmap-index", "-q"]
    if repack is Repack.FULL:
        # --cruft (git >= 2.37): unreachable objects move to a cruft pack with
        # their mtimes instead of being deleted with the old packs.
        return ["repack", "-a", "-d", "-b", "--cruft", f"--cruft-expiration={PRUNE_EXPIRE}", "-q"]
    raise ValueError("no repack planned")


COMMIT_GRAPH_ARGV = ["commit-graph", "write", "--reachable", "--split", "--no-progress"]
PACK_REFS_ARGV = ["pack-refs", "--all"]
PRUNE_ARGV = ["prune", f"--expire={PRUNE_EXPIRE}"]
COUNT_OBJECTS_ARGV = ["count-objects", "-v"]
