"""The replication fault loop: concurrent pushes from three regions while nodes are
SIGKILLed and restarted, then quiescence and devnet/replcheck's checks.

Rounds: GITEDGE_FAULT_ROUNDS, else 8 with CI=true (the CI profile) and 50
otherwise (the local profile); the seed: GITEDGE_FAULT_SEED, else random, and
printed either way so a failing run can be replayed.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from devnet.network import Devnet, NodeHandle
from devnet.replcheck import ACKED, UNKNOWN, Ack, Report
from routing.model import RepoName
from tests.e2e.conftest import Git, poll, repo_url, run_checker, ssh_git_command, three_regions
from tests.e2e.test_replication import create, edge, in_sync

REGIONS = ("fra", "lax", "syd")
REPO = "alice/faults"
ROUNDS = int(os.environ.get("GITEDGE_FAULT_ROUNDS") or (8 if os.environ.get("CI") else 50))


@pytest.fixture(scope="module")
def faultnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with three_regions(tmp_path_factory, "faultnet") as network:
        yield network


@dataclass
class Pusher:
    """One client: a clone through one region's edge, over HTTPS or SSH."""

    region: str
    url: str
    work: Path
    env: dict[str, Any]  # extra git env (GIT_SSH_COMMAND); Any: splatted into Git.run
    acks: list[Ack]
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push_once(self, git: Git, rng: random.Random, round_no: int) -> None:
        """Fetch, commit on top (or, now and then, force main back past the tip), push
        main and this pusher's own branch in one push; record what was accepted.
        Starts staggered: pushes that all read one consensus leave one winner."""
        time.sleep(rng.uniform(0.0, 0.5))
        if git.run("fetch", "-q", "origin", cwd=self.work, check=False, **self.env).returncode:
            return  # its edge's node choice was down: no push this round
        git.run("reset", "-q", "--hard", "origin/main", cwd=self.work)
        forced = rng.random() < 0.15 and self._has_parent(git)
        if forced:
            git.run("reset", "-q", "--hard", "HEAD~1", cwd=self.work)
        git.commit(self.work, f"{self.region}-{round_no}.txt", f"{round_no}\n".encode())
        head = git.run("rev-parse", "HEAD", cwd=self.work).stdout.strip()
        plus = "+" if forced else ""
        refspecs = [f"{plus}HEAD:refs/heads/main", f"+HEAD:refs/heads/{self.region}"]
        self.attempts += 1
        started_at = time.monotonic()
        done = git.run(
            "push", "--porcelain", "origin", *refspecs,
            cwd=self.work, check=False, timeout=90, **self.env,
        )  # fmt: skip
        acked_at = time.monotonic()
        flags = {}
        for line in done.stdout.splitlines():
            parts = line.split("\t")
            # Porcelain: "<flag>\t<src>:<dst>\t<summary>"; ' ', '+', '*' are accepted
            # updates, '!' a rejection (git's own, or the vote's clean refusal).
            if len(parts) >= 2 and ":" in parts[1]:
                flags[parts[1].split(":", 1)[1]] = parts[0]
        for ref in ("refs/heads/main", f"refs/heads/{self.region}"):
            flag = flags.get(ref)
            if flag == "!":
                continue
            # No line at all: the connection died (its node was killed), maybe after
            # the vote's txn. The push may have landed: unknown, not acknowledged.
            outcome = ACKED if flag in (" ", "+", "*") else UNKNOWN
            is_forced = flag == "+" or ref != "refs/heads/main" or (forced and flag is None)
            with self.lock:
                self.acks.append(Ack(ref, head, is_forced, acked_at, started_at, outcome))

    def _has_parent(self, git: Git) -> bool:
        parent = git.run("rev-parse", "-q", "--verify", "HEAD~1", cwd=self.work, check=False)
        return parent.returncode == 0


def _where_replicas(net: Devnet) -> list[str]:
    from tests.e2e.test_replication import where

    return [str(r["state"]) for r in where(net, REPO)["replicas"]]


def test_fault_loop_loses_no_acknowledged_push(
    faultnet: Devnet, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    seed = int(os.environ.get("GITEDGE_FAULT_SEED") or random.randrange(2**32))
    print(f"fault loop: {ROUNDS} rounds, seed {seed} (GITEDGE_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    home = tmp_path / "home"
    home.mkdir()
    git = Git(home, faultnet.ca_file)
    assert create(faultnet, REPO, "fra", 3).status_code == 201
    seed_work = git.new_worktree(tmp_path / "seed")
    git.commit(seed_work, "README", b"faults\n")
    git.run("push", "-q", repo_url(faultnet, REPO), "main", cwd=seed_work)
    poll(30, lambda: in_sync(faultnet, REPO, 3), "in sync before the loop")

    ssh = ssh_git_command(faultnet, tmp_path_factory.mktemp("faults-ssh"))
    acks: list[Ack] = []  # acknowledged and unknown outcomes (replcheck's input)
    pushers = []
    for region in REGIONS:
        if region == "lax":
            url = f"{edge(faultnet, region).ssh_url}/{REPO}.git"
            env: dict[str, Any] = {"GIT_SSH_COMMAND": ssh}
        else:
            url, env = repo_url(faultnet, REPO, edge_url=edge(faultnet, region).https_url), {}
        work = tmp_path / f"w-{region}"
        git.run("clone", "-q", url, str(work), **env)
        pushers.append(Pusher(region, url, work, env, acks))

    down: NodeHandle | None = None
    kills = 0
    for round_no in range(ROUNDS):
        if down is not None:
            faultnet.restart_node(down)  # waits until it reconciled and registered
            down = None
        victim = rng.choice(list(faultnet.nodes.values())) if rng.random() < 0.6 else None
        delay = rng.uniform(0.0, 0.6)
        rngs = [random.Random(rng.random()) for _ in pushers]
        threads = [
            threading.Thread(target=p.push_once, args=(git, r, round_no))
            for p, r in zip(pushers, rngs, strict=True)
        ]
        for thread in threads:
            thread.start()
        if victim is not None:
            time.sleep(delay)  # somewhere in the pushes: before, during or after a vote
            victim.process.kill()
            down, kills = victim, kills + 1
        for thread in threads:
            thread.join(timeout=180)
            assert not thread.is_alive(), "a push hung"
    if down is not None:
        faultnet.restart_node(down)

    # Quiescence: every replica catches up by itself.
    poll(90, lambda: _where_replicas(faultnet) == ["in-sync"] * 3, "all replicas in sync")
    acks.sort(key=lambda a: a.acked_at)
    acks_file = tmp_path / "acks.jsonl"
    acks_file.write_text("".join(json.dumps(a.__dict__) + "\n" for a in acks))
    # The checker as one runs it by hand on a cluster.
    volumes = [arg for n in faultnet.nodes.values() for arg in ("--volume", str(n.volume_dir))]
    checked = subprocess.run(
        [sys.executable, "-m", "devnet.replcheck", "--etcd", faultnet.etcd.url,
         "--repo", REPO, "--acks", str(acks_file), *volumes],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    print(checked.stdout, checked.stderr)
    attempts = sum(p.attempts for p in pushers)
    acked = sum(a.outcome == ACKED for a in acks)
    print(
        f"fault loop: {kills} kills, {attempts} pushes tried, {acked} ref updates acknowledged,"
        f" {len(acks) - acked} of unknown outcome"
    )
    assert checked.returncode == 0 and checked.stdout.startswith("OK:"), checked.stdout
    assert re.search(r"; [1-9]\d* acknowledged pushes checked", checked.stdout), checked.stdout
    assert kills > 0 or ROUNDS < 3


def test_the_checker_catches_a_lost_push_and_a_diverged_replica(
    faultnet: Devnet, tmp_path: Path
) -> None:
    """The checker must be able to fail: a fabricated acknowledgement of a commit the
    consensus never took, and a replica whose ref was moved behind the system's back."""
    home = tmp_path / "home"
    home.mkdir()
    git = Git(home, faultnet.ca_file)
    assert create(faultnet, "alice/checked", "fra", 3).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    first = git.commit(work, "a", b"1\n")
    git.run("push", "-q", repo_url(faultnet, "alice/checked"), "main", cwd=work)
    poll(30, lambda: in_sync(faultnet, "alice/checked", 3), "in sync")
    stray = git.commit(work, "b", b"2\n")  # committed, never pushed
    name = RepoName.parse("alice/checked")

    def run(acks: list[Ack]) -> Report:
        return run_checker(faultnet, name.path, acks)

    good = run([Ack("refs/heads/main", first, False, 1.0)])
    assert good.ok, good.text()
    # The stray commit's objects exist on one replica only if we put them there.
    target = faultnet.nodes["syd-1"].volume_dir / name.bare_dir
    # Straight into syd's copy, past every hook: a fetch runs none on its side.
    git.run("--git-dir", str(target), "fetch", "-q", str(work), f"{stray}:refs/heads/side")
    bad = run(
        [Ack("refs/heads/main", first, False, 1.0), Ack("refs/heads/main", stray, False, 2.0)]
    )
    text = bad.text()
    assert not bad.ok
    assert f"acknowledged {stray} on refs/heads/main is not reachable" in text, text
    assert "syd-1" in text and "refs differ" in text, text
    undo = ["git", "--git-dir", str(target), "update-ref", "-d", "refs/heads/side"]
    subprocess.run(undo, check=True)
