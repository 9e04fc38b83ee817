"""The operator's CLI end to end: `gitedge nodes`, `volumes`, `repo ls` and
`node drain` against three regions (real etcd, nodes, edges and git)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devnet.network import Devnet
from tests.e2e.conftest import Git, gitedge, poll, region_edge, repo_url, three_regions, tls
from tests.e2e.test_replication import in_sync, where


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with three_regions(tmp_path_factory, "operator") as network:
        yield network


@pytest.fixture
def git(tmp_path: Path, net: Devnet) -> Git:
    home = tmp_path / "home"
    home.mkdir()
    return Git(home, net.ca_file)


def admin(net: Devnet, *args: str) -> subprocess.CompletedProcess[str]:
    return gitedge(net.edge.https_url, net.ca_file, *args, GITEDGE_ADMIN_TOKEN=net.admin_token)


def admin_json(net: Devnet, *args: str) -> Any:
    shown = admin(net, *args)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def create(net: Devnet, name: str, region: str, **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{region_edge(net, region).https_url}/api/repos",
        json={"name": name, **extra},
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
        timeout=30,
    )


def node_in(net: Devnet, region: str) -> str:
    return next(n.node_id for n in net.nodes.values() if n.region == region)


def test_nodes_and_volumes_show_region_liveness_repos_and_free_space(net: Devnet) -> None:
    assert create(net, "alice/counted", "syd").status_code == 201
    nodes = poll(
        10,
        lambda: (
            (ns := admin_json(net, "nodes", "--json")["nodes"])
            and {n["node"]: n for n in ns}[node_in(net, "syd")]["repos"] >= 1
            and ns
        ),
        "the syd node counting its repository",
    )
    assert sorted(n["region"] for n in nodes) == ["fra", "lax", "syd"]
    assert all(n["live"] and not n["drained"] and n["free_bytes"] > 0 for n in nodes)
    volumes = admin_json(net, "volumes", "--json")["volumes"]
    assert {v["node"] for v in volumes} == {n["node"] for n in nodes}
    assert all(v["live"] and v["free_bytes"] > 0 for v in volumes)
    table = admin(net, "volumes")
    assert table.returncode == 0 and "VOLUME" in table.stdout
    assert all(v["volume"] in table.stdout for v in volumes)
    listed = admin_json(net, "repo", "ls", "--region", "syd", "--json")["repos"]
    assert "alice/counted" in [r["repo"] for r in listed]
    none_here = admin_json(net, "repo", "ls", "--node", node_in(net, "fra"), "--json")
    assert "alice/counted" not in [r["repo"] for r in none_here["repos"]]


def test_operator_commands_need_the_admin_token(net: Devnet) -> None:
    as_user = gitedge(
        net.edge.https_url,
        net.ca_file,
        "nodes",
        GITEDGE_USER="alice",
        GITEDGE_TOKEN=net.user_token("alice"),
    )
    assert as_user.returncode == 2 and "admin-token" in as_user.stderr
    for method, path in (("GET", "/api/admin/nodes"), ("POST", "/api/admin/nodes/x/drain")):
        answer = httpx.request(
            method,
            f"{net.edge.https_url}{path}",
            auth=("alice", net.user_token("alice")),
            verify=tls(net),
            timeout=30,
        )
        assert answer.status_code == 403, (path, answer.text)


def test_drain_moves_replicas_off_and_stops_placement_until_undrained(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    lax = node_in(net, "lax")
    made = create(net, "alice/drained", "fra", replicas=2, replica_regions=["lax"])
    assert made.status_code == 201, made.text
    assert create(net, "alice/solo", "lax").status_code == 201
    work = git.new_worktree(tmp_path / "work")
    head = git.commit(work, "a.txt", b"kept through the drain\n")
    git.run("push", "-q", repo_url(net, "alice/drained"), "main", cwd=work)
    poll(20, lambda: in_sync(net, "alice/drained", 2), "both replicas in sync")

    report = admin_json(net, "node", "drain", lax)
    assert report["drained"] is True and report["failed"] == []
    assert [m["repo"] for m in report["moved"]] == ["alice/drained"]
    assert report["unreplicated"] == ["alice/solo"]
    shown = where(net, "alice/drained")
    assert sorted(r["region"] for r in shown["replicas"]) == ["fra", "syd"]
    clone = tmp_path / "clone"
    git.run(
        "clone",
        "-q",
        repo_url(net, "alice/drained", edge_url=region_edge(net, "syd").https_url),
        str(clone),
    )
    assert git.run("rev-parse", "HEAD", cwd=clone).stdout.strip() == head

    nodes = {n["node"]: n for n in admin_json(net, "nodes", "--json")["nodes"]}
    assert nodes[lax]["drained"] is True and nodes[lax]["live"] is True
    # lax's only node is drained: a new repository placed in lax has nowhere to go.
    refused = create(net, "alice/after-drain", "lax")
    assert refused.status_code == 503, refused.text
    assert admin_json(net, "node", "undrain", lax)["was"] is True
    assert create(net, "alice/after-drain", "lax").status_code == 201


def test_drain_of_an_unknown_node_is_refused(net: Devnet) -> None:
    refused = admin(net, "node", "drain", "no-such-node")
    assert refused.returncode == 1 and "unknown node" in refused.stderr
