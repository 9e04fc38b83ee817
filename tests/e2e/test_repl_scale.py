"""Replicated repositories at the edges of etcd: a 10,000-tag push (one vote, one
log generation within etcd's limits), reads right after pushes through another
region's edge (looped), and etcd's history compacted while a replica is down.

Rounds of the read-after-push loop: GITEDGE_READ_AFTER_PUSH_ROUNDS, else 10 with
CI=true and 40 otherwise.
"""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from devnet.network import Devnet
from devnet.replcheck import Ack
from routing.consensus import LOG_CHUNK_BYTES
from routing.model import RepoName
from routing.schema import DEFAULT_PREFIX, Keys
from tests.e2e.conftest import (
    THREE_REGIONS,
    Git,
    consensus,
    disk_refs,
    poll,
    repo_url,
    run_checker,
    ssh_git_command,
)
from tests.e2e.test_repl_crash import region_state
from tests.e2e.test_replication import create, edge, in_sync

REGIONS = ("fra", "lax", "syd")
READ_ROUNDS = int(
    os.environ.get("GITEDGE_READ_AFTER_PUSH_ROUNDS") or (10 if os.environ.get("CI") else 40)
)
ETCD_REQUEST_LIMIT = 1536 * 1024  # etcd's default --max-request-bytes
ETCD_MAX_TXN_OPS = 128


NETWORK = THREE_REGIONS  # tests/e2e/conftest.py's net fixture


def url(net: Devnet, name: str, region: str) -> str:
    return repo_url(net, name, edge_url=edge(net, region).https_url)


def etcd_post(net: Devnet, path: str, body: dict[str, object]) -> dict[str, object]:
    answer = httpx.post(f"{net.etcd.url}{path}", json=body, timeout=10)
    assert answer.status_code == 200, answer.text
    data: dict[str, object] = answer.json()
    return data


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def log_generations(net: Devnet, name: str) -> dict[int, list[int]]:
    """generation -> the sizes of its log chunks, straight from etcd."""
    prefix = Keys(DEFAULT_PREFIX).refs_log(RepoName.parse(name))
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    listed = etcd_post(net, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
    found: dict[int, list[int]] = {}
    for kv in listed.get("kvs", []):  # type: ignore[attr-defined]
        key = base64.b64decode(kv["key"]).decode().removeprefix(prefix)
        found.setdefault(int(key.split("/")[0]), []).append(len(base64.b64decode(kv["value"])))
    return found


def test_a_push_of_10000_tags_is_one_vote_in_one_generation(
    net: Devnet, git: Git, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = "alice/tags"
    assert create(net, name, "fra", 3).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    head = git.commit(work, "a.txt", b"tagged\n")
    git.run("push", "-q", url(net, name, "fra"), "main", cwd=work)
    before, _ = consensus(net, name)
    logged_before = set(log_generations(net, name))
    script = "".join(f"create refs/tags/t{i:05d} {head}\n" for i in range(10_000))
    made = subprocess.run(
        ["git", "update-ref", "--stdin"], cwd=work, env=git.env(), input=script, text=True
    )
    assert made.returncode == 0
    # Over SSH: stock git 2.39's HTTP transport helper spends time quadratic in the
    # number of refs in the client before it sends its POST (measured straight to a
    # node, no edge: 2.1 s for 2,000 refs, 7.0 s for 4,000; ~50 s for 10,000), while
    # its SSH path pushes 10,000 tags in seconds. The edge and node paths are the same.
    ssh = ssh_git_command(net, tmp_path_factory.mktemp("tags-ssh"))
    ssh_url = f"{edge(net, 'fra').ssh_url}/{name}.git"
    pushed = git.run(
        "push", "--porcelain", ssh_url, "refs/tags/*", cwd=work, timeout=300, GIT_SSH_COMMAND=ssh
    )
    assert pushed.stdout.count("[new tag]") == 10_000

    generation, refs = consensus(net, name)
    assert generation == before + 1, "10,000 tags must be one vote"
    assert len(refs) == 10_001
    new = {g: sizes for g, sizes in log_generations(net, name).items() if g not in logged_before}
    assert list(new) == [generation], new
    chunks = new[generation]
    # The vote's txn: state, applied and the chunks; each value well under etcd's limit.
    assert len(chunks) + 2 <= ETCD_MAX_TXN_OPS and max(chunks) <= LOG_CHUNK_BYTES
    assert sum(chunks) * 4 // 3 < ETCD_REQUEST_LIMIT  # base64 on the gateway
    # Through another region's edge at once, and on every replica once in sync.
    listed = git.run("ls-remote", "--tags", url(net, name, "syd")).stdout.splitlines()
    assert len(listed) == 10_000 and all(line.startswith(head) for line in listed)
    poll(60, lambda: in_sync(net, name, 3), "all three replicas in sync")
    for node in net.nodes.values():
        assert disk_refs(node, name) == refs, node.node_id
    report = run_checker(net, name, [Ack("refs/tags/t09999", head, False, 1.0)])
    assert report.ok, report.text()


def test_a_clone_right_after_a_push_through_another_edge_sees_it(
    net: Devnet, git: Git, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    name = "alice/read-after-push"
    assert create(net, name, "lax", 3).status_code == 201
    ssh = ssh_git_command(net, tmp_path_factory.mktemp("rap-ssh"))
    work = git.new_worktree(tmp_path / "w")
    acks = []
    for n in range(READ_ROUNDS):
        push_region = REGIONS[n % 3]
        read_region = REGIONS[(n + 1 + n // 3 % 2) % 3]  # both other regions in turn
        head = git.commit(work, f"f{n}.txt", f"{n}\n".encode())
        git.run("push", "-q", url(net, name, push_region), "HEAD:main", cwd=work)
        acks.append(Ack("refs/heads/main", head, False, float(n)))
        clone = tmp_path / f"c{n}"
        if n % 2:
            ssh_url = f"{edge(net, read_region).ssh_url}/{name}.git"
            git.run("clone", "-q", ssh_url, str(clone), GIT_SSH_COMMAND=ssh)
        else:
            git.run("clone", "-q", url(net, name, read_region), str(clone))
        seen = git.run("rev-parse", "HEAD", cwd=clone).stdout.strip()
        assert seen == head, f"round {n}: pushed via {push_region}, {read_region} served {seen}"
    poll(30, lambda: in_sync(net, name, 3), "all in sync")
    report = run_checker(net, name, acks)
    assert report.ok, report.text()


def test_etcd_compacted_while_a_replica_is_down_it_catches_up_on_return(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    name = "alice/compacted"
    assert create(net, name, "fra", 3).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    acks = [Ack("refs/heads/main", git.commit(work, "a", b"0\n"), False, 0.0)]
    git.run("push", "-q", url(net, name, "fra"), "main", cwd=work)
    poll(30, lambda: in_sync(net, name, 3), "in sync before")
    syd = net.nodes["syd-1"]
    syd.process.kill()
    for n in range(1, 6):
        acks.append(Ack("refs/heads/main", git.commit(work, f"f{n}", b"x\n"), False, float(n)))
        git.run("push", "-q", url(net, name, "fra" if n % 2 else "lax"), "main", cwd=work)
    # Compact all history up to now (etcd's v3 JSON gateway), physically.
    revision = int(etcd_post(net, "/v3/kv/range", {"key": b64("x")})["header"]["revision"])  # type: ignore[index]
    etcd_post(net, "/v3/kv/compaction", {"revision": str(revision), "physical": True})
    old = httpx.post(
        f"{net.etcd.url}/v3/kv/range",
        json={"key": b64("x"), "revision": str(revision - 1)},
        timeout=10,
    )
    assert "compacted" in old.text, old.text  # the history is really gone
    net.restart_node(syd)
    poll(30, lambda: region_state(net, name, "syd") == "in-sync", "syd-1 caught up")
    generation, refs = consensus(net, name)
    assert disk_refs(net.nodes["syd-1"], name) == refs
    # Its watch works after the compaction: a push through its own edge lands everywhere.
    acks.append(Ack("refs/heads/main", git.commit(work, "after", b"y\n"), False, 9.0))
    git.run("push", "-q", url(net, name, "syd"), "main", cwd=work)
    poll(30, lambda: in_sync(net, name, 3), "all in sync after the compaction")
    assert consensus(net, name)[0] == generation + 1
    report = run_checker(net, name, acks)
    assert report.ok, report.text()
