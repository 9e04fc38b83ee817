"""Runs node/housekeeping.py's plans: after pushes in the background, or on demand.

Bounds: one optimization per repository at a time (`_running`), at most
`max_concurrent` on the node (a CapacityLimiter), each under `timeout`, past
which its git and git's children are killed; a push's trigger tries again
(tests/node/test_housekeeper_bounds.py).

Safety against concurrent pushes and fetches (tests/node/test_housekeeper.py):
fetches run beside every step (new packs are renamed into place, old ones
deleted only after, `--cruft` keeps what is unreachable, prune only touches
objects older than the grace period, and git looks again in the packs for a
loose object that vanished). Pushes do not: `repack -d` and `prune` end with
prune-packed, which removes emptied `objects/xx` directories, and a push
moving its loose objects out of quarantine into such a directory fails
("unable to migrate objects to permanent storage"; seen in this module's test
under load). So an optimization of a repository and a push to it never
overlap: pushes register with `pushing()`; an optimization starts only with
none in flight, and a push that arrives cancels the running one (its git is
stopped, which git's repack and prune survive) and waits for that, a moment,
never for the optimization itself. Its own end triggers the next attempt.
pack-refs locks refs, so for replicated repositories the replication lock
(node/replication.py `Replicator.lock`, held from vote to post-receive and
by `apply`) must be free too, or it waits for the next round.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

from node import housekeeping as hk
from node.repos import RepoStore
from routing.model import RepoName

log = logging.getLogger(__name__)

PUSH_WAIT = 30.0
"""How long a push waits for a pack-refs that started first (it takes milliseconds)."""
PACK_REFS_TIMEOUT = 30.0
KILL_GRACE = 5.0
"""After the timeout's SIGTERM, how long git may take to clean up before SIGKILL."""


class OptimizeBusy(Exception):
    """An optimization of this repository is already running."""


class OptimizeYielded(OptimizeBusy):
    """A push to the repository arrived: the optimization stopped for it."""


class OptimizeFailed(Exception):
    """A git step failed or timed out; the repository is as git left it (still valid)."""


@dataclass(frozen=True)
class OptimizeResult:
    plan: hk.Plan
    before: hk.ObjectCounts
    after: hk.ObjectCounts
    seconds: float
    skipped: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "ran": self.plan.describe(),
            "skipped": list(self.skipped),
            "before": asdict(self.before),
            "after": asdict(self.after),
            "seconds": round(self.seconds, 3),
        }


class _RepoGuard:
    """Pushes in flight, and whether pack-refs holds the repository's refs."""

    def __init__(self) -> None:
        self.pushes = 0
        self.packing_refs = False
        self.optimizing: trio.CancelScope | None = None
        """The running optimization's scope: a push arriving cancels it."""
        self.changed = trio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    @property
    def idle(self) -> bool:
        return not self.pushes and not self.packing_refs and self.optimizing is None


class Housekeeper:
    def __init__(
        self,
        store: RepoStore,
        config: hk.HousekeepingConfig,
        repl_lock: Callable[[RepoName], trio.Semaphore] | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._repl_lock = repl_lock
        self._limiter = trio.CapacityLimiter(config.max_concurrent)
        self._running: set[RepoName] = set()
        self._again: set[RepoName] = set()
        self._guards: dict[RepoName, _RepoGuard] = {}
        self._nursery: trio.Nursery | None = None
        self.completed = 0
        """Optimizations finished since start (background and on demand): tests wait on it."""
        self.completed_changed = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The nursery background optimizations run in."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None  # a push ending during shutdown starts nothing

    # -- pushes ----------------------------------------------------------------------

    @asynccontextmanager
    async def pushing(self, name: RepoName) -> AsyncIterator[None]:
        """Around a receive-pack: no optimization of this repository meanwhile (a
        running one is stopped first)."""
        guard = self._guards.setdefault(name, _RepoGuard())
        guard.pushes += 1  # from now: no optimization starts, and the guard stays put
        try:
            with trio.fail_after(PUSH_WAIT):
                while guard.packing_refs or guard.optimizing is not None:
                    if guard.optimizing is not None and not guard.packing_refs:
                        guard.optimizing.cancel()  # pack-refs (milliseconds) may finish
                    await guard.changed.wait()
        except BaseException:
            guard.pushes -= 1
            self._forget_idle(name, guard)
            raise
        try:
            yield
        finally:
            guard.pushes -= 1
            self._forget_idle(name, guard)

    def push_ended(self, name: RepoName) -> None:
        """A receive-pack into `name` ended: optimize in the background if it needs it."""
        if not self._config.enabled or self._nursery is None:
            return
        if name in self._running:
            self._again.add(name)  # look again once the running one ends
            return
        self._running.add(name)
        self._nursery.start_soon(self._background, name)

    async def _background(self, name: RepoName) -> None:
        try:
            async with self._limiter:
                result = await self._optimize_now(name, force=False)
            if result is not None and result.plan.needed:
                what, seconds = result.plan.describe(), result.seconds
                log.info("%s: optimized (%s) in %.1fs", name, what, seconds)
        except OptimizeYielded:
            log.info("%s: optimization stopped for a push; it runs again after", name)
        except (OptimizeFailed, OSError, hk.CountObjectsError) as exc:
            log.warning("%s: background optimization failed: %s", name, exc)
        finally:
            self._done(name)
        if name in self._again:
            self._again.discard(name)
            self.push_ended(name)

    # -- on demand -------------------------------------------------------------------

    async def optimize(self, name: RepoName) -> OptimizeResult | None:
        """`gitedge repo optimize`: everything worth doing, now. None: no such repository.
        Waits for a slot under the node's limit; raises OptimizeBusy if one is running."""
        if name in self._running:
            raise OptimizeBusy(f"{name} is being optimized")
        self._running.add(name)
        try:
            async with self._limiter:
                return await self._optimize_now(name, force=True)
        except hk.CountObjectsError as exc:
            raise OptimizeFailed(str(exc)) from None
        finally:
            self._done(name)

    # -- the work --------------------------------------------------------------------

    async def _optimize_now(self, name: RepoName, *, force: bool) -> OptimizeResult | None:
        git_dir = self._store.existing(name)
        if git_dir is None:
            return None
        guard = self._guards.setdefault(name, _RepoGuard())
        if guard.pushes:
            raise OptimizeYielded(f"a push to {name} is in flight; try again after it")
        with trio.CancelScope() as scope:
            guard.optimizing = scope
            try:
                return await self._steps(name, git_dir, force)
            finally:
                guard.optimizing = None
                guard.notify()
                self._forget_idle(name, guard)
        raise OptimizeYielded(f"a push to {name} arrived; optimization stopped, try again")

    async def _steps(self, name: RepoName, git_dir: Path, force: bool) -> OptimizeResult:
        start = time.monotonic()
        skipped: list[str] = []
        try:
            with trio.fail_after(self._config.timeout):
                stats = await self._stats(git_dir)
                plan = hk.forced_plan(stats) if force else hk.plan(stats, self._config.limits)
                if plan.repack is not hk.Repack.NONE:
                    await self._git(git_dir, hk.repack_argv(plan.repack))
                if plan.commit_graph:
                    await self._git(git_dir, hk.COMMIT_GRAPH_ARGV)
                if plan.pack_refs and not await self._pack_refs(name, git_dir):
                    skipped.append("pack_refs")
                if plan.prune:
                    await self._git(git_dir, hk.PRUNE_ARGV)
                after = (await self._stats(git_dir)).objects if plan.needed else stats.objects
        except trio.TooSlowError:
            raise OptimizeFailed(f"took longer than {self._config.timeout}s") from None
        return OptimizeResult(plan, stats.objects, after, time.monotonic() - start, tuple(skipped))

    async def _pack_refs(self, name: RepoName, git_dir: Path) -> bool:
        """pack-refs while no push holds the refs; False (skipped) if one does."""
        guard = self._guards.setdefault(name, _RepoGuard())
        repl_lock = self._repl_lock(name) if self._repl_lock is not None else None
        if guard.pushes or guard.packing_refs:
            return False
        if repl_lock is not None:
            try:
                repl_lock.acquire_nowait()
            except trio.WouldBlock:
                return False
        guard.packing_refs = True
        try:
            with trio.fail_after(PACK_REFS_TIMEOUT):
                await self._git(git_dir, hk.PACK_REFS_ARGV)
        finally:
            guard.packing_refs = False
            guard.notify()
            if repl_lock is not None:
                repl_lock.release()
            self._forget_idle(name, guard)
        return True

    async def _stats(self, git_dir: Path) -> hk.RepoStats:
        counts = hk.parse_count_objects(await self._git(git_dir, hk.COUNT_OBJECTS_ARGV))
        return await trio.to_thread.run_sync(scan_repo, git_dir, counts)

    async def _git(self, git_dir: Path, args: list[str]) -> str:
        stopped: list[int] = []

        async def stop(process: trio.Process) -> None:
            stopped.append(process.pid)
            await _stop_git(process)

        try:
            result = await trio.run_process(
                ["git", f"--git-dir={git_dir}", *args],
                env=self._store.env(),
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                start_new_session=True,  # its own process group, for _stop_git
                deliver_cancel=stop,
            )
        finally:
            if stopped:
                # run_process returns once git itself exited; its children (repack's
                # pack-objects) may still be cleaning up their .tmp-* packs, which a
                # next repack must not find half gone ("could not find pack .tmp-...").
                with trio.CancelScope(shield=True):
                    await _group_gone(stopped[0])
                _clear_debris(git_dir)
        if result.returncode != 0:
            stderr = result.stderr.decode("utf-8", "replace").strip()
            raise OptimizeFailed(f"git {args[0]} exited with {result.returncode}: {stderr}")
        return bytes(result.stdout).decode("utf-8", "replace")

    def _done(self, name: RepoName) -> None:
        self._running.discard(name)
        self.completed += 1
        self.completed_changed.set()
        self.completed_changed = trio.Event()

    def _forget_idle(self, name: RepoName, guard: _RepoGuard) -> None:
        if guard.idle and self._guards.get(name) is guard:
            del self._guards[name]


async def _stop_git(process: trio.Process) -> None:
    """On the timeout (a cancel): SIGTERM to git's whole process group, SIGKILL if it
    lingers. `git repack` runs `git pack-objects` as its child, and a SIGTERM to
    repack alone left pack-objects running on past the timeout (seen in
    tests/node/test_housekeeper_bounds.py). What a stopped git leaves is removed
    once its group is gone (`_clear_debris`)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        await trio.sleep(KILL_GRACE)
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is gone already


# What a stopped repack, multi-pack-index or commit-graph writer may leave: its
# temporary packs and its locks. Only the housekeeper writes these (receive-pack
# works in its quarantine), and a next repack reads them: a `.tmp-*.idx` whose
# pack is gone fails `--write-midx` ("could not find pack"), a stale
# multi-pack-index.lock every later one ("File exists"); both seen in
# tests/node/test_housekeeper.py. packed-refs.lock is a push's too: never touched.
_DEBRIS = (
    "objects/pack/.tmp-*",
    "objects/pack/multi-pack-index.lock",
    "objects/info/commit-graph.lock",
    "objects/info/commit-graphs/*.lock",
)


def _clear_debris(git_dir: Path) -> None:
    """After a git of ours was stopped (its whole group gone), remove what it left."""
    for pattern in _DEBRIS:
        for path in git_dir.glob(pattern):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("%s: could not remove %s: %s", git_dir, path.name, exc)


async def _group_gone(pgid: int) -> None:
    """Wait until no process of the group `pgid` is left, SIGKILLing it after KILL_GRACE."""
    deadline = trio.current_time() + KILL_GRACE
    killed = False
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL if killed else 0)
        except ProcessLookupError:
            return
        if not killed and trio.current_time() > deadline:
            killed = True
            continue
        if killed and trio.current_time() > deadline + 2:
            log.warning("git's process group %d outlived SIGKILL by 2s", pgid)
            return
        await trio.sleep(0.01)


def scan_repo(git_dir: Path, counts: hk.ObjectCounts) -> hk.RepoStats:
    """What count-objects does not say: bitmaps, commit-graph, loose refs, old loose
    objects (blocking; costs one stat per loose object and ref file)."""
    objects = git_dir / "objects"
    pack_dir = objects / "pack"
    has_bitmap = pack_dir.is_dir() and any(p.suffix == ".bitmap" for p in pack_dir.iterdir())
    info = objects / "info"
    has_commit_graph = (info / "commit-graph").is_file() or (
        info / "commit-graphs" / "commit-graph-chain"
    ).is_file()
    loose_refs = sum(len(files) for _dir, _subdirs, files in os.walk(git_dir / "refs"))
    stale = 0
    if counts.loose:
        cutoff = time.time() - hk.PRUNE_GRACE_SECONDS
        for shard in objects.iterdir():
            if len(shard.name) != 2 or not shard.is_dir():
                continue
            for entry in os.scandir(shard):
                try:
                    if entry.stat().st_mtime < cutoff:
                        stale += 1
                except FileNotFoundError:
                    continue  # packed and removed meanwhile
    return hk.RepoStats(
        objects=counts,
        has_bitmap=has_bitmap,
        has_commit_graph=has_commit_graph,
        loose_refs=loose_refs,
        stale_loose_objects=stale,
    )
