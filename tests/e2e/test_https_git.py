"""Stock git through a real edge to real nodes, with placement by region header."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from devnet.network import Devnet
from tests.e2e.conftest import (
    Git,
    anonymous_url,
    api_get,
    create_repo,
    git_children,
    gitedge,
    raw_status,
    repo_url,
    tls,
)


def _url(net: Devnet, name: str) -> str:
    return repo_url(net, name)


def test_user_story_lax_placement_push_clone_v0_v2_fetch(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    created = create_repo(net, "alice/hello", region="lax")
    assert created.status_code == 201, created.text
    location = created.json()
    assert location["region"] == "lax"
    assert location["node"] == "lax-1"
    assert location["volume"] == net.nodes["lax-1"].volume_id
    # The bare repo exists on the lax node's volume and nowhere else.
    assert (net.nodes["lax-1"].volume_dir / "alice" / "hello.git" / "HEAD").is_file()
    assert not (net.nodes["fra-1"].volume_dir / "alice" / "hello.git").exists()

    work = git.new_worktree(tmp_path / "work")
    first = git.commit(work, "README", b"hello from alice\n")
    git.run("push", "-q", _url(net, "alice/hello"), "main", cwd=work)

    for version in ("0", "2"):
        dest = tmp_path / f"clone-v{version}"
        trace = tmp_path / f"trace-v{version}"
        git.run(
            "-c",
            f"protocol.version={version}",
            "clone",
            "-q",
            _url(net, "alice/hello"),
            str(dest),
            GIT_TRACE_PACKET=str(trace),
        )
        assert git.run("rev-parse", "HEAD", cwd=dest).stdout.strip() == first
        assert (dest / "README").read_bytes() == b"hello from alice\n"
        # The protocol really negotiated end to end (Git-Protocol forwarded).
        assert ("version 2" in trace.read_text()) == (version == "2")

    # Incremental fetch: a second commit pushed from one clone reaches another.
    second = git.commit(tmp_path / "clone-v0", "NEWS", b"second\n")
    git.run("push", "-q", "origin", "main", cwd=tmp_path / "clone-v0")
    git.run("fetch", "-q", "origin", cwd=tmp_path / "clone-v2")
    assert git.run("rev-parse", "origin/main", cwd=tmp_path / "clone-v2").stdout.strip() == second

    where = api_get(net, "/api/repos/alice/hello")
    assert where.status_code == 200
    assert where.json()["node"] == "lax-1"
    assert where.json()["region"] == "lax"


def test_create_without_region_header_uses_edge_region(net: Devnet) -> None:
    created = create_repo(net, "alice/home-region")
    assert created.status_code == 201, created.text
    assert created.json()["region"] == net.edge.region


def test_empty_repo_clone(net: Devnet, git: Git, tmp_path: Path) -> None:
    assert create_repo(net, "alice/empty", region="fra").status_code == 201
    proc = git.run("clone", _url(net, "alice/empty"), str(tmp_path / "empty"))
    assert "empty repository" in proc.stderr
    assert (tmp_path / "empty" / ".git").is_dir()


def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def test_30mb_push_and_clone_contents_equal(net: Devnet, git: Git, tmp_path: Path) -> None:
    assert create_repo(net, "alice/big", region="fra").status_code == 201
    work = git.new_worktree(tmp_path / "big")
    for i in range(6):
        (work / f"blob{i}.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    git.run("add", ".", cwd=work)
    git.run("commit", "-q", "-m", "30 MB of noise", cwd=work)
    git.run("push", "-q", _url(net, "alice/big"), "main", cwd=work)
    clone = tmp_path / "big-clone"
    git.run("clone", "-q", _url(net, "alice/big"), str(clone))
    assert _tree_digest(clone) == _tree_digest(work)
    assert git.run("fsck", "--strict", cwd=clone).returncode == 0


def test_unknown_repo_is_not_found(net: Devnet, git: Git, tmp_path: Path) -> None:
    proc = git.run("clone", _url(net, "alice/nope"), str(tmp_path / "nope"), check=False)
    assert proc.returncode != 0
    assert "not found" in proc.stderr
    response = httpx.get(
        f"{anonymous_url(net, 'alice/nope')}/info/refs?service=git-upload-pack",
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
    )
    assert response.status_code == 404
    # Anonymous: 401, so git asks for credentials; whether the repo exists does not leak.
    anonymous = httpx.get(
        f"{anonymous_url(net, 'alice/nope')}/info/refs?service=git-upload-pack", verify=tls(net)
    )
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="gitedge"'


def test_bad_names_change_nothing(net: Devnet) -> None:
    before = _volume_listing(net)
    for bad in ("../evil", "-x/y", "alice/.hidden", "a/b/c", "ålice/x", "alice/" + "x" * 101, ""):
        response = create_repo(net, bad, region="fra")
        assert response.status_code == 400, (bad, response.text)
    assert _volume_listing(net) == before
    keys = httpx.post(
        f"{net.etcd.url}/v3/kv/range",
        json={
            "key": "L2dpdGVkZ2UvcmVwb3Mv",
            "range_end": "L2dpdGVkZ2UvcmVwb3Mw",
            "keys_only": True,
        },
    ).json()
    import base64

    names = [base64.b64decode(kv["key"]).decode() for kv in keys.get("kvs", [])]
    assert not any("evil" in n or "-x" in n or ".hidden" in n for n in names), names


def _volume_listing(net: Devnet) -> set[str]:
    return {
        str(p.relative_to(node.volume_dir))
        for node in net.nodes.values()
        for p in node.volume_dir.rglob("*")
        if p.is_dir() and p.name.endswith(".git")
    }


def test_create_twice_conflicts(net: Devnet) -> None:
    assert create_repo(net, "alice/twice", region="fra").status_code == 201
    again = create_repo(net, "alice/twice", region="lax")
    assert again.status_code == 409
    assert api_get(net, "/api/repos/alice/twice").json()["region"] == "fra"


def test_unknown_region_is_503_with_reason(net: Devnet) -> None:
    response = create_repo(net, "alice/mars", region="mars")
    assert response.status_code == 503
    assert "unknown region 'mars'" in response.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/alice/hello.git/HEAD", 404),
        ("GET", "/alice/hello.git/info/refs", 404),
        ("GET", "/alice/hello.git/objects/info/packs", 404),
        ("GET", "/alice/hello.git/git-upload-pack", 405),
        ("DELETE", "/api/repos", 405),
        ("GET", "/../../etc/passwd/info/refs?service=git-upload-pack", 400),
        ("GET", "/-x/y.git/info/refs?service=git-upload-pack", 400),
        ("GET", "/some/web/page", 404),
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
    ],
)
def test_http_errors(net: Devnet, method: str, path: str, status: int) -> None:
    # Raw bytes: an HTTP client library would normalise "..".
    assert raw_status(net.edge.https_url, net.ca_file, method, path) == status


def test_oversized_head_is_431(net: Devnet) -> None:
    response = httpx.get(
        f"{net.edge.https_url}/healthz", headers={"x-big": "a" * 20000}, verify=tls(net)
    )
    assert response.status_code == 431


def test_cli_repo_create_and_where(net: Devnet) -> None:
    bob = {"GITEDGE_USER": "bob", "GITEDGE_TOKEN": net.user_token("bob")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return gitedge(net.edge.https_url, net.ca_file, *args, **bob)

    created = cli("repo", "create", "bob/tool", "--region", "lax")
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["region"] == "lax"
    assert json.loads(cli("repo", "where", "bob/tool").stdout)["node"] == "lax-1"
    missing = cli("repo", "where", "bob/none")
    assert missing.returncode == 1
    assert "404" in missing.stderr


def test_no_git_process_left_on_nodes(net: Devnet) -> None:
    deadline = time.monotonic() + 10
    while True:
        left = [pid for n in net.nodes.values() for pid in git_children(n.process.popen.pid)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert left == []


def test_warm_requests_make_no_etcd_reads_and_no_node_handshakes(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create_repo(net, "alice/warm", region="fra").status_code == 201
    url = _url(net, "alice/warm")
    git.run("ls-remote", url)  # warms the pooled connection to fra-1

    def stats() -> dict[str, int]:
        response = httpx.get(f"{net.edge.https_url}/_gitedge/stats", verify=tls(net))
        assert response.status_code == 200
        return dict(response.json())

    before = stats()
    for _ in range(3):
        git.run("ls-remote", url)
    after = stats()
    assert after["node_connects"] == before["node_connects"]
    assert after["lookup_etcd_reads"] == before["lookup_etcd_reads"]
    assert after["node_reuses"] >= before["node_reuses"] + 3
