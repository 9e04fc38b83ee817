"""Housekeeping on a running node, with real git over its HTTP listener.

Pushes of fewer than 100 objects stay loose (receive.unpackLimit); after enough
of them the node optimizes in the background, and an optimization running
beside pushes and clones loses nothing and corrupts nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from node.app import run_node
from node.config import NodeConfig
from tests.node.conftest import EDGE_AUTH, ConfigFactory, RunningNode
from tests.node.gitutil import create_repo, git
from tests.node.test_ssh_http import BridgedGit

CI = os.environ.get("CI") == "true"
ROUNDS = 8 if CI else 20
# Locally: enough small pushes (3 loose objects each) to pass the default limit of 256;
# under CI a few, with the limit lowered to match.
SMALL_PUSHES = 8 if CI else 100


async def start(make_config: ConfigFactory, nursery: trio.Nursery, extra: str) -> RunningNode:
    config: NodeConfig = make_config(extra=extra)
    with trio.fail_after(10):
        runtime = await nursery.start(run_node, config)
    return RunningNode(runtime, config)


def repo_dir(node: RunningNode, name: str) -> Path:
    return node.config.volume_dir / f"{name}.git"


def has_bitmap(git_dir: Path) -> bool:
    return any(p.suffix == ".bitmap" for p in (git_dir / "objects" / "pack").iterdir())


def loose_objects(git_dir: Path) -> int:
    shards = (p for p in (git_dir / "objects").iterdir() if len(p.name) == 2)
    return sum(len(list(shard.iterdir())) for shard in shards)


async def push_commits(work: Path, home: Path, count: int, tag: str) -> list[str]:
    """`count` pushes of one small commit each (3 loose objects per push)."""
    pushed = []
    for i in range(count):
        (work / f"{tag}-{i}.txt").write_text(f"{tag} {i}\n")
        await git("add", "-A", cwd=work, home=home)
        await git("commit", "-q", "-m", f"{tag} {i}", cwd=work, home=home)
        await git("push", "-q", "origin", f"HEAD:refs/heads/{tag}", cwd=work, home=home)
        pushed.append(await git("rev-parse", "HEAD", cwd=work, home=home))
    return pushed


async def clone_work(node: RunningNode, name: str, tmp_path: Path, home: Path, dest: str) -> Path:
    work = tmp_path / dest
    await git("clone", "-q", node.repo_url(name), str(work), cwd=tmp_path, home=home)
    return work


async def test_small_pushes_trigger_a_background_optimization(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    limit = f"loose_objects_limit = {SMALL_PUSHES}\n" if CI else ""
    node = await start(make_config, nursery, f"[housekeeping]\n{limit}")
    home = tmp_path / "home"
    assert (await create_repo(node.url, "alice/small")).status_code == 201
    work = await clone_work(node, "alice/small", tmp_path, home, "work")
    pushed = await push_commits(work, home, SMALL_PUSHES, "main")
    git_dir = repo_dir(node, "alice/small")
    # Only an optimization writes a bitmap: wait for it (nothing else signals it).
    with trio.fail_after(30):
        while not has_bitmap(git_dir):
            await trio.sleep(0.05)
    assert loose_objects(git_dir) < 3 * SMALL_PUSHES
    assert (git_dir / "objects" / "info" / "commit-graphs" / "commit-graph-chain").is_file()
    await git("fsck", "--strict", cwd=git_dir, home=home)
    clone = await clone_work(node, "alice/small", tmp_path, home, "clone")
    assert await git("rev-parse", "HEAD", cwd=clone, home=home) == pushed[-1]


async def test_pushes_over_ssh_trigger_it_too(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # An SSH session is its own route on the node (node/ssh_http.py), not git_http's.
    node = await start(make_config, nursery, "[housekeeping]\nloose_objects_limit = 6\n")
    home = tmp_path / "home"
    assert (await create_repo(node.url, "alice/by-ssh")).status_code == 201
    bgit = BridgedGit(node, home)
    work = tmp_path / "work"
    await bgit.ok("clone", "-q", bgit.url("alice/by-ssh"), str(work), cwd=tmp_path)
    for i in range(2):  # 3 loose objects each
        (work / f"{i}.txt").write_text(f"{i}\n")
        await git("add", "-A", cwd=work, home=home)
        await git("commit", "-q", "-m", f"{i}", cwd=work, home=home)
        await bgit.ok("push", "-q", "origin", "HEAD:refs/heads/main", cwd=work)
    git_dir = repo_dir(node, "alice/by-ssh")
    with trio.fail_after(30):  # repacked, and the packed loose objects pruned
        while not (has_bitmap(git_dir) and loose_objects(git_dir) == 0):
            await trio.sleep(0.05)
    await git("fsck", "--strict", "--no-progress", cwd=git_dir, home=home)


async def test_optimize_beside_pushes_and_clones_loses_nothing(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    # Every push triggers a background optimization (limit 1), plus forced ones
    # through the admin API, while two writers push and a reader clones.
    extra = "[housekeeping]\nloose_objects_limit = 1\nloose_refs_limit = 1\n"
    node = await start(make_config, nursery, extra)
    home = tmp_path / "home"
    assert (await create_repo(node.url, "alice/busy")).status_code == 201
    seed = await clone_work(node, "alice/busy", tmp_path, home, "seed")
    await push_commits(seed, home, 1, "main")
    writers = [await clone_work(node, "alice/busy", tmp_path, home, f"w{i}") for i in range(2)]
    pushed: dict[str, list[str]] = {}
    clones = 0

    async def writer(i: int) -> None:
        pushed[f"b{i}"] = await push_commits(writers[i], home, ROUNDS, f"b{i}")

    async def reader(done: trio.Event) -> None:
        nonlocal clones
        while not done.is_set():
            dest = await clone_work(node, "alice/busy", tmp_path, home, f"r{clones}")
            await git("fsck", "--no-progress", cwd=dest, home=home)
            clones += 1

    async def optimizer(done: trio.Event) -> None:
        url = f"{node.url}/_gitedge/repos/alice/busy/optimize"
        async with httpx.AsyncClient(headers=EDGE_AUTH, timeout=60) as client:
            while not done.is_set():
                response = await client.post(url)
                assert response.status_code in (200, 409), response.text

    done = trio.Event()
    with trio.fail_after(120):
        async with trio.open_nursery() as inner:
            inner.start_soon(reader, done)
            inner.start_soon(optimizer, done)
            async with trio.open_nursery() as writing:
                for i in range(2):
                    writing.start_soon(writer, i)
            done.set()
    git_dir = repo_dir(node, "alice/busy")
    await git("fsck", "--strict", cwd=git_dir, home=home)
    for branch, commits in pushed.items():
        assert await git("rev-parse", f"refs/heads/{branch}", cwd=git_dir, home=home) == commits[-1]
        for commit in commits:
            await git("cat-file", "-e", commit, cwd=git_dir, home=home)
    assert clones > 0


async def test_optimize_on_demand(node: RunningNode, tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert (await create_repo(node.url, "alice/tidy")).status_code == 201
    work = await clone_work(node, "alice/tidy", tmp_path, home, "work")
    await push_commits(work, home, 3, "main")
    async with httpx.AsyncClient(headers=EDGE_AUTH, timeout=60) as client:
        response = await client.post(f"{node.url}/_gitedge/repos/alice/tidy/optimize")
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["ran"].startswith("repack=full")
        assert report["before"]["loose"] == 9 and report["after"]["loose"] == 0
        again = (await client.post(f"{node.url}/_gitedge/repos/alice/tidy/optimize")).json()
        assert again["ran"] == "commit_graph"  # nothing left to repack
        missing = await client.post(f"{node.url}/_gitedge/repos/alice/nope/optimize")
        assert missing.status_code == 404
        wrong = await client.get(f"{node.url}/_gitedge/repos/alice/tidy/optimize")
        assert wrong.status_code == 405
    assert has_bitmap(repo_dir(node, "alice/tidy"))
