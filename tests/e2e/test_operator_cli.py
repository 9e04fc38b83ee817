"""The operator's CLI end to end: `gitedge nodes`, `volumes`, `repo ls` and
`node drain` against three regions (real etcd, nodes, edges and git)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from devnet.network import Devnet
from tests.e2e.conftest import THREE_REGIONS, Git, gitedge, poll, region_edge, repo_url, tls
from tests.e2e.test_replication import in_sync, where

NETWORK = THREE_REGIONS  # tests/e2e/conftest.py's net fixture


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
    for name in ("alice/drained", "alice/solo"):
        git.run("push", "-q", repo_url(net, name), "main", cwd=work)
    poll(20, lambda: in_sync(net, "alice/drained", 2), "both replicas in sync")

    report = admin_json(net, "node", "drain", lax)
    assert report["drained"] is True and report["complete"] is True and report["failed"] == []
    assert [m["repo"] for m in report["moved"]] == ["alice/drained", "alice/solo"]
    shown = where(net, "alice/drained")
    assert sorted(r["region"] for r in shown["replicas"]) == ["fra", "syd"]
    # The unreplicated one is moved (lax has no other node): one copy again, not on lax.
    solo = listed(net, "alice/solo")
    assert solo["node"] != lax and "replicas" not in solo, solo
    assert not (net.nodes[lax].volume_dir / "alice" / "solo.git").exists()
    for i, name in enumerate(("alice/drained", "alice/solo")):
        clone = tmp_path / f"clone-{i}"
        git.run(
            "clone",
            "-q",
            repo_url(net, name, edge_url=region_edge(net, "syd").https_url),
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


def test_a_drain_whose_new_copy_never_catches_up_keeps_the_old_one_and_says_so(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    syd = node_in(net, "syd")
    assert create(net, "alice/stuck", "syd").status_code == 201
    work = git.new_worktree(tmp_path / "work")
    head = git.commit(work, "a.txt", b"must survive a stuck drain\n")
    git.run("push", "-q", repo_url(net, "alice/stuck"), "main", cwd=work)
    # The new copy goes to fra (syd has no other node; fra sorts first): fra's node
    # now holds every catch-up (apply) far longer than the drain waits. Its own
    # startup catch-up is held too, for as long as it is given before serving:
    # here 1 s, not the default 30 s.
    fra = node_in(net, "fra")
    pause = {"GITEDGE_TEST_PAUSE": "apply-start=120"}
    paused_config = tmp_path / "node-paused.toml"
    paused_config.write_text(
        net.nodes[fra]
        .config_path.read_text()
        .replace("[node]\n", "[node]\nstartup_catch_up_timeout = 1\n", 1)
    )
    net.restart_node(net.nodes[fra], env=pause, config_path=paused_config)
    try:
        stuck = admin(net, "node", "drain", syd, "--catch-up-timeout", "3")
        assert stuck.returncode == 1, (stuck.stdout, stuck.stderr)
        report = json.loads(stuck.stdout)
        assert report["complete"] is False
        assert "alice/stuck" not in [m["repo"] for m in report["moved"]]
        # (Other tests' unreplicated repositories on syd head for fra too, and stay.)
        failed = {f["repo"]: f["reason"] for f in report["failed"]}
        assert "did not catch up within 3s" in failed["alice/stuck"], failed
        assert "the move is undone" in failed["alice/stuck"]
        assert "alice/stuck stays on" in stuck.stderr and "not complete" in stuck.stderr
        # The move is undone: one copy, the old one, on syd; nothing left on fra.
        kept = listed(net, "alice/stuck")
        assert kept["node"] == syd and "replicas" not in kept, kept
        assert (net.nodes[syd].volume_dir / "alice" / "stuck.git").is_dir()
        assert not (net.nodes[fra].volume_dir / "alice" / "stuck.git").exists()
    finally:
        net.restart_node(net.nodes[fra])
        admin_json(net, "node", "undrain", syd)
    clone = tmp_path / "clone"
    git.run("clone", "-q", repo_url(net, "alice/stuck"), str(clone))
    assert git.run("rev-parse", "HEAD", cwd=clone).stdout.strip() == head
    git.commit(clone, "b.txt", b"and takes pushes as before\n")
    git.run("push", "-q", "origin", "main", cwd=clone)


def listed(net: Devnet, name: str) -> dict[str, Any]:
    """`gitedge repo ls` row of `name`."""
    rows = admin_json(net, "repo", "ls", "--json")["repos"]
    return next(r for r in rows if r["repo"] == name)
