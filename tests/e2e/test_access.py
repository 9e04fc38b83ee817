"""Access control over HTTPS, and the user, token and key API, through a real edge."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx

from edge.devnet import Devnet
from tests.e2e.conftest import Git, anonymous_url, api_get, create_repo, repo_url, tls


def _post(net: Devnet, path: str, json: object, **kw: object) -> httpx.Response:
    return httpx.post(
        f"{net.edge.https_url}{path}",
        json=json,
        verify=tls(net),
        timeout=30,
        **kw,  # type: ignore[arg-type]
    )


def test_public_repo_anonymous_clone_and_push_needs_token(
    net: Devnet, git: Git, tmp_path: Path
) -> None:
    assert create_repo(net, "alice/open", region="fra", public=True).status_code == 201
    work = git.new_worktree(tmp_path / "w")
    head = git.commit(work, "a.txt", b"public\n")

    anonymous = anonymous_url(net, "alice/open")
    refused = git.run("push", anonymous, "main", cwd=work, check=False)
    assert refused.returncode != 0
    # git got a 401 and, with prompts off, could not ask for credentials.
    assert "could not read Username" in refused.stderr or "Authentication failed" in refused.stderr

    git.run("push", "-q", repo_url(net, "alice/open"), "main", cwd=work)
    git.run("clone", "-q", anonymous, str(tmp_path / "anon-clone"))
    cloned = git.run("rev-parse", "HEAD", cwd=tmp_path / "anon-clone").stdout.strip()
    assert cloned == head


def test_private_repo_hidden_and_push_forbidden(net: Devnet, git: Git, tmp_path: Path) -> None:
    assert create_repo(net, "alice/secret", region="lax").status_code == 201
    work = git.new_worktree(tmp_path / "w")
    git.commit(work, "s.txt", b"secret\n")
    git.run("push", "-q", repo_url(net, "alice/secret"), "main", cwd=work)

    # Mallory may not see it at all: the same answer as a missing repository.
    as_mallory = repo_url(net, "alice/secret", user="mallory")
    proc = git.run("clone", as_mallory, str(tmp_path / "m"), check=False)
    assert proc.returncode != 0
    assert "not found" in proc.stderr
    assert api_get(net, "/api/repos/alice/secret", user="mallory").status_code == 404
    assert api_get(net, "/api/repos/alice/secret", user=None).status_code == 404

    # Anonymous git gets 401 (so git would prompt), not a hint that it exists.
    info = httpx.get(
        f"{anonymous_url(net, 'alice/secret')}/info/refs?service=git-upload-pack",
        verify=tls(net),
    )
    assert info.status_code == 401

    # A reader may clone but not push: 403.
    assert create_repo(net, "alice/shared", region="fra").status_code == 201
    shared = httpx.post(
        f"{net.edge.https_url}/api/repos",
        json={"name": "alice/readable", "readers": ["bob"]},
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
    )
    assert shared.status_code == 201, shared.text
    git.run("push", "-q", repo_url(net, "alice/readable"), "main", cwd=work)
    git.run("clone", "-q", repo_url(net, "alice/readable", user="bob"), str(tmp_path / "b"))
    push = git.run(
        "push", repo_url(net, "alice/readable", user="bob"), "main:other", cwd=work, check=False
    )
    assert push.returncode != 0
    assert "403" in push.stderr


def test_wrong_token_is_401(net: Devnet, git: Git, tmp_path: Path) -> None:
    assert create_repo(net, "alice/locked", region="fra").status_code == 201
    bad = f"{net.edge.https_url}".replace("https://", "https://alice:ge_000000000000_nope@")
    proc = git.run("ls-remote", f"{bad}/alice/locked.git", check=False)
    assert proc.returncode != 0
    assert "Authentication failed" in proc.stderr
    response = api_get(net, "/api/repos/alice/locked", user=None)
    assert response.status_code == 404


def test_create_needs_a_user_and_their_namespace(net: Devnet) -> None:
    anonymous = _post(net, "/api/repos", {"name": "alice/anon"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="gitedge"'
    foreign = create_repo(net, "alice/not-bobs", as_user="bob")
    assert foreign.status_code == 403
    assert "bob/" in foreign.text
    assert api_get(net, "/api/repos/alice/not-bobs").status_code == 404


def test_admin_api_needs_the_admin_token(net: Devnet) -> None:
    assert _post(net, "/api/admin/users", {"name": "eve"}).status_code == 403
    wrong = _post(
        net, "/api/admin/users", {"name": "eve"}, headers={"authorization": "Bearer nope"}
    )
    assert wrong.status_code == 403
    admin = {"authorization": f"Bearer {net.admin_token}"}
    assert _post(net, "/api/admin/users", {"name": "eve"}, headers=admin).status_code == 201
    assert _post(net, "/api/admin/users", {"name": "eve"}, headers=admin).status_code == 409
    assert _post(net, "/api/admin/users", {"name": "../x"}, headers=admin).status_code == 400
    unknown = _post(net, "/api/admin/users/nobody/tokens", {}, headers=admin)
    assert unknown.status_code == 404


def _keypair(tmp_path: Path, name: str) -> Path:
    key = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key)], check=True
    )
    return key.with_suffix(".pub")


def test_user_keys_api(net: Devnet, tmp_path: Path) -> None:
    public = _keypair(tmp_path, "alice-laptop").read_text().strip()
    alice = ("alice", net.user_token("alice"))
    added = _post(net, "/api/user/keys", {"title": "laptop", "key": public}, auth=alice)
    assert added.status_code == 201, added.text
    assert added.json()["fingerprint"].startswith("SHA256:")
    again = _post(net, "/api/user/keys", {"title": "x", "key": public}, auth=alice)
    assert again.status_code == 409
    # The same key for someone else: still 409 (a key names one user).
    bob = ("bob", net.user_token("bob"))
    assert _post(net, "/api/user/keys", {"title": "x", "key": public}, auth=bob).status_code == 409
    for bad in ("ssh-ed25519 AAAAnotbase64!!", "hello", "ssh-rsa", public + "\nssh-ed25519 AAAA"):
        response = _post(net, "/api/user/keys", {"title": "bad", "key": bad}, auth=alice)
        assert response.status_code == 400, bad
    assert _post(net, "/api/user/keys", {"title": "t", "key": public}).status_code == 401
