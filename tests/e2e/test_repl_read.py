"""Replicated repositories: the read path, failures, and write guarantees, end to end.

Three regions (fra has two nodes), an edge per region with an 8 s replica read
wait, real etcd (stopped with SIGSTOP in one test), real git and OpenSSH.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devnet.network import Devnet, EdgeHandle
from tests.e2e.conftest import (
    Git,
    create_replicated,
    poll,
    repo_url,
    ssh_git_command,
    three_regions,
    tls,
)
from tests.e2e.conftest import region_edge as edge
from tests.e2e.conftest import repo_where as where

READ_WAIT = 8.0


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    options = f"replica_read_wait = {READ_WAIT}"
    with three_regions(tmp_path_factory, "net-read", edge_options=options) as network:
        network.start_node("fra-2", "fra", lease_ttl=3)
        yield network


@pytest.fixture(scope="module")
def alice_ssh(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> str:
    return ssh_git_command(net, tmp_path_factory.mktemp("alice-ssh"))


def create(net: Devnet, name: str, region: str, replicas: int) -> None:
    made = create_replicated(net, name, region, replicas)
    assert made.status_code == 201, made.text


def all_in_sync(net: Devnet, name: str) -> bool:
    return all(r["state"] == "in-sync" for r in where(net, name)["replicas"])


def url(net: Devnet, name: str, region: str) -> str:
    return repo_url(net, name, edge_url=edge(net, region).https_url)


def served_by(handle: EdgeHandle, name: str) -> list[str]:
    """The node of each git request for `name` in the edge's access log, in order."""
    text = handle.process.log_path.read_text(errors="replace")
    return re.findall(rf" /{re.escape(name)}\.git/\S+ HTTP/1\.1 \d+ \S+ node=(\S+)", text)


# -- raw smart HTTP: one exchange's GET and POST, with a push in between --------------


def pkt(line: str) -> bytes:
    return b"%04x" % (len(line) + 4) + line.encode()


def smart_http(net: Devnet, region: str, name: str, method: str, path: str, **kw: Any) -> bytes:
    base = f"{edge(net, region).https_url}/{name}.git"
    answer = httpx.request(
        method,
        f"{base}/{path}",
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
        timeout=30,
        **kw,
    )
    assert answer.status_code == 200, answer.text
    return answer.content


def v0_advertised_main(net: Devnet, region: str, name: str) -> str:
    body = smart_http(net, region, name, "GET", "info/refs?service=git-upload-pack")
    found = re.search(rb"([0-9a-f]{40}) refs/heads/main", body)
    assert found is not None, body[:300]
    return found.group(1).decode()


def v0_fetch(net: Devnet, region: str, name: str, want: str) -> bytes:
    body = pkt(f"want {want} ofs-delta\n") + b"0000" + pkt("done\n")
    headers = {"content-type": "application/x-git-upload-pack-request"}
    return smart_http(net, region, name, "POST", "git-upload-pack", content=body, headers=headers)


def v2_post(net: Devnet, region: str, name: str, body: bytes) -> bytes:
    headers = {
        "content-type": "application/x-git-upload-pack-request",
        "git-protocol": "version=2",
    }
    return smart_http(net, region, name, "POST", "git-upload-pack", content=body, headers=headers)


def push_commit(git: Git, work: Path, name: str, region: str, net: Devnet, text: str) -> str:
    head = git.commit(work, f"{text}.txt", text.encode())
    git.run("push", "-q", "-f", url(net, name, region), "HEAD:main", cwd=work)
    return head


def replicated_with_a_push(
    net: Devnet, git: Git, work: Path, name: str, region: str, replicas: int = 3
) -> str:
    """`name` created through `region`'s edge, one commit pushed, every replica in sync."""
    create(net, name, region, replicas)
    git.new_worktree(work)
    head = push_commit(git, work, name, region, net, "one")
    poll(20, lambda: all_in_sync(net, name), "all replicas in sync")
    return head


def test_the_get_and_post_of_one_exchange_see_one_state(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    name, work = "alice/exchange", tmp_path / "w"
    first = replicated_with_a_push(net, git, work, name, "lax")

    # Nothing changes: every request of a clone through fra goes to one replica.
    fra = edge(net, "fra")
    before = len(served_by(fra, name))
    git.run("clone", "-q", url(net, name, "fra"), str(tmp_path / "c"))
    clone_nodes = served_by(fra, name)[before:]
    assert len(clone_nodes) >= 2 and len(set(clone_nodes)) == 1, clone_nodes

    # v0: the GET advertises `first`; a fast-forward push lands before the POST.
    advertised = v0_advertised_main(net, "fra", name)
    assert advertised == first
    # v2: ls-refs (a POST) is the exchange's advertisement.
    listed = v2_post(net, "fra", name, pkt("command=ls-refs\n") + b"0001" + b"0000")
    assert first.encode() in listed
    second = push_commit(git, work, name, "lax", net, "two")
    poll(20, lambda: where(net, name)["generation"] == 2, "the fra edge to see generation 2")
    # The POST goes to a replica at generation >= the GET's (in sync: == 2), which
    # serves the objects the GET advertised (reachable from its refs).
    assert b"PACK" in v0_fetch(net, "fra", name, advertised)
    v2_pack = v2_post(
        net,
        "fra",
        name,
        pkt("command=fetch\n") + b"0001" + pkt(f"want {first}\n") + pkt("done\n") + b"0000",
    )
    assert b"packfile" in v2_pack and b"PACK" in v2_pack

    # A forced push removes what the GET saw: v0's POST then fails with git's own
    # error; it never answers with something that is not what the GET advertised.
    advertised = v0_advertised_main(net, "fra", name)
    assert advertised == second
    git.run("reset", "-q", "--hard", first, cwd=work)
    push_commit(git, work, name, "lax", net, "three")
    poll(20, lambda: where(net, name)["generation"] == 3, "the fra edge to see generation 3")
    answer = v0_fetch(net, "fra", name, second)
    assert b"not our ref " + second.encode() in answer and b"PACK" not in answer, answer[:200]


# -- no replica in sync: a bounded wait, then a clear failure ------------------------


def test_a_read_with_no_replica_in_sync_waits_for_one_then_fails_clearly(
    net: Devnet, git: Git, alice_ssh: str, tmp_path: Path
) -> None:
    name = "alice/waiting"
    head = replicated_with_a_push(net, git, tmp_path / "w", name, "syd", replicas=2)
    nodes = [net.nodes[str(r["node"])] for r in where(net, name)["replicas"]]
    for node in nodes:
        node.process.stop()  # clean stop: the lease is revoked, the replica is down at once
    try:
        poll(20, lambda: all(r["state"] == "down" for r in where(net, name)["replicas"]))
        results: dict[str, Any] = {}

        def https_clone() -> None:
            started = time.monotonic()
            results["https"] = git.run(
                "clone", "-q", url(net, name, "fra"), str(tmp_path / "fail"), check=False
            )
            results["https_s"] = time.monotonic() - started

        def ssh_upload_pack() -> None:
            argv = [*alice_ssh.split(), "-p", str(edge(net, "lax").ssh_port), "git@127.0.0.1"]
            results["ssh"] = subprocess.run(
                [*argv, f"git-upload-pack '{name}.git'"],
                capture_output=True,
                text=True,
                timeout=60,
            )

        threads = [threading.Thread(target=f) for f in (https_clone, ssh_upload_pack)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        failed = results["https"]
        assert failed.returncode != 0
        assert "no replica of this repository is in sync" in failed.stderr, failed.stderr
        assert "503" in failed.stderr
        assert READ_WAIT <= results["https_s"] < READ_WAIT + 5
        ssh = results["ssh"]
        assert ssh.returncode == 75, (ssh.returncode, ssh.stderr)
        assert "ERROR: No replica of this repository is in sync" in ssh.stderr
        assert ssh.stdout == ""  # no advertisement of stale (or any) refs

        # A clone that starts with none in sync is served as soon as one returns:
        # the node's registration reaches the edge's cache by the watch and wakes it.
        clone: dict[str, Any] = {}

        def waiting_clone() -> None:
            clone["run"] = git.run(
                "clone", "-q", url(net, name, "fra"), str(tmp_path / "ok"), check=False
            )
            clone["done"] = time.monotonic()

        thread = threading.Thread(target=waiting_clone)
        thread.start()
        poll(
            10, lambda: requests_active(net, edge(net, "fra")) >= 1, "the clone waiting at the edge"
        )
        restarted = net.restart_node(nodes[0])
        registered = time.monotonic()
        thread.join(60)
        assert clone["run"].returncode == 0, clone["run"].stderr
        assert clone["done"] - registered < READ_WAIT
        assert git.run("rev-parse", "HEAD", cwd=tmp_path / "ok").stdout.strip() == head
        nodes[0] = restarted
    finally:
        for node in nodes:
            if not node.process.alive():
                net.restart_node(node)
    poll(30, lambda: all_in_sync(net, name), "both replicas back in sync")


# -- the hidden namespace ----------------------------------------------------------


@pytest.mark.parametrize("replicas", [3, 1])
def test_client_pushes_into_refs_gitedge_are_rejected(
    net: Devnet, git: Git, tmp_path: Path, replicas: int
) -> None:
    name = f"alice/hidden-{replicas}"
    create(net, name, "lax", replicas)
    work = git.new_worktree(tmp_path / "w")
    head = git.commit(work, "a.txt", b"a\n")
    pushed = git.run(
        "push",
        url(net, name, "lax"),
        "main",
        "HEAD:refs/gitedge/incoming/evil/0",
        "HEAD:refs/gitedge/other",
        cwd=work,
        check=False,
    )
    assert pushed.returncode != 0
    for ref in ("refs/gitedge/incoming/evil/0", "refs/gitedge/other"):
        assert f"! [remote rejected] HEAD -> {ref} (deny updating a hidden ref)" in pushed.stderr
    assert "* [new branch]      main -> main" in pushed.stderr, pushed.stderr
    listed = git.run("ls-remote", url(net, name, "fra")).stdout
    assert listed.split() == [head, "HEAD", head, "refs/heads/main"], listed
    if replicas > 1:
        # The node's own transfers into refs/gitedge/incoming/ still work.
        poll(20, lambda: all_in_sync(net, name), "all replicas in sync")
        assert where(net, name)["generation"] == 1
    for node in net.nodes.values():
        repo = node.volume_dir / f"{name}.git"
        if repo.is_dir():
            refs = git.run("for-each-ref", "--format=%(refname)", cwd=repo).stdout.split()
            assert refs == ["refs/heads/main"], (node.node_id, refs)


# -- W copies in two regions ------------------------------------------------------------


def test_a_push_needs_a_copy_in_another_region_not_just_another_node(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    create(net, "alice/probe", "fra", 3)  # one replica in each region
    syd = net.nodes["syd-1"]
    syd.process.stop()
    try:
        # With syd down, a 3-replica set from fra is fra-1, fra-2 and lax-1.
        poll(20, lambda: region_down(net, "alice/probe", "syd"), "the fra edge to see syd-1 down")
        create(net, "alice/twofra", "fra", 3)
    finally:
        net.restart_node(syd)
    shown = where(net, "alice/twofra")
    assert sorted(str(r["node"]) for r in shown["replicas"]) == ["fra-1", "fra-2", "lax-1"]
    work = git.new_worktree(tmp_path / "w")
    lax = net.nodes["lax-1"]
    lax.process.stop()
    try:
        poll(20, lambda: region_down(net, "alice/twofra", "lax"), "lax-1 down")
        git.commit(work, "a.txt", b"a\n")
        refused = git.run("push", url(net, "alice/twofra", "fra"), "main", cwd=work, check=False)
        assert refused.returncode != 0
        assert "must reach replicas in 2 regions and no replica outside fra is up" in (
            refused.stderr
        ), refused.stderr
        assert where(net, "alice/twofra")["generation"] == 0
    finally:
        net.restart_node(lax)
    poll(20, lambda: not region_down(net, "alice/twofra", "lax"), "lax-1 back")
    git.run("push", "-q", url(net, "alice/twofra", "fra"), "main", cwd=work)
    assert where(net, "alice/twofra")["generation"] == 1


def requests_active(net: Devnet, handle: EdgeHandle) -> int:
    stats = httpx.get(f"{handle.https_url}/_gitedge/stats", verify=tls(net), timeout=10)
    return int(stats.json()["requests_active"]) - 1  # this request counts itself


def region_down(net: Devnet, name: str, region: str) -> bool:
    return any(r["state"] == "down" and r["region"] == region for r in where(net, name)["replicas"])


# -- etcd stopped: reads go on, pushes fail fast, the edge says so once -------------


def test_etcd_stopped_reads_go_on_pushes_fail_fast_degraded_logged_once(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    name, work = "alice/outage", tmp_path / "w"
    head = replicated_with_a_push(net, git, work, name, "fra")
    fra = edge(net, "fra")

    def count(word: str) -> int:
        return fra.process.log_path.read_text(errors="replace").count(f"edge {word}")

    assert count("DEGRADED") == 0
    etcd = net.etcd.process.popen.pid
    os.kill(etcd, signal.SIGSTOP)
    try:
        poll(30, lambda: count("DEGRADED") == 1, "the fra edge to log DEGRADED")
        git.run("clone", "-q", url(net, name, "fra"), str(tmp_path / "c"))
        assert git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == head
        git.commit(work, "b.txt", b"b\n")
        started = time.monotonic()
        refused = git.run("push", url(net, name, "fra"), "HEAD:main", cwd=work, check=False)
        assert refused.returncode != 0
        assert time.monotonic() - started < 3  # refused at the edge, not after etcd timeouts
        assert "the consensus store is unreachable" in refused.stderr, refused.stderr
        time.sleep(6)  # more of the mirror's retries: still one line
        assert count("DEGRADED") == 1
    finally:
        os.kill(etcd, signal.SIGCONT)
    poll(30, lambda: count("RECOVERED") == 1, "the fra edge to log RECOVERED")
    poll(30, lambda: all_in_sync(net, name), "replicas registered again")
    git.run("push", "-q", url(net, name, "fra"), "HEAD:main", cwd=work)
    assert where(net, name)["generation"] == 2
    assert (count("DEGRADED"), count("RECOVERED")) == (1, 1)
