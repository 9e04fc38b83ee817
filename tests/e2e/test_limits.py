"""Limits on git operations, with real git and OpenSSH through real edges.

Edges with small limits share one network: `tight` lets a user run two git
operations at once and queue none; `fair` shares its node's four slots fairly
(one user: half of them). Operations are held open the way the issue's
attacker held them: SSH sessions that never send their wants, and HTTPS
upload-pack requests that never finish their body. Node lax-1 takes pushes
of at most PUSH_LIMIT bytes. Readiness is read from the edge's counters
(`/_gitedge/stats`), never waited for with a sleep. Their trusted proxy is
127.0.0.2, which alone may read those counters: trusted proxies are exempt
from the per-address limits, and the clients here come from 127.0.0.1.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import socket
import ssl
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from devnet.network import Devnet, EdgeHandle, start_devnet
from tests.e2e.conftest import Git, create_repo, git_children, poll, repo_url, ssh_git_command, tls

PUSH_LIMIT = 100_000
TRUSTED = 'trusted_proxies = ["127.0.0.2/32"]'
TIGHT = """
[limits]
git_per_user = 2
git_per_user_queue = 0
"""
FAIR = """
[limits]
git_per_user = 50
git_per_node = 4
git_per_node_queue = 2
git_node_user_share = 0.5
git_queue_wait = 2.0
"""
GUARDED = """
[limits]
git_rate_per_user = 1
git_burst_per_user = 2
auth_fail_rate_per_address = 1
auth_fail_burst_per_address = 2
"""
BUSY_LINE = "ERROR: too many concurrent operations, try again later"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with start_devnet(tmp_path_factory.mktemp("limits"), regions=("fra",), lease_ttl=3) as network:
        network.start_node(
            "lax-1", "lax", lease_ttl=3, extra=f"[limits]\nmax_push_size = {PUSH_LIMIT}"
        )
        yield network


@pytest.fixture(scope="module")
def tight(net: Devnet) -> EdgeHandle:
    return net.start_edge("fra", edge_options=TRUSTED, extra=TIGHT)


@pytest.fixture(scope="module")
def fair(net: Devnet) -> EdgeHandle:
    return net.start_edge("fra", edge_options=TRUSTED, extra=FAIR)


@pytest.fixture(scope="module")
def ssh_commands(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """GIT_SSH_COMMAND of alice and of bob, each with a key of their own."""
    return {
        user: ssh_git_command(net, tmp_path_factory.mktemp(f"ssh-{user}"), user)
        for user in ("alice", "bob")
    }


@pytest.fixture(scope="module")
def seeded(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> None:
    """alice/held and bob/work on fra-1, one commit each."""
    home = tmp_path_factory.mktemp("seed-home")
    git = Git(home, net.ca_file)
    for name in ("alice/held", "bob/work"):
        assert create_repo(net, name, region="fra").status_code == 201
        work = git.new_worktree(home / name.replace("/", "-"))
        git.commit(work, "README", f"{name}\n".encode())
        git.run("push", "-q", repo_url(net, name), "main", cwd=work)


def stats(edge: EdgeHandle) -> dict[str, Any]:
    """The edge's counters, asked from its trusted proxy's address."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2", verify=False)
    with httpx.Client(transport=transport, timeout=10) as client:
        answer: dict[str, Any] = client.get(f"{edge.https_url}/_gitedge/stats").json()
    return answer


def git_ops_on(net: Devnet, node_id: str) -> list[int]:
    """The node's running upload-pack and receive-pack processes (not its housekeeping)."""
    found = []
    for pid in git_children(net.nodes[node_id].process.popen.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg in (b"upload-pack", b"receive-pack") for arg in argv):
            found.append(pid)
    return found


def two_git_ops(net: Devnet) -> list[int] | None:
    """fra-1's git operations once there are exactly two (an admitted one's git
    starts a moment after the edge counts it)."""
    running = git_ops_on(net, "fra-1")
    return running if len(running) == 2 else None


def ssh_argv(command: str, edge: EdgeHandle, *remote: str) -> list[str]:
    return [*shlex.split(command), "-p", str(edge.ssh_port), "git@127.0.0.1", *remote]


def ssh_url(edge: EdgeHandle, name: str) -> str:
    return f"ssh://git@127.0.0.1:{edge.ssh_port}/{name}.git"


@contextmanager
def held_ssh(command: str, edge: EdgeHandle, name: str) -> Iterator[subprocess.Popen[bytes]]:
    """An SSH upload-pack session that reads the advertisement and never sends its wants."""
    proc = subprocess.Popen(
        ssh_argv(command, edge, f"git-upload-pack '{name}.git'"),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)
        for pipe in (proc.stdin, proc.stderr):
            if pipe is not None:
                pipe.close()


@contextmanager
def held_https(net: Devnet, edge: EdgeHandle, user: str, name: str) -> Iterator[ssl.SSLSocket]:
    """An upload-pack POST that promises 100 MB of body and sends two bytes of it."""
    host, port = edge.https_url.removeprefix("https://").rsplit(":", 1)
    creds = base64.b64encode(f"{user}:{net.user_token(user)}".encode()).decode()
    raw = socket.create_connection((host, int(port)), timeout=10)
    sock = tls(net).wrap_socket(raw, server_hostname=host)
    try:
        sock.sendall(
            (
                f"POST /{name}.git/git-upload-pack HTTP/1.1\r\nHost: {host}\r\n"
                f"Authorization: Basic {creds}\r\n"
                "Content-Type: application/x-git-upload-pack-request\r\n"
                "Content-Length: 100000000\r\n\r\n00"
            ).encode()
        )
        yield sock
    finally:
        sock.close()


def test_a_user_at_their_limit_gets_429_over_https_and_one_line_over_ssh(
    net: Devnet, tight: EdgeHandle, ssh_commands: dict[str, str], seeded: None, git: Git
) -> None:
    alice = ssh_commands["alice"]
    with held_ssh(alice, tight, "alice/held"), held_ssh(alice, tight, "alice/held"):
        poll(15, lambda: stats(tight)["limits_ops_active"] == 2, "alice's two sessions")
        running = poll(15, lambda: two_git_ops(net), "their two git on the node")

        url = repo_url(net, "alice/held", edge_url=tight.https_url)
        refused = git.run("ls-remote", url, check=False)
        assert refused.returncode != 0
        assert "The requested URL returned error: 429" in refused.stderr
        answer = httpx.get(
            f"{tight.https_url}/alice/held.git/info/refs?service=git-upload-pack",
            auth=("alice", net.user_token("alice")),
            verify=tls(net),
            timeout=10,
        )
        assert (answer.status_code, answer.headers["retry-after"]) == (429, "5")
        assert answer.text.strip() == "too many concurrent operations, try again later"

        session = subprocess.run(
            ssh_argv(alice, tight, "git-upload-pack 'alice/held.git'"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        assert session.returncode == 1
        assert session.stderr.decode().splitlines() == [BUSY_LINE]
        assert session.stdout == b""
        clone = git.run(
            "clone", ssh_url(tight, "alice/held"), str(git.home / "c"), check=False,
            GIT_SSH_COMMAND=alice,
        )  # fmt: skip
        assert clone.returncode != 0 and BUSY_LINE in clone.stderr

        # Every refusal came before the node was asked: only the two holders run git.
        assert sorted(git_ops_on(net, "fra-1")) == sorted(running)
        assert stats(tight)["limits_ops_refused_busy"] >= 4
    poll(15, lambda: not git_ops_on(net, "fra-1"), "the holders' git to go")
    assert "refs/heads/main" in git.run("ls-remote", url).stdout  # served again


def test_one_user_flooding_a_node_leaves_room_for_another(
    net: Devnet,
    fair: EdgeHandle,
    ssh_commands: dict[str, str],
    seeded: None,
    git: Git,
    tmp_path: Path,
) -> None:
    """Issue 9, item 7: alice floods fra-1 over SSH and HTTPS; bob's clones of his
    own repository there still succeed, over both."""
    before = stats(fair)["limits_ops_refused_busy"]
    with ExitStack() as flood:
        sessions = [
            flood.enter_context(held_ssh(ssh_commands["alice"], fair, "alice/held"))
            for _ in range(4)
        ]
        for _ in range(4):
            flood.enter_context(held_https(net, fair, "alice", "alice/held"))
        # Half the node's 4 slots are hers, one waits; the other five are refused.
        poll(
            15,
            lambda: (
                (now := stats(fair))["limits_node_slots_held"] == 2
                and now["limits_ops_refused_busy"] - before >= 5
            ),
            "alice's flood to be admitted, queued and refused",
        )
        poll(15, lambda: two_git_ops(net), "her two admitted operations' git on the node")

        git.run(
            "clone", "-q", repo_url(net, "bob/work", edge_url=fair.https_url), str(tmp_path / "h")
        )
        git.run(
            "clone", "-q", ssh_url(fair, "bob/work"), str(tmp_path / "s"),
            GIT_SSH_COMMAND=ssh_commands["bob"],
        )  # fmt: skip
        for clone in ("h", "s"):
            assert (tmp_path / clone / "README").read_text() == "bob/work\n"
        assert len(git_ops_on(net, "fra-1")) == 2  # still only alice's two
        refused = [s for s in sessions if s.poll() is not None]
        assert refused and all(s.returncode == 1 for s in refused)
        for session in refused:
            assert session.stderr is not None
            assert session.stderr.read().decode().splitlines() == [BUSY_LINE]
    poll(15, lambda: not git_ops_on(net, "fra-1"), "alice's git to go")
    poll(15, lambda: stats(fair)["limits_ops_active"] == 0, "the edge to free her slots")


def test_a_push_over_the_size_limit_is_refused_and_changes_nothing(
    net: Devnet, ssh_commands: dict[str, str], git: Git, tmp_path: Path
) -> None:
    name = "alice/sized"
    assert create_repo(net, name, region="lax").status_code == 201
    url = repo_url(net, name)
    work = git.new_worktree(tmp_path / "big")
    git.commit(work, "blob", os.urandom(3 * PUSH_LIMIT))  # random: the pack cannot shrink it
    ssh = ssh_commands["alice"]
    for remote in (url, ssh_url(net.edge, name)):
        push = git.run("push", remote, "main", cwd=work, check=False, GIT_SSH_COMMAND=ssh)
        assert push.returncode != 0, push.stderr
        assert "remote: fatal: pack exceeds maximum allowed size" in push.stderr
    assert git.run("ls-remote", url).stdout == ""
    on_disk = net.nodes["lax-1"].volume_dir / "alice" / "sized.git"
    counted = git.run("count-objects", "-v", cwd=on_disk).stdout
    assert "count: 0" in counted and "in-pack: 0" in counted

    small = git.new_worktree(tmp_path / "small")
    head = git.commit(small, "README", b"small\n")
    git.run("push", "-q", url, "main", cwd=small)
    assert f"{head}\trefs/heads/main" in git.run("ls-remote", url).stdout.splitlines()


def test_rate_limits_on_git_operations_and_failed_logins(
    net: Devnet, ssh_commands: dict[str, str], seeded: None, git: Git, tmp_path: Path
) -> None:
    """A user's git operations (2, then one a minute), then an address's failed logins
    (2, then one a minute): refused on both fronts, before the node is asked."""
    guarded = net.start_edge(
        "fra", edge_options=TRUSTED, extra=GUARDED
    )  # its own: this address gets blocked
    url = repo_url(net, "alice/held", edge_url=guarded.https_url)
    git.run("ls-remote", url)  # info/refs and ls-refs: both of alice's tokens
    spent = git.run("ls-remote", url, check=False)
    assert "The requested URL returned error: 429" in spent.stderr
    session = subprocess.run(
        ssh_argv(ssh_commands["alice"], guarded, "git-upload-pack 'alice/held.git'"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert session.returncode == 1
    (line,) = session.stderr.decode().splitlines()
    assert re.fullmatch(r"ERROR: too many git operations, try again in \d+ seconds", line)
    assert git.run("ls-remote", repo_url(net, "bob/work", edge_url=guarded.https_url)).stdout

    stranger = tmp_path / "id_ed25519"  # a key nobody registered
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    unknown = ssh_commands["alice"].replace(
        str(Path(shlex.split(ssh_commands["alice"])[4])), str(stranger)
    )
    for _ in range(2):
        login = subprocess.run(
            ssh_argv(unknown, guarded), stdin=subprocess.DEVNULL, capture_output=True, timeout=30
        )
        assert b"Permission denied (publickey)" in login.stderr
    login = subprocess.run(
        ssh_argv(ssh_commands["alice"], guarded),  # even a good key: the address is blocked
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    assert login.returncode == 255
    assert b"too many failed authentications from your address, try again later" in login.stderr
    refused = git.run("ls-remote", url, check=False, GIT_TRACE_CURL="1")
    assert "too many failed authentications" in refused.stderr  # not the git rate: unchecked
    anonymous = httpx.get(f"{guarded.https_url}/healthz", verify=tls(net), timeout=10)
    assert anonymous.status_code == 200  # without credentials nothing is refused
    assert stats(guarded)["limits_auth_refused"] >= 2
