"""Housekeeping's bounds on a running node, with real git: the timeout kills an
optimization (pack-objects included) and leaves the repository valid, the node
runs at most `max_concurrent` at once, and one repository never twice at once.

A repository is made slow to repack for real: its objects are pushed loose
(receive.unpackLimit raised) and its repack's delta search compares every
object with every other one (pack.window = all of them, one thread), which
takes minutes of CPU; the tests' timeouts stop it after a second or two.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import httpx
import trio

from node.housekeeper import KILL_GRACE
from tests.node.conftest import EDGE_AUTH, ConfigFactory, RunningNode
from tests.node.gitutil import create_repo, git
from tests.node.test_housekeeper import has_bitmap, push_commits, repo_dir, start

SLOW_OBJECTS = 1500
"""Random 4 KiB blobs: 25 s of delta search for 1000 of them measured here (grows as n²)."""


async def slow_worktree(node: RunningNode, name: str, tmp_path: Path, home: Path) -> Path:
    """`name` created on the node and made slow to repack; a worktree of it with one
    commit of SLOW_OBJECTS blobs, ready to push."""
    assert (await create_repo(node.url, name)).status_code == 201
    git_dir = repo_dir(node, name)
    for key, value in (("receive.unpackLimit", "100000"), ("pack.window", "100000")):
        await git("config", key, value, cwd=git_dir, home=home)
    await git("config", "pack.threads", "1", cwd=git_dir, home=home)
    work = tmp_path / name.replace("/", "-")
    await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
    await git("remote", "add", "origin", node.repo_url(name), cwd=work, home=home)
    for i in range(SLOW_OBJECTS):
        (work / f"blob-{i}").write_bytes(os.urandom(4096))
    await git("add", ".", cwd=work, home=home)
    await git("commit", "-q", "-m", "many blobs", cwd=work, home=home)
    return work


def has_commit_graph(git_dir: Path) -> bool:
    return (git_dir / "objects" / "info" / "commit-graphs" / "commit-graph-chain").is_file()


async def push(work: Path, home: Path) -> None:
    await git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work, home=home, timeout=60)


def git_processes(git_dir: Path) -> dict[int, list[str]]:
    """Every live git process working on `git_dir`, whoever its parent (an orphaned
    pack-objects too), by its command line: pid -> argv."""
    found = {}
    needle = str(git_dir).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv and "git" in Path(argv[0]).name and needle in raw and state != "Z":
            found[int(entry)] = argv
    return found


def repacks(git_dir: Path) -> set[int]:
    """Pids of the `git repack` processes on `git_dir` (one per optimization running)."""
    return {pid for pid, argv in git_processes(git_dir).items() if "repack" in argv}


async def wait_for(what: str, seconds: float, check: Callable[[], object]) -> None:
    with trio.move_on_after(seconds):
        while not check():
            await trio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


async def test_an_optimization_past_its_timeout_is_killed_and_the_next_push_retries(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    node = await start(make_config, nursery, "[housekeeping]\ntimeout = 3\n")
    home = tmp_path / "home"
    work = await slow_worktree(node, "alice/slow", tmp_path, home)
    git_dir = repo_dir(node, "alice/slow")
    await push(work, home)  # 1500 loose objects: the push's trigger starts a repack
    await wait_for("the background repack", 10, lambda: repacks(git_dir))
    # Killed at the timeout, pack-objects with it: no git is left on the repository.
    await wait_for("every git on it gone", 3 + KILL_GRACE + 3, lambda: not git_processes(git_dir))
    await git("fsck", "--strict", "--no-progress", cwd=git_dir, home=home)
    assert not has_bitmap(git_dir) and not has_commit_graph(git_dir)
    # A failure is not remembered: once repacking is cheap again the next push's
    # optimization runs and finishes.
    await git("config", "pack.window", "0", cwd=git_dir, home=home)  # no delta search
    pushed = await push_commits(work, home, 1, "main")
    # Its last step that writes (the killed one never got there): the commit-graph,
    # after the repack's bitmap and its pruning of the packed loose objects.
    await wait_for("the retried optimization", 30, lambda: has_commit_graph(git_dir))
    assert has_bitmap(git_dir)
    await git("fsck", "--strict", "--no-progress", cwd=git_dir, home=home)
    assert await git("rev-parse", "refs/heads/main", cwd=git_dir, home=home) == pushed[-1]


async def test_at_most_max_concurrent_optimizations_run_at_once(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    node = await start(make_config, nursery, "[housekeeping]\nmax_concurrent = 2\ntimeout = 3\n")
    home = tmp_path / "home"
    names = [f"alice/slow-{i}" for i in range(3)]
    works = [await slow_worktree(node, name, tmp_path, home) for name in names]
    dirs = [repo_dir(node, name) for name in names]
    running_at_once: list[int] = []
    seen: set[Path] = set()

    async def sample(done: trio.Event) -> None:
        while not done.is_set():
            running = [d for d in dirs if repacks(d)]
            running_at_once.append(len(running))
            seen.update(running)
            await trio.sleep(0.02)

    done = trio.Event()
    async with trio.open_nursery() as inner:
        inner.start_soon(sample, done)
        async with trio.open_nursery() as pushing:
            for work in works:
                pushing.start_soon(push, work, home)
        # Each is killed after 3 s; the third gets a slot when one of the first two ends.
        await wait_for("all three repositories' turns", 30, lambda: len(seen) == 3)
        ended = lambda: not any(git_processes(d) for d in dirs)  # noqa: E731
        await wait_for("every optimization ended", 3 + KILL_GRACE + 5, ended)
        done.set()
    assert max(running_at_once) == 2, running_at_once
    for git_dir in dirs:
        await git("fsck", "--strict", "--no-progress", cwd=git_dir, home=home)


async def test_one_repository_is_never_optimized_twice_at_once(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Slots to spare: only the per-repository rule keeps a second one from starting.
    node = await start(make_config, nursery, "[housekeeping]\nmax_concurrent = 4\ntimeout = 2\n")
    home = tmp_path / "home"
    work = await slow_worktree(node, "alice/slow", tmp_path, home)
    git_dir = repo_dir(node, "alice/slow")
    await push(work, home)
    await wait_for("the background repack", 10, lambda: repacks(git_dir))
    first = repacks(git_dir)
    # Meanwhile another push (its trigger waits for the running one) and a request.
    await push_commits(work, home, 1, "main")
    url = f"{node.url}/_gitedge/repos/alice/slow/optimize"
    async with httpx.AsyncClient(headers=EDGE_AUTH, timeout=30) as client:
        busy = await client.post(url)
    assert busy.status_code == 409, busy.text
    pids: set[int] = set()
    at_once = []

    def second_one_ran() -> bool:
        running = repacks(git_dir)
        at_once.append(len(running))
        pids.update(running)
        return bool(pids - first) and not running

    # The push's optimization runs after the first was killed, and is killed in turn.
    await wait_for("the second optimization", 2 * (2 + KILL_GRACE) + 5, second_one_ran)
    assert max(at_once) == 1, at_once
    await git("fsck", "--strict", "--no-progress", cwd=git_dir, home=home)


async def test_a_push_stops_a_running_optimization_which_runs_again_after_it(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A push and an optimization of one repository never overlap (prune-packed's
    removal of emptied object directories races a push's move out of quarantine):
    the push stops the running one, at once, and its end starts the next."""
    node = await start(make_config, nursery, "[housekeeping]\ntimeout = 120\n")
    home = tmp_path / "home"
    work = await slow_worktree(node, "alice/slow", tmp_path, home)
    git_dir = repo_dir(node, "alice/slow")
    await push(work, home)  # its trigger starts a repack of minutes
    await wait_for("the background repack", 10, lambda: repacks(git_dir))
    first = repacks(git_dir)
    await git("config", "pack.window", "0", cwd=git_dir, home=home)  # the next one is quick
    with trio.fail_after(KILL_GRACE + 10):  # not the repack's minutes
        pushed = await push_commits(work, home, 1, "main")
    assert not first & set(git_processes(git_dir)), "the first repack outlived the push"
    await wait_for("the optimization after the push", 30, lambda: has_commit_graph(git_dir))
    assert has_bitmap(git_dir)
    await git("fsck", "--strict", "--no-progress", cwd=git_dir, home=home)
    assert await git("rev-parse", "refs/heads/main", cwd=git_dir, home=home) == pushed[-1]
