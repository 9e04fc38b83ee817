"""Access control over HTTPS, and the user, token and key API, through a real edge."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx

from devnet.network import Devnet
from tests.e2e.conftest import (
    Git,
    anonymous_url,
    api_get,
    create_repo,
    gitedge,
    poll,
    repo_url,
    tls,
)
from tests.e2e.test_ssh import SshClient


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


# -- revocation: tokens and keys, through the CLI, seen by every edge ------------------------


def _cli(net: Devnet, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return gitedge(net.edge.https_url, net.ca_file, *args, **env)


def _token_id(token: str) -> str:
    return token.split("_")[1]


def test_tokens_listed_and_revoked_everywhere(net: Devnet, git: Git) -> None:
    kept = net.user_token("ruth")
    admin = {"GITEDGE_ADMIN_TOKEN": net.admin_token}
    made = _cli(net, "token", "create", "ruth", **admin)
    assert made.returncode == 0, made.stderr
    leaked = json.loads(made.stdout)["token"]
    assert create_repo(net, "ruth/app", region="fra").status_code == 201
    second = net.start_edge("lax")  # learns of the revocation only through its etcd watch
    urls = {
        edge: f"{edge.replace('https://', f'https://ruth:{leaked}@')}/ruth/app.git"
        for edge in (net.edge.https_url, second.https_url)
    }
    for url in urls.values():
        git.run("ls-remote", url)

    as_ruth = {"GITEDGE_USER": "ruth", "GITEDGE_TOKEN": kept}
    listed = _cli(net, "token", "list", **as_ruth)
    assert listed.returncode == 0, listed.stderr
    ids = [t["id"] for t in json.loads(listed.stdout)["tokens"]]
    assert sorted(ids) == sorted([_token_id(kept), _token_id(leaked)])
    assert leaked not in listed.stdout  # ids only, never a secret

    # Someone else's token is "not found", exactly like a made-up one.
    as_bob = {"GITEDGE_USER": "bob", "GITEDGE_TOKEN": net.user_token("bob")}
    for who, ident in ((as_bob, _token_id(leaked)), (as_ruth, "0123456789ab")):
        refused = _cli(net, "token", "revoke", ident, **who)
        assert refused.returncode == 1
        assert "404" in refused.stderr and "no such token" in refused.stderr

    revoked = _cli(net, "token", "revoke", _token_id(leaked), **as_ruth)
    assert revoked.returncode == 0, revoked.stderr
    assert json.loads(revoked.stdout) == {
        "id": _token_id(leaked),
        "revoked": "token",
        "user": "ruth",
    }
    for url in urls.values():

        def rejected(url: str = url) -> bool:
            return "Authentication failed" in git.run("ls-remote", url, check=False).stderr

        poll(10, rejected)
    git.run("ls-remote", repo_url(net, "ruth/app", edge_url=second.https_url))  # the kept one
    assert _cli(net, "token", "revoke", _token_id(leaked), **as_ruth).returncode == 1

    # The admin revokes anyone's, even with a user's credentials also in the environment.
    by_admin = _cli(net, "token", "revoke", _token_id(kept), **as_ruth, **admin)
    assert by_admin.returncode == 0, by_admin.stderr
    assert api_get(net, "/api/user/tokens", user="ruth").status_code == 401
    listed = _cli(net, "token", "list", "ruth", **admin)
    assert json.loads(listed.stdout) == {"tokens": [], "user": "ruth"}
    assert _cli(net, "token", "list", "nobody", **admin).returncode == 1
    needs_admin = _cli(net, "token", "list", "ruth", **as_bob)
    assert needs_admin.returncode == 2 and "--admin-token" in needs_admin.stderr


def test_revocation_routes_refuse_bad_input(net: Devnet) -> None:
    alice = ("alice", net.user_token("alice"))
    for path, status in (
        ("/api/user/tokens/not-hex", 400),
        ("/api/user/keys/SHA256:short", 400),
        ("/api/user/keys/MD5:aa", 400),
        ("/api/admin/tokens/0123456789ab", 403),  # a user is not the admin
    ):
        response = httpx.delete(f"{net.edge.https_url}{path}", auth=alice, verify=tls(net))
        assert response.status_code == status, path
    anonymous = httpx.delete(f"{net.edge.https_url}/api/user/tokens/0123456789ab", verify=tls(net))
    assert anonymous.status_code == 401
    assert httpx.get(f"{net.edge.https_url}/api/user/keys", verify=tls(net)).status_code == 401


def test_removed_key_no_longer_opens_ssh(net: Devnet, tmp_path: Path) -> None:
    public = _keypair(tmp_path, "old-laptop")
    private = public.with_suffix("")
    as_rhea = {"GITEDGE_USER": "rhea", "GITEDGE_TOKEN": net.user_token("rhea")}
    added = _cli(net, "key", "add", "--key", str(public), **as_rhea)
    assert added.returncode == 0, added.stderr
    fingerprint = json.loads(added.stdout)["fingerprint"]
    ssh = SshClient(tmp_path, private, net.known_hosts, net.edge.ssh_port)
    assert ssh.run("-T", "git@127.0.0.1").returncode == 1  # the greeting: signed in

    listed = json.loads(_cli(net, "key", "list", **as_rhea).stdout)
    assert [k["fingerprint"] for k in listed["keys"]] == [fingerprint]
    # bob may not remove it (and cannot tell it exists); rhea may, by fingerprint.
    as_bob = {"GITEDGE_USER": "bob", "GITEDGE_TOKEN": net.user_token("bob")}
    assert "no such key" in _cli(net, "key", "remove", fingerprint, **as_bob).stderr
    removed = _cli(net, "key", "remove", fingerprint, **as_rhea)
    assert removed.returncode == 0, removed.stderr
    refused = ssh.run("-T", "git@127.0.0.1")
    assert refused.returncode == 255
    assert "Permission denied (publickey)" in refused.stderr
    assert json.loads(_cli(net, "key", "list", **as_rhea).stdout)["keys"] == []
    # Free again: the same key may be registered anew.
    assert _cli(net, "key", "add", "--key", str(public), **as_rhea).returncode == 0
