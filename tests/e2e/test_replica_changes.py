"""Replica-set changes online, move, repair and verify, end to end: three regions
(the module network of test_replication.py), real etcd, real git through the
edges, the `gitedge` CLI. Pushes run while each change runs; every push that
was acknowledged must be in the final history."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import trio

from devnet.network import Devnet
from routing.etcd import EtcdClient
from routing.model import RepoName
from routing.schema import DEFAULT_PREFIX, Keys
from tests.e2e import test_replication
from tests.e2e.conftest import Git, gitedge, poll, repo_url
from tests.e2e.test_replication import REGIONS, create, edge, in_sync, replica_refs, where

# The three-region network (module-scoped) and the git fixture of test_replication.
net3 = test_replication.net3
git = test_replication.git
alice_ssh = test_replication.alice_ssh


def cli(net: Devnet, *args: str) -> subprocess.CompletedProcess[str]:
    return gitedge(
        net.edge.https_url,
        net.ca_file,
        *args,
        GITEDGE_USER="alice",
        GITEDGE_TOKEN=net.user_token("alice"),
    )


class Pusher(threading.Thread):
    """Pushes one new commit after another to `branch` until told to stop: at least 2,
    and on until one is acknowledged (at most `AFTER_STOP` more tries after the stop).

    Two pushers race each other (and the change under test); on a busy machine one of
    them can lose every race while the change runs, each refusal with advice. The
    pushes after the stop show that it can push again once the race is over.
    """

    AFTER_STOP = 10

    def __init__(
        self,
        git: Git,
        work: Path,
        url: str,
        branch: str = "main",
        env: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.git, self.work, self.url, self.branch = git, work, url, branch
        self.env = env or {}
        self.acked: list[str] = []
        self.refused: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        n = after_stop = 0
        while not self.done.is_set() or n < 2 or (not self.acked and after_stop < self.AFTER_STOP):
            n += 1
            after_stop += self.done.is_set()
            head = self.git.commit(self.work, f"during-{n}.txt", f"{n}\n".encode())
            pushed = self.git.run(
                "push", "-q", self.url, f"HEAD:refs/heads/{self.branch}",
                cwd=self.work, check=False, **self.env,
            )  # fmt: skip
            if pushed.returncode == 0:
                self.acked.append(head)
            else:
                self.refused.append(pushed.stderr)

    def finish(self) -> None:
        self.done.set()
        self.join(timeout=120)
        assert not self.is_alive()
        assert self.acked, f"all {len(self.refused)} pushes refused, the last: {self.refused[-1:]}"
        # A push that raced the change is refused with advice, never anything else.
        for stderr in self.refused:
            assert "push again" in stderr or "try again" in stderr, stderr


def assert_has_every_push(git: Git, clone: Path, acked: list[str], tip: str = "HEAD") -> None:
    for head in acked:
        ancestor = git.run("merge-base", "--is-ancestor", head, tip, cwd=clone, check=False)
        assert ancestor.returncode == 0, f"acknowledged push {head} lost"


def start_pushing(net: Devnet, git: Git, tmp_path: Path, name: str, region: str) -> Pusher:
    work = tmp_path / "pusher"
    git.run("clone", "-q", repo_url(net, name, edge_url=edge(net, region).https_url), str(work))
    pusher = Pusher(git, work, repo_url(net, name, edge_url=edge(net, region).https_url))
    pusher.start()
    return pusher


def start_pushing_over_ssh(
    net: Devnet, git: Git, tmp_path: Path, name: str, region: str, ssh: str
) -> Pusher:
    """A second client, over SSH through another region's edge, on its own branch."""
    url = f"{edge(net, region).ssh_url}/{name}.git"
    work = tmp_path / "ssh-pusher"
    git.run("clone", "-q", url, str(work), GIT_SSH_COMMAND=ssh)
    pusher = Pusher(git, work, url, branch="over-ssh", env={"GIT_SSH_COMMAND": ssh})
    pusher.start()
    return pusher


def first_push(net: Devnet, git: Git, tmp_path: Path, name: str, region: str) -> str:
    work = git.new_worktree(tmp_path / "first")
    head = git.commit(work, "a.txt", b"first\n")
    git.run(
        "push", "-q", repo_url(net, name, edge_url=edge(net, region).https_url), "main", cwd=work
    )
    return head


def test_add_a_replica_while_pushing_then_its_region_reads_every_push(
    net3: Devnet, git: Git, tmp_path: Path, alice_ssh: str
) -> None:
    assert create(net3, "alice/grow", "fra", 2).status_code == 201
    first_push(net3, git, tmp_path, "alice/grow", "fra")
    poll(20, lambda: in_sync(net3, "alice/grow", 2), "both replicas in sync")
    missing = next(
        r for r in REGIONS if r not in {x["region"] for x in where(net3, "alice/grow")["replicas"]}
    )

    pusher = start_pushing(net3, git, tmp_path, "alice/grow", "fra")
    ssh_pusher = start_pushing_over_ssh(net3, git, tmp_path, "alice/grow", "lax", alice_ssh)
    added = cli(net3, "repo", "replicas", "add", "alice/grow", missing)
    pusher.finish()
    ssh_pusher.finish()
    assert added.returncode == 0, added.stderr
    answer = json.loads(added.stdout)
    assert answer["in_sync"] is True and len(answer["replicas"]) == 3

    poll(20, lambda: in_sync(net3, "alice/grow", 3), "all three in sync")
    clone = tmp_path / "c"
    url = repo_url(net3, "alice/grow", edge_url=edge(net3, missing).https_url)
    git.run("clone", "-q", url, str(clone))
    assert_has_every_push(git, clone, pusher.acked)
    assert_has_every_push(git, clone, ssh_pusher.acked, "origin/over-ssh")
    head = git.run("rev-parse", "HEAD", cwd=clone).stdout.strip()
    ssh_head = git.run("rev-parse", "origin/over-ssh", cwd=clone).stdout.strip()
    want = {"refs/heads/main": head, "refs/heads/over-ssh": ssh_head}
    refs = replica_refs(net3, git, "alice/grow")
    assert len(refs) == 3 and all(r == want for r in refs.values()), refs

    # Adding where a replica already is: refused, nothing changed.
    again = cli(net3, "repo", "replicas", "add", "alice/grow", missing)
    assert again.returncode != 0 and "holds no replica yet" in again.stderr, again.stderr
    assert len(where(net3, "alice/grow")["replicas"]) == 3


def test_remove_a_replica_while_pushing_never_below_w(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create(net3, "alice/shrink", "lax", 3).status_code == 201
    first_push(net3, git, tmp_path, "alice/shrink", "lax")
    poll(20, lambda: in_sync(net3, "alice/shrink", 3), "all three in sync")

    pusher = start_pushing(net3, git, tmp_path, "alice/shrink", "lax")
    removed = cli(net3, "repo", "replicas", "remove", "alice/shrink", "syd")
    pusher.finish()
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["disk_deleted"] is True
    shown = where(net3, "alice/shrink")
    assert sorted(r["region"] for r in shown["replicas"]) == ["fra", "lax"]
    assert not (net3.nodes["syd-1"].volume_dir / "alice/shrink.git").exists()

    # Two replicas with W=2: one more removal is refused, and says why.
    refused = cli(net3, "repo", "replicas", "remove", "alice/shrink", "lax")
    assert refused.returncode != 0
    assert "fewer than sync_replicas=2" in refused.stderr, refused.stderr
    assert len(where(net3, "alice/shrink")["replicas"]) == 2

    # The syd edge reads from a remaining replica, with every acknowledged push.
    poll(20, lambda: in_sync(net3, "alice/shrink", 2), "both left in sync")
    clone = tmp_path / "c"
    url = repo_url(net3, "alice/shrink", edge_url=edge(net3, "syd").https_url)
    git.run("clone", "-q", url, str(clone))
    assert_has_every_push(git, clone, pusher.acked)


def consensus_keys(net: Devnet, name: str) -> int:
    """How many repl/ and log keys etcd holds for `name`."""

    async def count() -> int:
        keys, repo = Keys(DEFAULT_PREFIX), RepoName.parse(name)
        async with EtcdClient(net.etcd.url) as etcd:
            repl = await etcd.range(keys.repl_repo(repo), prefix=True)
            log = await etcd.range(keys.refs_repo(repo), prefix=True)
        return len(repl.kvs) + len(log.kvs)

    return trio.run(count)


def test_move_an_unreplicated_repo_while_pushing_keeps_history_and_leaves_factor_one(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create(net3, "alice/mover", "fra", 1).status_code == 201
    first = first_push(net3, git, tmp_path, "alice/mover", "fra")
    assert "replicas" not in where(net3, "alice/mover")

    pusher = start_pushing(net3, git, tmp_path, "alice/mover", "fra")
    moved = cli(net3, "repo", "move", "alice/mover", "--to", "syd")
    pusher.finish()
    assert moved.returncode == 0, moved.stderr

    shown = where(net3, "alice/mover")
    assert shown["region"] == "syd" and shown["node"] == "syd-1"
    assert "replicas" not in shown and "generation" not in shown
    assert consensus_keys(net3, "alice/mover") == 0
    assert not (net3.nodes["fra-1"].volume_dir / "alice/mover.git").exists()
    home = net3.nodes["syd-1"].volume_dir / "alice/mover.git"
    assert not (home / "hooks/pre-receive").exists()
    assert "hideRefs" not in (home / "config").read_text()

    # History intact, the pushes made during the move included; and it takes pushes
    # as any unreplicated repository does.
    clone = tmp_path / "c"
    git.run("clone", "-q", repo_url(net3, "alice/mover"), str(clone))
    assert_has_every_push(git, clone, [first, *pusher.acked])
    after = git.commit(clone, "after.txt", b"after the move\n")
    git.run("push", "-q", "origin", "main", cwd=clone)
    assert git.run("ls-remote", repo_url(net3, "alice/mover"), "main").stdout.split()[0] == after


def test_verify_finds_a_replica_changed_behind_its_back_and_repair_from_it(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create(net3, "alice/fix", "lax", 3).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    one = git.commit(work, "a.txt", b"one\n")
    url = repo_url(net3, "alice/fix", edge_url=edge(net3, "lax").https_url)
    git.run("push", "-q", url, "main", cwd=work)
    two = git.commit(work, "b.txt", b"two\n")
    git.run("push", "-q", url, "main", cwd=work)
    poll(20, lambda: in_sync(net3, "alice/fix", 3), "all three in sync")
    ok = cli(net3, "repo", "verify", "alice/fix")
    assert ok.returncode == 0 and ok.stdout.count("in-sync") == 3, ok.stdout + ok.stderr

    # Behind the system's back: git update-ref on syd's disk.
    syd_repo = net3.nodes["syd-1"].volume_dir / "alice/fix.git"
    git.run("update-ref", "refs/heads/main", one, cwd=syd_repo)
    git.run("update-ref", "refs/heads/rogue", one, cwd=syd_repo)
    found = cli(net3, "repo", "verify", "alice/fix")
    assert found.returncode == 1, found.stdout + found.stderr
    syd_line = next(line for line in found.stdout.splitlines() if " syd " in line)
    assert "differs: 2 refs" in syd_line, found.stdout
    assert found.stdout.count("in-sync") == 2

    # repair needs its confirmation; without it nothing changes.
    syd_volume = next(
        r["volume"] for r in where(net3, "alice/fix")["replicas"] if r["region"] == "syd"
    )
    unconfirmed = cli(net3, "repo", "repair", "alice/fix", "--from", syd_volume)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    generation = where(net3, "alice/fix")["generation"]
    assert generation == 2

    repaired = cli(net3, "repo", "repair", "alice/fix", "--from", syd_volume, "--yes")
    assert repaired.returncode == 0, repaired.stderr
    assert json.loads(repaired.stdout)["moved_refs"] == 2
    assert where(net3, "alice/fix")["generation"] == 3
    # The others catch up to syd's refs by themselves; verify is clean again.
    want = {"refs/heads/main": one, "refs/heads/rogue": one}
    poll(20, lambda: in_sync(net3, "alice/fix", 3), "all three in sync after the repair")
    poll(20, lambda: all(r == want for r in replica_refs(net3, git, "alice/fix").values()))
    clean = cli(net3, "repo", "verify", "alice/fix")
    assert clean.returncode == 0 and clean.stdout.count("in-sync") == 3, clean.stdout
    # Logged at WARNING, with who and what, by the edge and by the node.
    logs = "".join(p.read_text() for p in (net3.work_dir / "logs").glob("*.log"))
    assert "REPAIR alice/fix by alice" in logs and "requested by alice" in logs
    assert two not in {r["refs/heads/main"] for r in replica_refs(net3, git, "alice/fix").values()}


def test_replica_changes_refuse_bad_input_clearly(net3: Devnet, git: Git, tmp_path: Path) -> None:
    assert create(net3, "alice/plain", "fra", 1).status_code == 201
    cases: list[tuple[list[str], str]] = [
        (["repo", "replicas", "remove", "alice/plain", "fra"], "not replicated"),
        (["repo", "verify", "alice/plain"], "not replicated"),
        (["repo", "move", "alice/plain", "--to", "fra"], "already in region fra"),
        (["repo", "replicas", "add", "alice/plain", "mars"], "unknown region"),
        (["repo", "move", "alice/nope", "--to", "syd"], "404"),
    ]
    for args, expected in cases:
        done = cli(net3, *args)
        assert done.returncode != 0 and expected in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr
    shown: dict[str, Any] = where(net3, "alice/plain")
    assert shown["region"] == "fra" and "replicas" not in shown


def test_repo_optimize_repacks_every_replica_and_loses_nothing(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    """`gitedge repo optimize` (node/housekeeper.py) on each copy of a replicated repo."""
    assert create(net3, "alice/opt", "lax", 3).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    url = repo_url(net3, "alice/opt", edge_url=edge(net3, "lax").https_url)
    for i in range(3):
        head = git.commit(work, f"{i}.txt", f"{i}\n".encode())
        git.run("push", "-q", url, "main", cwd=work)
    poll(20, lambda: in_sync(net3, "alice/opt", 3), "all three in sync")
    done = cli(net3, "repo", "optimize", "alice/opt")
    assert done.returncode == 0, done.stdout + done.stderr
    copies = json.loads(done.stdout)["copies"]
    assert len(copies) == 3
    for copy in copies:
        assert copy["ran"].startswith("repack=full"), copy
        assert copy["before"]["loose"] > 0 and copy["after"]["loose"] == 0, copy
    for node in net3.nodes.values():
        repo = node.volume_dir / "alice/opt.git"
        if repo.is_dir():
            git.run("fsck", "--strict", "--no-progress", cwd=repo)
    clone = tmp_path / "clone"
    git.run("clone", "-q", url, str(clone), cwd=tmp_path)
    assert git.run("rev-parse", "HEAD", cwd=clone).stdout.strip() == head
    refused = cli(net3, "repo", "optimize", "alice/nope")
    assert refused.returncode == 1
