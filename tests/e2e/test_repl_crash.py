"""Crash safety of replicated pushes: SIGKILLs of the node that took a push, right
after it returned, while its pack streams, and inside the vote (before and after
the etcd txn, held there by node/faultpoints.py's test-only pause). Three regions,
real etcd, git and OpenSSH; every test ends with devnet/replcheck's checks."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from devnet.network import Devnet, NodeHandle
from devnet.replcheck import Ack
from routing.model import RepoName
from tests.e2e.conftest import (
    THREE_REGIONS,
    Git,
    consensus,
    disk_refs,
    git_children,
    gitedge,
    poll,
    repo_url,
    run_checker,
    ssh_git_command,
)
from tests.e2e.test_replication import create, edge, in_sync, where

REGIONS = ("fra", "lax", "syd")


NETWORK = THREE_REGIONS  # tests/e2e/conftest.py's net fixture


@pytest.fixture(scope="module")
def alice_ssh(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ssh_git_command(net, tmp_path_factory.mktemp("crash-ssh"))


def has_object(node: NodeHandle, name: str, oid: str) -> bool:
    repo = node.volume_dir / RepoName.parse(name).bare_dir
    probe = ["git", "--git-dir", str(repo), "cat-file", "-e", oid]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def seeded(net: Devnet, git: Git, tmp_path: Path, name: str) -> tuple[Path, str]:
    """A 3-replica repository homed in lax with one commit, in sync everywhere."""
    assert create(net, name, "lax", 3).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    first = git.commit(work, "a.txt", b"one\n")
    git.run("push", "-q", lax_url(net, name), "main", cwd=work)
    poll(30, lambda: in_sync(net, name, 3), "in sync before the crash")
    return work, first


def lax_url(net: Devnet, name: str) -> str:
    return repo_url(net, name, edge_url=edge(net, "lax").https_url)


def restart(net: Devnet, node_id: str, **env: str) -> NodeHandle:
    return net.restart_node(net.nodes[node_id], env=env or None)


def receive_pack_running(node: NodeHandle) -> bool:
    for pid in git_children(node.process.popen.pid):
        try:
            if b"receive-pack" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def region_state(net: Devnet, name: str, region: str) -> str:
    return next(str(r["state"]) for r in where(net, name)["replicas"] if r["region"] == region)


def log_has(node: NodeHandle, text: str) -> bool:
    return text in node.process.log_path.read_text(errors="replace")


def test_the_primary_killed_right_after_the_push_returned_loses_nothing(
    net: Devnet, git: Git, alice_ssh: str, tmp_path: Path
) -> None:
    name = "alice/kill-after"
    work, _ = seeded(net, git, tmp_path, name)
    head = git.commit(work, "b.txt", b"two\n")
    git.run("push", "-q", lax_url(net, name), "main", cwd=work)  # lax-1 is the primary
    net.nodes["lax-1"].process.kill()
    try:
        # At once, through the two other regions' edges, over HTTPS and SSH.
        syd = repo_url(net, name, edge_url=edge(net, "syd").https_url)
        git.run("clone", "-q", syd, str(tmp_path / "c-syd"))
        fra_ssh = f"{edge(net, 'fra').ssh_url}/{name}.git"
        git.run("clone", "-q", fra_ssh, str(tmp_path / "c-fra"), GIT_SSH_COMMAND=alice_ssh)
        for clone in ("c-syd", "c-fra"):
            assert git.run("rev-parse", "HEAD", cwd=tmp_path / clone).stdout.strip() == head
        # Pushes keep working with 2 of 3 up, through any edge.
        git.run("pull", "-q", "--ff-only", cwd=tmp_path / "c-syd")
        after = git.commit(tmp_path / "c-syd", "c.txt", b"three\n")
        git.run("push", "-q", syd, "main", cwd=tmp_path / "c-syd")
    finally:
        restart(net, "lax-1")
    poll(30, lambda: in_sync(net, name, 3), "the killed primary back in sync")
    acks = [Ack("refs/heads/main", c, False, float(i)) for i, c in enumerate((head, after))]
    report = run_checker(net, name, acks)
    assert report.ok, report.text()


def kill_mid_vote(
    net: Devnet, git: Git, tmp_path: Path, name: str, point: str
) -> tuple[str, subprocess.CompletedProcess[str], int]:
    """Push through lax with lax-1 paused at `point`, SIGKILL it there; the new
    commit, what the pusher saw, and the generation before the push."""
    work, _ = seeded(net, git, tmp_path, name)
    before, _ = consensus(net, name)
    lax = restart(net, "lax-1", GITEDGE_TEST_PAUSE=f"{point}=30")
    poll(30, lambda: in_sync(net, name, 3), "lax-1 back before the push")
    head = git.commit(work, "b.txt", b"two\n")
    seen: dict[str, Any] = {}

    def push() -> None:
        seen["push"] = git.run("push", lax_url(net, name), "main", cwd=work, check=False)

    pusher = threading.Thread(target=push)
    pusher.start()
    poll(60, lambda: log_has(lax, f"at {point} ({name})"), f"lax-1 paused at {point}")
    lax.process.kill()
    pusher.join(timeout=120)
    assert not pusher.is_alive(), "the push hung after its primary died"
    return head, seen["push"], before


def tips_held_by_a_live_replica(net: Devnet, name: str) -> None:
    """The consensus names no object that no replica still up holds."""
    _, refs = consensus(net, name)
    live = [n for n in net.nodes.values() if n.process.alive()]
    for ref, oid in refs.items():
        assert any(has_object(n, name, oid) for n in live), f"{ref} {oid} is on no live replica"


def test_a_primary_killed_inside_the_vote_before_the_txn_changes_nothing(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    name = "alice/kill-before-txn"
    head, pushed, before = kill_mid_vote(net, git, tmp_path, name, "vote-before-commit")
    assert pushed.returncode != 0, pushed.stderr
    generation, refs = consensus(net, name)
    assert generation == before and refs["refs/heads/main"] != head
    tips_held_by_a_live_replica(net, name)
    restart(net, "lax-1")
    poll(30, lambda: in_sync(net, name, 3), "all in sync after the restart")
    report = run_checker(net, name, [])
    assert report.ok, report.text()


def test_a_primary_killed_after_the_txn_committed_reconciles_before_it_serves(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    name = "alice/kill-after-txn"
    head, pushed, before = kill_mid_vote(net, git, tmp_path, name, "vote-after-commit")
    # The pusher was not told it succeeded (the node relays receive-pack's answer,
    # so its death is an error with an unknown outcome for the client: an HTTP 503).
    assert pushed.returncode != 0
    # The vote won: the consensus names the push, and a live replica holds it.
    generation, refs = consensus(net, name)
    assert generation == before + 1 and refs["refs/heads/main"] == head
    tips_held_by_a_live_replica(net, name)
    poll(30, lambda: in_sync(net, name, 2), "fra and syd caught up without the primary")
    # Restarted, the primary reconciled before it registered (the ready file is
    # written after both): its disk already equals the consensus.
    lax = restart(net, "lax-1")
    assert disk_refs(lax, name) == refs
    clone = tmp_path / "c-lax"  # through its own region's edge, which prefers it
    git.run("clone", "-q", lax_url(net, name), str(clone))
    assert git.run("rev-parse", "HEAD", cwd=clone).stdout.strip() == head
    poll(30, lambda: in_sync(net, name, 3), "all in sync after the restart")
    report = run_checker(net, name, [])
    assert report.ok, report.text()


def test_a_primary_killed_while_the_pack_streams_changes_nothing(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    name = "alice/kill-streaming"
    work, _ = seeded(net, git, tmp_path, name)
    before, refs_before = consensus(net, name)
    # Incompressible, so the pack takes a while to stream through the edge.
    git.commit(work, "big.bin", os.urandom(48 * 1024 * 1024))
    lax = net.nodes["lax-1"]
    seen: dict[str, Any] = {}

    def push() -> None:
        seen["push"] = git.run("push", lax_url(net, name), "main", cwd=work, check=False)

    pusher = threading.Thread(target=push)
    pusher.start()
    poll(60, lambda: receive_pack_running(lax), "receive-pack running on lax-1")
    lax.process.kill()
    pusher.join(timeout=120)
    assert not pusher.is_alive(), "the push hung after its primary died"
    assert seen["push"].returncode != 0
    assert consensus(net, name) == (before, refs_before)
    restart(net, "lax-1")
    poll(30, lambda: in_sync(net, name, 3), "all in sync after the restart")
    report = run_checker(net, name, [])
    assert report.ok, report.text()


def test_a_replica_whose_sources_were_down_when_it_returned_catches_up_by_retrying(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    """syd-1 misses a push, then comes back while both replicas that hold it are
    down: its first catch-up fails. Once fra-1 returns, syd-1 catches up by
    itself (retries with backoff), with no further push to wake it."""
    name = "alice/retry"
    work, _ = seeded(net, git, tmp_path, name)
    net.nodes["syd-1"].process.kill()
    head = git.commit(work, "b.txt", b"two\n")
    git.run("push", "-q", lax_url(net, name), "main", cwd=work)
    poll(30, lambda: in_sync(net, name, 2), "lax and fra in sync")
    for node_id in ("lax-1", "fra-1"):
        net.nodes[node_id].process.kill()
    try:
        syd = restart(net, "syd-1")
        poll(30, lambda: log_has(syd, f"{name}: catch-up failed"), "syd-1's failed catch-up")
        restart(net, "fra-1")
        poll(30, lambda: region_state(net, name, "syd") == "in-sync", "syd-1 caught up by itself")
        assert disk_refs(syd, name) == {"refs/heads/main": head}
    finally:
        restart(net, "lax-1")
    poll(30, lambda: in_sync(net, name, 3), "all in sync")
    report = run_checker(net, name, [Ack("refs/heads/main", head, False, 1.0)])
    assert report.ok, report.text()


def test_the_primary_copy_removed_mid_vote_tells_the_pusher_to_push_again(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    """The race a CI run caught during `repo move`: the pushed copy is deleted while
    its vote runs, git fails in the vanished directory, and the pusher must still be
    told to push again (it once got "the replica's node did not answer")."""
    name = "alice/removed-mid-vote"
    work, first = seeded(net, git, tmp_path, name)
    lax = restart(net, "lax-1", GITEDGE_TEST_PAUSE="vote-start=60")
    poll(30, lambda: in_sync(net, name, 3), "lax-1 back before the push")
    head = git.commit(work, "b.txt", b"two\n")
    seen: dict[str, Any] = {}

    def push() -> None:
        seen["push"] = git.run("push", lax_url(net, name), "main", cwd=work, check=False)

    pusher = threading.Thread(target=push)
    pusher.start()
    try:
        poll(60, lambda: log_has(lax, f"at vote-start ({name})"), "lax-1 paused at vote-start")
        removed = gitedge(
            net.edge.https_url, net.ca_file, "repo", "replicas", "remove", name, "lax",
            GITEDGE_USER="alice", GITEDGE_TOKEN=net.user_token("alice"),
        )  # fmt: skip
        assert removed.returncode == 0, removed.stderr
        assert not (lax.volume_dir / RepoName.parse(name).bare_dir).exists()
        lax.process.popen.send_signal(signal.SIGUSR1)  # the vote goes on (node/faultpoints.py)
        pusher.join(timeout=120)
        assert not pusher.is_alive(), "the push hung"
    finally:
        restart(net, "lax-1")
    pushed = seen["push"]
    assert pushed.returncode != 0
    assert "push again" in pushed.stderr, pushed.stderr
    assert consensus(net, name)[1]["refs/heads/main"] == first
    # The two replicas left agree with the consensus, which the push did not move.
    poll(30, lambda: in_sync(net, name, 2), "fra and syd in sync")
    for node_id in ("fra-1", "syd-1"):
        assert disk_refs(net.nodes[node_id], name) == {"refs/heads/main": first}
    assert head != first
