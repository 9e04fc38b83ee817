"""Replicated repositories end to end: three regions, one node and one edge each,
real etcd, real git through the edges (docs/replication.md)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devnet.network import Devnet
from routing.model import RepoName
from routing.schema import DEFAULT_PREFIX, Keys
from tests.e2e.conftest import (
    Git,
    create_replicated,
    poll,
    region_edge,
    repo_url,
    repo_where,
    ssh_git_command,
    three_regions,
)

REGIONS = ("fra", "lax", "syd")
# Short names, also imported from here by test_replica_changes.
create, edge, where = create_replicated, region_edge, repo_where


@pytest.fixture(scope="module")
def net3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with three_regions(tmp_path_factory, "net3") as network:
        yield network


@pytest.fixture
def git(tmp_path: Path, net3: Devnet) -> Git:
    home = tmp_path / "home"
    home.mkdir()
    return Git(home, net3.ca_file)


def replica_refs(net: Devnet, git: Git, name: str) -> dict[str, dict[str, str]]:
    """Each node's refs of `name`, read from its volume (not through any edge)."""
    found = {}
    for node in net.nodes.values():
        repo = node.volume_dir / f"{name}.git"
        if repo.is_dir():
            out = git.run(
                "for-each-ref",
                "--format=%(objectname) %(refname)",
                "refs/heads",
                "refs/tags",
                cwd=repo,
            ).stdout
            found[node.node_id] = {line.split()[1]: line.split()[0] for line in out.splitlines()}
    return found


def in_sync(net: Devnet, name: str, count: int) -> bool:
    """`repo where` shows exactly `count` replicas in sync."""
    shown = where(net, name)
    states: list[str] = [str(r["state"]) for r in shown["replicas"]]
    return states.count("in-sync") == count


def test_push_through_lax_then_clone_through_fra_sees_it(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    made = create(net3, "alice/story", "lax", 3)
    assert made.status_code == 201, made.text
    shown = where(net3, "alice/story")
    assert shown["region"] == "lax" and shown["sync_replicas"] == 2
    assert sorted(r["region"] for r in shown["replicas"]) == sorted(REGIONS)
    assert all(r["state"] == "in-sync" for r in shown["replicas"])

    work = git.new_worktree(tmp_path / "w")
    head = git.commit(work, "a.txt", b"one\n")
    lax_url = repo_url(net3, "alice/story", edge_url=edge(net3, "lax").https_url)
    git.run("push", "-q", lax_url, "main", cwd=work)
    # At once, through another region's edge: the clone has the push.
    fra_url = repo_url(net3, "alice/story", edge_url=edge(net3, "fra").https_url)
    git.run("clone", "-q", fra_url, str(tmp_path / "c"))
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == head
    assert where(net3, "alice/story")["generation"] == 1
    # Every replica converges on the consensus by itself (the primary tells the others).
    poll(20, lambda: in_sync(net3, "alice/story", 3), "all three replicas in sync")
    refs = replica_refs(net3, git, "alice/story")
    assert len(refs) == 3 and all(r == {"refs/heads/main": head} for r in refs.values())
    # Forced updates and deletes are changes like any other.
    git.run("tag", "v1", cwd=work)
    git.run("push", "-q", lax_url, "v1", cwd=work)
    git.run("push", "-q", fra_url, ":refs/tags/v1", cwd=work)
    poll(20, lambda: in_sync(net3, "alice/story", 3), "all three in sync after the delete")
    assert where(net3, "alice/story")["generation"] == 3
    assert all(
        r == {"refs/heads/main": head} for r in replica_refs(net3, git, "alice/story").values()
    )


def test_two_concurrent_pushes_to_main_one_wins_none_diverges(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create(net3, "alice/race", "fra", 3).status_code == 201
    base = git.new_worktree(tmp_path / "base")
    git.commit(base, "a.txt", b"base\n")
    url = {r: repo_url(net3, "alice/race", edge_url=edge(net3, r).https_url) for r in REGIONS}
    git.run("push", "-q", url["fra"], "main", cwd=base)
    poll(20, lambda: in_sync(net3, "alice/race", 3), "in sync before the race")
    works = {}
    for region in ("fra", "syd"):
        works[region] = tmp_path / f"w-{region}"
        git.run("clone", "-q", url[region], str(works[region]))
        git.commit(works[region], f"{region}.txt", region.encode())
    results: dict[str, Any] = {}

    def push(region: str) -> None:
        results[region] = git.run("push", url[region], "main", cwd=works[region], check=False)

    threads = [threading.Thread(target=push, args=(r,)) for r in works]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    codes = sorted(r.returncode for r in results.values())
    assert codes[0] == 0 and codes[1] != 0, {k: v.stderr for k, v in results.items()}
    loser = next(r for r in results.values() if r.returncode != 0)
    assert "fetch first" in loser.stderr, loser.stderr
    winner = next(region for region, r in results.items() if r.returncode == 0)
    want = git.run("rev-parse", "HEAD", cwd=works[winner]).stdout.strip()
    poll(20, lambda: in_sync(net3, "alice/race", 3), "in sync after the race")
    refs = replica_refs(net3, git, "alice/race")
    assert all(r == {"refs/heads/main": want} for r in refs.values()), refs
    assert where(net3, "alice/race")["generation"] == 2


def test_a_peer_transfer_writes_only_the_hidden_namespace_and_only_for_a_node(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    """The endpoint a primary pushes a push's objects to (node/repl_git.transfer_url):
    receive-pack with the store's transfer hook instead of the repository's vote."""
    assert create(net3, "alice/xfer", "fra", 2).status_code == 201
    node = net3.nodes["fra-1"]
    url = f"{node.http_url}/_gitedge/repl/git/alice/xfer.git"
    work = git.new_worktree(tmp_path / "w")
    git.commit(work, "a.txt", b"one\n")
    secret = net3.admin_secret_file.read_text().strip()
    header = f"http.extraHeader=Authorization: Bearer {secret}"
    git.run("-c", header, "push", "-q", url, "HEAD:refs/gitedge/incoming/t/0", cwd=work)
    outside = git.run("-c", header, "push", url, "HEAD:refs/heads/main", cwd=work, check=False)
    assert outside.returncode != 0
    assert "a transfer may only write refs/gitedge/incoming/" in outside.stderr, outside.stderr
    bare = node.volume_dir / "alice/xfer.git"
    heads = git.run("for-each-ref", "refs/heads", cwd=bare).stdout
    assert heads == ""  # nothing but the hidden ref was written, and no vote ran
    assert where(net3, "alice/xfer")["generation"] == 0
    # Not a way to read, and not for anyone without the node credential.
    assert git.run("-c", header, "ls-remote", url, check=False).returncode != 0
    stranger = git.run("push", url, "HEAD:refs/gitedge/incoming/t/1", cwd=work, check=False)
    assert stranger.returncode != 0
    assert "refs/gitedge/incoming/t/1" not in git.run("for-each-ref", cwd=bare).stdout


def test_a_replica_down_the_push_still_lands_on_two_and_it_catches_up(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create(net3, "alice/down", "lax", 3).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    head = git.commit(work, "a.txt", b"one\n")
    url = repo_url(net3, "alice/down", edge_url=edge(net3, "lax").https_url)
    syd = net3.nodes["syd-1"]
    syd.process.kill()
    try:
        poll(20, lambda: any(r["state"] == "down" for r in where(net3, "alice/down")["replicas"]))
        git.run("push", "-q", url, "main", cwd=work)
        shown = where(net3, "alice/down")
        states = {r["node"] or r["region"]: (r["state"], r["behind"]) for r in shown["replicas"]}
        assert states["syd"] == ("down", 1), states
        # Fewer than W reachable: refused at once, with the reason, and nothing changed.
        net3.nodes["fra-1"].process.kill()
        poll(
            20,
            lambda: sum(r["state"] == "down" for r in where(net3, "alice/down")["replicas"]) == 2,
        )
        git.commit(work, "b.txt", b"two\n")
        refused = git.run("push", url, "main", cwd=work, check=False, timeout=30)
        assert refused.returncode != 0
        assert "of the 2 replicas this push must reach are up" in refused.stderr, refused.stderr
        assert where(net3, "alice/down")["generation"] == 1
    finally:
        for node_id in ("fra-1", "syd-1"):
            node = net3.nodes[node_id]
            if not node.process.alive():
                net3.restart_node(node)
    # Back: each catches up by itself, without another push.
    poll(30, lambda: in_sync(net3, "alice/down", 3), "the restarted replicas to catch up")
    refs = replica_refs(net3, git, "alice/down")
    assert all(r == {"refs/heads/main": head} for r in refs.values()), refs


def etcd_keys(net: Devnet, prefix: str) -> list[str]:
    """Every key under `prefix`, read straight from etcd's JSON gateway."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    got = httpx.post(
        f"{net.etcd.url}/v3/kv/range",
        json={"key": b64(prefix), "range_end": b64(end), "keys_only": True},
        timeout=10,
    )
    got.raise_for_status()
    return [base64.b64decode(kv["key"]).decode() for kv in got.json().get("kvs", [])]


def set_snapshot_after(net: Devnet, value: int | None) -> None:
    """Restart every node with `[node] snapshot_after = value` (None: the default),
    all at once."""
    for node in net.nodes.values():
        lines = [
            line
            for line in node.config_path.read_text().splitlines()
            if not line.startswith("snapshot_after")
        ]
        if value is not None:
            lines.insert(lines.index("[node]") + 1, f"snapshot_after = {value}")
        node.config_path.write_text("\n".join(lines) + "\n")
    net.restart_nodes(list(net.nodes.values()))


def test_the_ref_log_is_snapshotted_and_a_replica_that_was_down_catches_up_from_it(
    net3: Devnet, git: Git, tmp_path: Path
) -> None:
    set_snapshot_after(net3, 3)
    try:
        assert create(net3, "alice/snap", "fra", 3).status_code == 201
        keys = Keys(DEFAULT_PREFIX)
        repo = RepoName("alice", "snap")
        work = git.new_worktree(tmp_path / "w")
        url = repo_url(net3, "alice/snap", edge_url=edge(net3, "fra").https_url)
        net3.nodes["syd-1"].process.kill()
        heads = []
        for i in range(8):
            heads.append(git.commit(work, f"f{i}.txt", f"{i}\n".encode()))
            git.run("push", "-q", url, "main", cwd=work)
            git.run("tag", f"v{i}", cwd=work)
            git.run("push", "-q", url, f"v{i}", cwd=work)
        # 16 generations; lax folds them as it applies and snapshots every 3 or more:
        # what is left is one snapshot and at most a few entries after it.
        poll(20, lambda: lax_state(net3, "alice/snap") == "in-sync", "lax in sync")
        left = etcd_keys(net3, keys.refs_repo(repo))
        snaps = [k for k in left if k.startswith(keys.refs_snap(repo)) and k.endswith("/done")]
        logs = [k for k in left if k.startswith(keys.refs_log(repo))]
        assert len(snaps) == 1 and len(logs) < 16, left
        assert where(net3, "alice/snap")["generation"] == 16
        # syd missed every generation, most of them trimmed: it catches up from the snapshot.
        net3.restart_node(net3.nodes["syd-1"])
        poll(30, lambda: in_sync(net3, "alice/snap", 3), "all three in sync")
        want = {"refs/heads/main": heads[-1]} | {
            f"refs/tags/v{i}": head for i, head in enumerate(heads)
        }
        refs = replica_refs(net3, git, "alice/snap")
        assert len(refs) == 3 and all(r == want for r in refs.values()), refs
    finally:
        set_snapshot_after(net3, None)


def lax_state(net: Devnet, name: str) -> str:
    return next(str(r["state"]) for r in where(net, name)["replicas"] if r["region"] == "lax")


@pytest.fixture(scope="module")
def alice_ssh(net3: Devnet, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ssh_git_command(net3, tmp_path_factory.mktemp("alice-ssh"))


def test_a_push_over_ssh_replicates_and_ssh_reads_follow_the_in_sync_replicas(
    net3: Devnet, git: Git, alice_ssh: str, tmp_path: Path
) -> None:
    # The SSH session reaches the node over HTTP (node/ssh_http.py): its
    # receive-pack must run the replication hooks with the node's URL and
    # credential, or the vote is refused and this push fails.
    assert create(net3, "alice/ssh-story", "lax", 3).status_code == 201
    ssh_url = {r: f"{edge(net3, r).ssh_url}/alice/ssh-story.git" for r in REGIONS}
    work = git.new_worktree(tmp_path / "w")
    head = git.commit(work, "a.txt", b"over ssh\n")
    git.run("push", "-q", ssh_url["lax"], "main", cwd=work, GIT_SSH_COMMAND=alice_ssh)
    assert where(net3, "alice/ssh-story")["generation"] == 1
    # At once, over SSH through another region's edge: the clone has the push.
    git.run("clone", "-q", ssh_url["fra"], str(tmp_path / "c"), GIT_SSH_COMMAND=alice_ssh)
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == head
    poll(20, lambda: in_sync(net3, "alice/ssh-story", 3), "all three replicas in sync")
    refs = replica_refs(net3, git, "alice/ssh-story")
    assert len(refs) == 3 and all(r == {"refs/heads/main": head} for r in refs.values())

    # With the home stopped (its lease revoked), the SSH front still serves the
    # read from an in-sync replica: it routes with resolve_read, not to the home.
    lax = net3.nodes["lax-1"]
    lax.process.stop()
    try:
        poll(20, lambda: lax_state(net3, "alice/ssh-story") == "down", "lax-1 down")
        clone = tmp_path / "c-syd"
        git.run("clone", "-q", ssh_url["syd"], str(clone), GIT_SSH_COMMAND=alice_ssh)
        assert git.run("rev-parse", "HEAD", cwd=clone).stdout.strip() == head
    finally:
        net3.restart_node(lax)
    poll(30, lambda: in_sync(net3, "alice/ssh-story", 3), "the restarted home in sync")
