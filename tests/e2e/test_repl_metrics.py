"""Replication lag on `/metrics`, and the node's log line per git operation, from a
real three-region network: etcd, a node and an edge in each of fra, lax and syd.

A replica is held behind for real: its node is down while a push lands, then
comes back while the only in-sync replica is down, so its catch-up fails and
retries. The edge's per-volume gauges and the node's pending catch-up show it,
and return to zero once the in-sync replica is back (docs/metrics.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from devnet.network import Devnet, NodeHandle
from tests.e2e.conftest import (
    THREE_REGIONS,
    Git,
    create_repo,
    poll,
    region_edge,
    repo_url,
    repo_where,
    ssh_git_command,
    tls,
)
from tests.e2e.test_metrics import Sample, scrape_url

NETWORK = THREE_REGIONS  # tests/e2e/conftest.py's net fixture


def value(samples: dict[Sample, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def edge_view(net: Devnet, volume: str) -> dict[str, float]:
    """What the fra edge's `/metrics` says of `volume`'s replicas."""
    samples = scrape_url(region_edge(net, "fra").metrics_url)
    view = {
        state: value(samples, "gitedge_replicas", volume=volume, state=state)
        for state in ("in-sync", "catching-up", "down")
    }
    view["behind"] = value(samples, "gitedge_replica_generations_behind_max", volume=volume)
    view["unreadable"] = value(samples, "gitedge_repositories_without_sync_replica")
    return view


def node_view(node: NodeHandle) -> dict[str, float]:
    samples = scrape_url(node.metrics_url)
    return {
        "pending": value(samples, "gitedge_node_replica_catch_ups_pending"),
        "oldest": value(samples, "gitedge_node_replica_oldest_catch_up_seconds"),
        "failed": value(samples, "gitedge_node_replica_applies_total", result="failed"),
        "caught_up": value(samples, "gitedge_node_replica_catch_up_seconds_count"),
        "caught_up_s": value(samples, "gitedge_node_replica_catch_up_seconds_sum"),
    }


def node_view_if(node: NodeHandle, key: str, at_least: float | None) -> dict[str, float] | None:
    """`node_view` once `key` is at least `at_least` (None: once it is 0)."""
    view = node_view(node)
    if (view[key] == 0) if at_least is None else (view[key] >= at_least):
        return view
    return None


def test_a_replica_held_behind_shows_on_both_metrics_then_returns_to_zero(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    name = "alice/lag"
    created = httpx.post(
        f"{region_edge(net, 'fra').https_url}/api/repos",
        json={"name": name, "replicas": 2, "sync_replicas": 1},
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
        timeout=30,
    )
    assert created.status_code == 201, created.text
    home, other = (net.nodes[str(r["node"])] for r in repo_where(net, name)["replicas"])
    assert home.region == "fra" and other.region != "fra"
    url = repo_url(net, name, edge_url=region_edge(net, "fra").https_url)
    work = git.new_worktree(tmp_path / "work")
    git.commit(work, "a.txt", b"one\n")
    git.run("push", "-q", url, "main", cwd=work)
    in_sync = {"in-sync": 1, "catching-up": 0, "down": 0, "behind": 0, "unreadable": 0}
    poll(20, lambda: edge_view(net, other.volume_id) == in_sync, "both replicas at generation 1")
    # (An apply may still be running: the watch and the home's notification both ask.)
    poll(10, lambda: node_view_if(other, "pending", None), "no catch-up pending")

    other.process.kill()
    try:
        poll(20, lambda: edge_view(net, other.volume_id)["down"] == 1, "the replica down")
        git.commit(work, "b.txt", b"two\n")
        git.run("push", "-q", url, "main", cwd=work)  # W=1: the home alone takes it
        down = {"in-sync": 0, "catching-up": 0, "down": 1, "behind": 1, "unreadable": 0}
        poll(10, lambda: edge_view(net, other.volume_id) == down, "the replica down, 1 behind")

        # Back while nothing in sync is up to fetch from: its catch-up fails, retries.
        home.process.stop()
        other = net.restart_node(other)
        behind = {"in-sync": 0, "catching-up": 1, "down": 0, "behind": 1, "unreadable": 1}
        poll(20, lambda: edge_view(net, other.volume_id) == behind, "the replica up, behind")
        held = poll(20, lambda: node_view_if(other, "oldest", 1.0), "a catch-up held 1 s")
        assert held["pending"] == 1 and held["failed"] >= 1, held
        assert held["caught_up"] == 0

        home = net.restart_node(home)
        poll(40, lambda: edge_view(net, other.volume_id) == in_sync, "the replica caught up")
        caught_up = poll(20, lambda: node_view_if(other, "pending", None), "none pending")
        assert caught_up["oldest"] == 0
        assert caught_up["caught_up"] >= 1
        # Its histogram has the time it was held behind, first attempt to success.
        assert caught_up["caught_up_s"] >= held["oldest"]
    finally:
        for node in (home, other):
            if not node.process.alive():
                net.restart_node(node)


def test_the_node_logs_each_git_operation_in_text_and_json_without_secrets(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    node = net.nodes["fra-1"]
    assert create_repo(net, "alice/nodelog", "fra").status_code == 201
    url = repo_url(net, "alice/nodelog")
    work = git.new_worktree(tmp_path / "work")
    git.commit(work, "a.txt", b"hello\n" * 1000)
    git.run("push", "-q", url, "main", cwd=work)
    line = " node.gitops: git git-receive-pack alice/nodelog ok user=alice "
    poll(10, lambda: line in node.process.log_path.read_text(), "the push in the text log")

    config = node.config_path.read_text()
    node.config_path.write_text(config + '[log]\nformat = "json"\n')
    try:
        node.process.stop()  # its last lines are text
        start = len(node.process.log_path.read_bytes())
        node = net.restart_node(node)
        git.commit(work, "b.txt", b"again\n" * 1000)
        git.run("push", "-q", url, "main", cwd=work)
        keys = tmp_path / "keys"
        keys.mkdir()
        ssh_url = f"{region_edge(net, 'fra').ssh_url}/alice/nodelog.git"
        command = ssh_git_command(net, keys)
        git.run("clone", "-q", ssh_url, str(tmp_path / "clone"), GIT_SSH_COMMAND=command)

        def logged() -> list[dict[str, object]] | None:
            lines = node.process.log_path.read_bytes()[start:].decode().splitlines()
            entries = [json.loads(line) for line in lines]  # every line is one object
            ops = [e for e in entries if e.get("event") == "git_operation"]
            return ops if any(e["kind"] == "ssh" for e in ops) else None

        ops = poll(10, logged, "the SSH session's line in the node's JSON log")
        assert all(e["logger"] == "node.gitops" for e in ops)
        [push] = [e for e in ops if e["service"] == "git-receive-pack" and e["kind"] == "rpc"]
        assert push["repo"] == "alice/nodelog" and push["user"] == "alice"
        assert push["client"] == "127.0.0.1"  # forwarded by the edge
        assert push["protocol"] == "0" and push["result"] == "ok"
        assert push["status"] == 200 and push["exit"] == 0
        assert isinstance(push["bytes_in"], int) and push["bytes_in"] > 200
        [ssh] = [e for e in ops if e["kind"] == "ssh"]
        assert ssh["service"] == "git-upload-pack" and ssh["user"] == "alice"
        assert ssh["client"] == "127.0.0.1"  # the edge's SSH relay forwards it too
        assert ssh["protocol"] == "2" and ssh["result"] == "ok" and ssh["exit"] == 0
        assert isinstance(ssh["bytes_out"], int) and ssh["bytes_out"] > 200
        assert isinstance(ssh["duration_s"], float)
        logged_text = node.process.log_path.read_text()
        assert net.admin_secret_file.read_text().strip() not in logged_text
        assert net.user_token("alice") not in logged_text
    finally:
        node.config_path.write_text(config)
        net.restart_node(node)
