"""`/metrics` on a real edge's admin listener moves by exactly what real git did.

One network for the module (devnet gives every edge `[admin] listen =
"127.0.0.1:0"`). Each test scrapes before and after stock git runs through the
edge and compares the differences, so other tests' traffic does not matter.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devnet.network import Devnet
from tests.e2e.conftest import Git, create_repo, poll, repo_url, ssh_git_command, tls

Sample = tuple[str, frozenset[tuple[str, str]]]


def scrape(net: Devnet) -> dict[Sample, float]:
    return scrape_url(net.edge.metrics_url)


def scrape_nodes(net: Devnet) -> dict[Sample, float]:
    """Every node's samples, summed by name and labels."""
    total: dict[Sample, float] = {}
    for node in net.nodes.values():
        for key, value in scrape_url(node.metrics_url).items():
            total[key] = total.get(key, 0) + value
    return total


def scrape_url(url: str | None) -> dict[Sample, float]:
    assert url is not None and url.startswith("http://127.0.0.1:")
    answer = httpx.get(url, timeout=10)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def moved(
    before: dict[Sample, float], after: dict[Sample, float], name: str, **labels: str
) -> float:
    """How much the samples called `name` whose labels include `labels` went up."""
    want = set(labels.items())

    def total(samples: dict[Sample, float]) -> float:
        return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)

    return total(after) - total(before)


def stats(net: Devnet) -> dict[str, object]:
    answer = httpx.get(f"{net.edge.https_url}/_gitedge/stats", verify=tls(net), timeout=10)
    assert answer.status_code == 200
    data: dict[str, object] = answer.json()
    return data


def test_https_push_and_clone_move_the_counters(net: Devnet, git: Git, tmp_path: Path) -> None:
    assert create_repo(net, "alice/metrics-https").status_code == 201
    url = repo_url(net, "alice/metrics-https")
    work = git.new_worktree(tmp_path / "work")
    blob = os.urandom(200_000)  # incompressible: the pack carries all of it
    git.commit(work, "blob.bin", blob)

    before, nodes_before = scrape(net), scrape_nodes(net)
    git.run("-c", "protocol.version=2", "push", "-q", url, "main", cwd=work)
    pushed, nodes_pushed = scrape(net), scrape_nodes(net)
    git.run("-c", "protocol.version=2", "clone", "-q", url, str(tmp_path / "clone"))
    after, nodes_after = scrape(net), scrape_nodes(net)
    assert (tmp_path / "clone" / "blob.bin").read_bytes() == blob

    ops = "gitedge_git_operations_total"
    # A push over smart HTTP: GET info/refs, then POST git-receive-pack (and an
    # anonymous GET first, refused with 401, which asks git for the credentials).
    push = dict(front="https", service="git-receive-pack")
    assert moved(before, pushed, ops, **push, result="ok") == 2
    assert moved(before, pushed, ops, **push, region="fra") == 2
    assert moved(before, pushed, ops, **push, result="refused") <= 1
    assert moved(before, pushed, "gitedge_git_received_bytes_total", **push) >= len(blob)
    # Protocol v2 clone: GET info/refs, POST ls-refs, POST fetch.
    clone = dict(front="https", service="git-upload-pack")
    assert moved(pushed, after, ops, **clone, result="ok") == 3
    assert moved(pushed, after, "gitedge_git_sent_bytes_total", **clone) >= len(blob)
    duration = "gitedge_git_operation_duration_seconds_count"
    assert moved(pushed, after, duration, **clone, result="ok") == 3
    # Every relayed request took one node connection: new or reused.
    assert moved(pushed, after, "gitedge_node_pool_connections_total") == 3
    assert moved(before, after, "gitedge_limit_rejections_total") == 0
    assert after[("gitedge_git_operations_in_flight", frozenset({("front", "https")}))] == 0
    assert after[("gitedge_routing_cache_synced", frozenset())] == 1
    assert after[("gitedge_routing_cache_revision", frozenset())] > 0
    assert after[("gitedge_etcd_requests_total", frozenset())] > 0

    # The node ran one git process per relayed request, each exiting 0.
    git_processes = "gitedge_node_git_processes_total"
    receive, upload = dict(service="git-receive-pack"), dict(service="git-upload-pack")
    assert moved(nodes_before, nodes_pushed, git_processes, **receive, result="ok") == 2
    assert moved(nodes_before, nodes_pushed, git_processes, **receive, kind="rpc") == 1
    assert moved(nodes_pushed, nodes_after, git_processes, **upload, result="ok") == 3
    assert moved(nodes_pushed, nodes_after, git_processes, **upload, kind="info_refs") == 1
    assert moved(nodes_before, nodes_after, git_processes, result="failed") == 0
    node_duration = "gitedge_node_git_process_duration_seconds_count"
    assert moved(nodes_pushed, nodes_after, node_duration, **upload) == 3

    # /_gitedge/stats is a view of the same counters.
    now = stats(net)
    again = scrape(net)
    assert now["git_operations_ok"] == sum(
        v for (n, ls), v in again.items() if n == ops and ("result", "ok") in ls
    )
    assert (
        now["node_connects"]
        == again[("gitedge_node_pool_connections_total", frozenset({("kind", "new")}))]
    )


def test_refused_operations_are_counted_as_refused(net: Devnet, git: Git, tmp_path: Path) -> None:
    before = scrape(net)
    proc = git.run(
        "clone", "-q", repo_url(net, "alice/no-such-repo"), str(tmp_path / "c"), check=False
    )
    after = scrape(net)
    assert proc.returncode != 0
    refused = moved(before, after, "gitedge_git_operations_total", front="https", result="refused")
    # git asks without credentials first (401), then with them (404): both refused.
    assert refused == 2
    assert moved(before, after, "gitedge_git_operations_total", result="ok") == 0


def test_ssh_clone_and_unknown_key_move_the_ssh_counters(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create_repo(net, "alice/metrics-ssh").status_code == 201
    work = git.new_worktree(tmp_path / "work")
    git.commit(work, "a.txt", b"hello\n")
    git.run("push", "-q", repo_url(net, "alice/metrics-ssh"), "main", cwd=work)
    keys = tmp_path / "keys"
    keys.mkdir()
    command = ssh_git_command(net, keys)

    before = scrape(net)
    ssh_url = f"{net.edge.ssh_url}/alice/metrics-ssh.git"
    git.run("clone", "-q", ssh_url, str(tmp_path / "clone"), GIT_SSH_COMMAND=command)
    after = scrape(net)
    ops = "gitedge_git_operations_total"
    assert moved(before, after, ops, front="ssh", service="git-upload-pack", result="ok") == 1
    assert moved(before, after, ops, front="ssh") == 1
    assert moved(before, after, "gitedge_ssh_handshakes_total") == 1
    assert moved(before, after, "gitedge_ssh_sessions_total") == 1
    assert moved(before, after, "gitedge_git_sent_bytes_total", front="ssh") > 0
    assert moved(before, after, "gitedge_ssh_auth_failures_total") == 0

    stranger = tmp_path / "stranger"
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)]
    subprocess.run(keygen, check=True)
    unknown = command.replace(str(keys / "id_ed25519"), str(stranger))
    proc = git.run("ls-remote", ssh_url, GIT_SSH_COMMAND=unknown, check=False)
    assert proc.returncode != 0
    later = scrape(net)
    assert moved(after, later, "gitedge_ssh_auth_failures_total") == 1
    assert moved(after, later, "gitedge_ssh_handshakes_total") == 0
    assert moved(after, later, ops, front="ssh") == 0


@pytest.mark.parametrize("path", ["/", "/metricsx", "/_gitedge/stats"])
def test_admin_listener_serves_only_metrics(net: Devnet, path: str) -> None:
    url = net.edge.metrics_url
    assert url is not None
    assert httpx.get(url.removesuffix("/metrics") + path, timeout=10).status_code == 404


def test_json_log_has_one_line_per_git_operation(net: Devnet, git: Git, tmp_path: Path) -> None:
    edge = net.start_edge("fra", ssh=False, extra='[log]\nformat = "json"')
    try:
        assert create_repo(net, "alice/metrics-json").status_code == 201
        work = git.new_worktree(tmp_path / "work")
        git.commit(work, "a.txt", b"hello\n")
        url = repo_url(net, "alice/metrics-json", edge_url=edge.https_url)
        git.run("-c", "protocol.version=2", "push", "-q", url, "main", cwd=work)
        git.run("-c", "protocol.version=2", "clone", "-q", url, str(tmp_path / "clone"))
        token = net.user_token("alice")

        def logged() -> list[dict[str, object]] | None:
            lines = edge.process.log_path.read_text().splitlines()
            entries = [json.loads(line) for line in lines]  # every line is one object
            ops = [e for e in entries if e.get("event") == "git_operation"]
            done = [e for e in ops if e["service"] == "git-upload-pack" and e["result"] == "ok"]
            return ops if len(done) == 3 else None

        ops = poll(10, logged, "three git-upload-pack lines in the JSON log")
        pushes = [e for e in ops if e["service"] == "git-receive-pack" and e["result"] == "ok"]
        assert len(pushes) == 2
        assert {e["protocol"] for e in pushes} == {"0"}  # git pushes with protocol v0
        assert any(isinstance(e["bytes_in"], int) and e["bytes_in"] > 0 for e in pushes)
        post = [e for e in ops if e["service"] == "git-upload-pack"][-1]  # the v2 fetch
        assert post["user"] == "alice"
        assert post["repo"] == "alice/metrics-json"
        assert post["protocol"] == "2"
        assert post["front"] == "https"
        assert post["client"] == "127.0.0.1"
        assert post["region"] == "fra" and post["edge_region"] == "fra"
        assert post["node"] == "fra-1"
        assert isinstance(post["bytes_out"], int) and post["bytes_out"] > 0
        assert isinstance(post["duration_s"], float)
        assert token not in edge.process.log_path.read_text()
    finally:
        edge.process.stop()
        net.edges.remove(edge)


def test_limit_rejections_are_counted_by_limit(net: Devnet, git: Git) -> None:
    edge = net.start_edge(
        "fra",
        ssh=False,
        edge_options='trusted_proxies = ["127.0.0.2/32"]',  # 127.0.0.1 is limited too
        extra="[limits]\ngit_rate_per_user = 1\ngit_burst_per_user = 1\n",
    )
    try:
        assert create_repo(net, "alice/metrics-limits").status_code == 201
        url = repo_url(net, "alice/metrics-limits", edge_url=edge.https_url)
        before = scrape_url(edge.metrics_url)
        runs = [git.run("ls-remote", url, check=False) for _ in range(3)]
        after = scrape_url(edge.metrics_url)
        refused = sum(run.returncode != 0 for run in runs)
        assert refused >= 1  # a burst of one per user: the second ls-remote is over it
        rejections = "gitedge_limit_rejections_total"
        assert moved(before, after, rejections, limit="git_rate") == refused
        for other in ("git_concurrency", "auth_failures", "api_write_rate"):
            assert moved(before, after, rejections, limit=other) == 0
        refused_ops = moved(before, after, "gitedge_git_operations_total", result="refused")
        assert refused_ops >= refused  # each 429, and git's anonymous first tries (401)
    finally:
        edge.process.stop()
        net.edges.remove(edge)
