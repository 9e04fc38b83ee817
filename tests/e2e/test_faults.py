"""Faults with real processes: a node killed mid-clone, an edge drained or killed mid-push,
a node drained mid-push, a certificate reloaded under a live connection.

An operation is put "in flight" by dialling the edge through a `GatedRelay`
that holds the pack half-way (tests/e2e/gate.py), and waiting for what can be
seen: the relay holding, the node's git process running. No fixed sleeps.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import pytest
import trio
import trustme

from devnet.network import Devnet, EdgeHandle, NodeHandle
from devnet.procs import ManagedProcess
from plumbing.sshkeys import load_or_create_key, public_key_line
from routing.etcd import EtcdClient
from routing.schema import DEFAULT_PREFIX, Keys
from tests.e2e.conftest import Git, create_repo, git_children, poll, repo_url, ssh_git_command
from tests.e2e.gate import GatedRelay

MiB = 1024 * 1024
PACK = 4 * MiB
"""A push's new blob: random, so its pack is as large (more than every buffer
between git and the node holds once the relay stops)."""


# -- helpers ---------------------------------------------------------------------------


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def via(url: str, relay: GatedRelay) -> str:
    """`url` (an edge's clone URL) dialled through `relay` instead."""
    scheme, rest = url.split("://", 1)
    creds, _, hostpath = rest.rpartition("@")
    _hostport, _, path = hostpath.partition("/")
    return f"{scheme}://{creds + '@' if creds else ''}127.0.0.1:{relay.port}/{path}"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")


def git_ops(node: NodeHandle, verb: str, repo_dir: Path) -> list[int]:
    """The node's running `git <verb>` processes on `repo_dir` (not ref advertisements)."""
    return [
        pid
        for pid in git_children(node.process.popen.pid)
        if verb in (argv := cmdline(pid))
        and str(repo_dir) in argv
        and "--http-backend-info-refs" not in argv
    ]


def procs_in(volume_dir: Path) -> list[int]:
    """Any process with `volume_dir` in its command line (orphans of a killed node)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(str(volume_dir) in arg for arg in cmdline(int(entry.name))):
            found.append(int(entry.name))
    return found


def bare(node: NodeHandle, name: str) -> Path:
    owner, repo = name.split("/")
    return node.volume_dir / owner / f"{repo}.git"


def fsck(git: Git, repo_dir: Path) -> None:
    proc = git.run("fsck", "--full", "--strict", cwd=repo_dir, check=False)
    assert proc.returncode == 0, f"git fsck in {repo_dir}:\n{proc.stdout}{proc.stderr}"


def ref(git: Git, repo_dir: Path, name: str = "refs/heads/main") -> str:
    return git.run("rev-parse", "--verify", "-q", name, cwd=repo_dir).stdout.strip()


def start_git(git: Git, *args: str, cwd: Path | None = None, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["git", *args],
        cwd=cwd,
        env=git.env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def log_has(proc: ManagedProcess, text: str) -> bool:
    return text in proc.log_path.read_text(errors="replace")


def seeded_repo(net: Devnet, git: Git, name: str, region: str, work: Path) -> tuple[Path, str]:
    """`name` created in `region` with one small commit pushed; its worktree and that commit."""
    assert create_repo(net, name, region=region).status_code == 201
    git.new_worktree(work)
    base = git.commit(work, "README", b"base\n")
    git.run("push", "-q", repo_url(net, name), "main", cwd=work)
    return work, base


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as resources:
        yield resources


def own_edge(net: Devnet, stack: ExitStack, **options: object) -> EdgeHandle:
    """An edge this test may kill (drain_timeout bounded, so a bug cannot hang the test)."""
    edge = net.start_edge("fra", extra="[limits]\ndrain_timeout = 30", **options)  # type: ignore[arg-type]
    stack.callback(edge.process.kill)
    return edge


# -- a node dies mid-clone ---------------------------------------------------------------


def test_node_killed_mid_clone_fails_fast_others_unaffected_and_it_comes_back(
    net: Devnet, git: Git, tmp_path: Path, stack: ExitStack
) -> None:
    node = net.start_node("ber-1", "ber", lease_ttl=3)
    work, _ = seeded_repo(net, git, "carol/big", "ber", tmp_path / "big")
    head = git.commit(work, "blob", os.urandom(4 * PACK))
    git.run("push", "-q", repo_url(net, "carol/big"), "main", cwd=work)
    _, other = seeded_repo(net, git, "carol/elsewhere", "fra", tmp_path / "other")

    relay = stack.enter_context(
        GatedRelay(("127.0.0.1", port_of(net.edge.https_url)), hold="down", hold_after=MiB)
    )
    clone = start_git(
        git, "clone", "-q", via(repo_url(net, "carol/big"), relay), str(tmp_path / "c")
    )
    stack.callback(clone.kill)
    assert relay.held.wait(30), "the clone's pack never started"
    poll(
        10, lambda: git_ops(node, "upload-pack", bare(node, "carol/big")), "the node's upload-pack"
    )

    node.process.kill()
    killed = time.monotonic()
    relay.release()
    status, err = finish(clone)
    assert status != 0, "a clone from a killed node succeeded"
    assert time.monotonic() - killed < 5, err
    poll(5, lambda: not procs_in(node.volume_dir), "the killed node's git processes to end")

    # Another node's repository, through the same edge, meanwhile.
    git.run("clone", "-q", repo_url(net, "carol/elsewhere"), str(tmp_path / "e"))
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "e").stdout.strip() == other

    # Restarted (new port, new lease): the same edge routes to it again.
    net.restart_node(node)

    def served() -> bool:
        ls = git.run("ls-remote", repo_url(net, "carol/big"), "main", check=False)
        return ls.returncode == 0 and ls.stdout.startswith(head)

    poll(15, served, "the restarted node to serve through the edge")
    git.run("clone", "-q", repo_url(net, "carol/big"), str(tmp_path / "again"))
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "again").stdout.strip() == head


# -- an edge drains with pushes in flight -----------------------------------------------


def test_sigterm_drains_the_edge_with_five_pushes_in_flight(
    net: Devnet, git: Git, tmp_path: Path, stack: ExitStack
) -> None:
    edge = own_edge(net, stack)
    ssh = ssh_git_command(net, tmp_path, "alice")
    alias = f"HostKeyAlias=[127.0.0.1]:{edge.ssh_port}"
    # Idle beside the pushes: a keep-alive HTTPS connection between requests, and
    # an authenticated SSH connection with no session.
    idle_tls = stack.enter_context(tls_connect(net, port_of(edge.https_url)))
    assert _get(idle_tls) == b"ok\n"
    idle_ssh = subprocess.Popen(
        [*shlex.split(ssh), "-N", "-p", str(edge.ssh_port), "git@127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stack.callback(idle_ssh.kill)
    poll(10, lambda: log_has(edge.process, "SSH alice authenticated"), "the idle SSH login")
    pushes: list[tuple[str, Path, str, subprocess.Popen[str], GatedRelay]] = []
    for i, transport in enumerate(["https", "https", "https", "ssh", "ssh"]):
        name = f"alice/drain-{i}"
        work, _ = seeded_repo(net, git, name, ("fra", "lax")[i % 2], tmp_path / f"w{i}")
        new = git.commit(work, "pack", os.urandom(PACK))
        if transport == "https":
            target, url, env = (
                port_of(edge.https_url),
                repo_url(net, name, edge_url=edge.https_url),
                {},
            )
        else:
            target, url = edge.ssh_port, f"{edge.ssh_url}/{name}.git"
            env = {"GIT_SSH_COMMAND": f"{ssh} -o {alias}"}
        relay = stack.enter_context(GatedRelay(("127.0.0.1", target), hold="up", hold_after=MiB))
        push = start_git(git, "push", "-q", via(url, relay), "main", cwd=work, **env)
        stack.callback(push.kill)
        pushes.append((name, work, new, push, relay))

    nodes = {name: net.nodes[("fra-1", "lax-1")[i % 2]] for i, (name, *_) in enumerate(pushes)}
    for name, _, _, push, relay in pushes:
        assert relay.held.wait(30), f"{name}: the pack never started ({finish(push, 5)})"
        node, repo_dir = nodes[name], bare(nodes[name], name)
        running = partial(git_ops, node, "receive-pack", repo_dir)
        poll(10, running, f"{name}'s receive-pack")

    edge.process.popen.send_signal(signal.SIGTERM)
    poll(10, lambda: log_has(edge.process, "SIGTERM: draining"), "the drain")
    assert log_has(edge.process, "draining, 5 request(s) in flight"), edge.process.log_tail()
    # Every listener is closed at once, while the five pushes are still held.
    poll(5, lambda: refused(port_of(edge.https_url)) and refused(edge.ssh_port), "listeners closed")
    assert edge.process.alive()
    # The idle connections are closed now, not after their idle timeouts.
    idle_tls.settimeout(5)
    assert idle_tls.recv(1) == b""
    assert idle_ssh.wait(5) != 0

    for *_, relay in pushes:
        relay.release()
    for name, _, _, push, _ in pushes:
        status, err = finish(push)
        assert status == 0, f"{name}: push failed during the drain:\n{err}"
    assert edge.process.popen.wait(30) == 0, edge.process.log_tail()
    for name, _, new, _, _ in pushes:
        repo_dir = bare(nodes[name], name)
        assert ref(git, repo_dir) == new
        fsck(git, repo_dir)


def test_a_drain_past_its_timeout_closes_what_is_left_and_exits_0(
    net: Devnet, git: Git, tmp_path: Path, stack: ExitStack
) -> None:
    edge = net.start_edge("fra", ssh=False, extra="[limits]\ndrain_timeout = 1")
    stack.callback(edge.process.kill)
    name = "alice/drain-timeout"
    work, base = seeded_repo(net, git, name, "fra", tmp_path / "w")
    git.commit(work, "pack", os.urandom(PACK))
    node, repo_dir = net.nodes["fra-1"], bare(net.nodes["fra-1"], name)
    relay = stack.enter_context(
        GatedRelay(("127.0.0.1", port_of(edge.https_url)), hold="up", hold_after=MiB)
    )
    url = via(repo_url(net, name, edge_url=edge.https_url), relay)
    push = start_git(git, "push", "-q", url, "main", cwd=work)
    stack.callback(push.kill)
    assert relay.held.wait(30), "the pack never started"
    poll(10, lambda: git_ops(node, "receive-pack", repo_dir), "the node's receive-pack")

    edge.process.popen.send_signal(signal.SIGTERM)
    # The push stays held: after drain_timeout the edge closes it and exits 0.
    assert edge.process.popen.wait(15) == 0, edge.process.log_tail()
    assert log_has(edge.process, "1 request(s) still running after 1s")
    relay.release()
    status, _ = finish(push)
    assert status != 0
    poll(10, lambda: not git_ops(node, "receive-pack", repo_dir), "the node's receive-pack to end")
    assert ref(git, repo_dir) == base
    fsck(git, repo_dir)


# -- an edge dies mid-push --------------------------------------------------------------


def test_edge_killed_mid_push_leaves_the_repository_consistent(
    net: Devnet, git: Git, tmp_path: Path, stack: ExitStack
) -> None:
    edge = own_edge(net, stack)
    name = "alice/edge-killed"
    work, base = seeded_repo(net, git, name, "lax", tmp_path / "w")
    new = git.commit(work, "pack", os.urandom(PACK))
    node, repo_dir = net.nodes["lax-1"], bare(net.nodes["lax-1"], name)

    relay = stack.enter_context(
        GatedRelay(("127.0.0.1", port_of(edge.https_url)), hold="up", hold_after=MiB)
    )
    url = via(repo_url(net, name, edge_url=edge.https_url), relay)
    push = start_git(git, "push", "-q", url, "main", cwd=work)
    stack.callback(push.kill)
    assert relay.held.wait(30), "the pack never started"
    poll(10, lambda: git_ops(node, "receive-pack", repo_dir), "the node's receive-pack")

    edge.process.kill()
    relay.release()
    status, _ = finish(push)
    assert status != 0, "a push through a killed edge succeeded"
    poll(10, lambda: not git_ops(node, "receive-pack", repo_dir), "the node's receive-pack to end")
    assert ref(git, repo_dir) in (base, new)
    fsck(git, repo_dir)

    # The repository takes the same push again, through a live edge.
    git.run("push", "-q", repo_url(net, name), "main", cwd=work)
    assert ref(git, repo_dir) == new
    fsck(git, repo_dir)


# -- a node drains with a push in flight -------------------------------------------------


def node_registered(net: Devnet, node_id: str) -> bool:
    async def read() -> bool:
        async with EtcdClient(net.etcd.url) as etcd:
            return await etcd.get(Keys(DEFAULT_PREFIX).node(node_id)) is not None

    return trio.run(read)


def test_sigterm_drains_a_node_keeping_its_lease_until_the_push_ends(
    net: Devnet, git: Git, tmp_path: Path, stack: ExitStack
) -> None:
    node = net.start_node("muc-1", "muc", lease_ttl=3)
    stack.callback(node.process.kill)
    name = "alice/node-drain"
    work, _ = seeded_repo(net, git, name, "muc", tmp_path / "w")
    new = git.commit(work, "pack", os.urandom(PACK))
    repo_dir = bare(node, name)

    relay = stack.enter_context(
        GatedRelay(("127.0.0.1", port_of(net.edge.https_url)), hold="up", hold_after=MiB)
    )
    push = start_git(git, "push", "-q", via(repo_url(net, name), relay), "main", cwd=work)
    stack.callback(push.kill)
    assert relay.held.wait(30), "the pack never started"
    poll(10, lambda: git_ops(node, "receive-pack", repo_dir), "the node's receive-pack")

    node.process.popen.send_signal(signal.SIGTERM)
    poll(10, lambda: log_has(node.process, "SIGTERM: draining"), "the drain")
    assert log_has(node.process, "draining, 1 request(s) in flight"), node.process.log_tail()
    poll(5, lambda: refused(port_of(node.http_url)), "the node's listener closed")
    # Edges still route to it (it is registered) and are refused: a fast 503.
    meanwhile = git.run("ls-remote", repo_url(net, name), check=False, timeout=30)
    assert meanwhile.returncode != 0 and "503" in meanwhile.stderr, meanwhile.stderr
    # What is under test is a time: past the lease's TTL (3 s), the node is still
    # registered, because it keeps the lease alive while its push runs.
    lease_outlived = time.monotonic() + 3.5
    poll(5, lambda: time.monotonic() > lease_outlived, "a lease TTL to pass")
    assert node.process.alive() and node_registered(net, "muc-1")

    relay.release()
    status, err = finish(push)
    assert status == 0, err
    assert node.process.popen.wait(15) == 0, node.process.log_tail()
    assert not node_registered(net, "muc-1")  # revoked on the way out, not left to expire
    assert ref(git, repo_dir) == new
    fsck(git, repo_dir)


# -- SIGHUP: a new certificate --------------------------------------------------------------


def _write_pair(cert: trustme.LeafCert, cert_file: Path, key_file: Path) -> None:
    """Replace both files by rename, as certbot's deploy does."""
    for pem, path in ((cert.cert_chain_pems[0], cert_file), (cert.private_key_pem, key_file)):
        tmp = path.with_suffix(".new")
        pem.write_to_path(str(tmp))
        tmp.replace(path)


def tls_connect(net: Devnet, port: int, trust: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    """A TLS connection to an edge on 127.0.0.1 (trusting the network's CA by default)."""
    context = trust or ssl.create_default_context(cafile=str(net.ca_file))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def _get(conn: ssl.SSLSocket, path: str = "/healthz") -> bytes:
    """One keep-alive request on `conn`; the whole response (it has a Content-Length)."""
    conn.sendall(f"GET {path} HTTP/1.1\r\nHost: edge\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"EOF"
        assert not data.endswith(b"EOF"), data
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.lower().split(b"\r\n")
        if b"content-length" in line
    )
    while len(body) < length:
        body += conn.recv(65536)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"connection: close" not in head.lower(), head
    return body


def test_sighup_reloads_the_certificate_under_a_live_connection(
    net: Devnet, tmp_path: Path, stack: ExitStack
) -> None:
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    old_ca, new_ca = trustme.CA(), trustme.CA()
    _write_pair(old_ca.issue_cert("127.0.0.1"), cert_file, key_file)
    edge = own_edge(net, stack, ssh=False, cert_files=(cert_file, key_file))
    port = port_of(edge.https_url)
    trust = ssl.create_default_context()
    old_ca.configure_trust(trust)
    new_ca.configure_trust(trust)

    def connect() -> ssl.SSLSocket:
        return tls_connect(net, port, trust)

    kept = stack.enter_context(connect())
    old_der = kept.getpeercert(binary_form=True)
    assert _get(kept) == b"ok\n"

    new_cert = new_ca.issue_cert("127.0.0.1")
    _write_pair(new_cert, cert_file, key_file)
    edge.process.popen.send_signal(signal.SIGHUP)
    poll(10, lambda: log_has(edge.process, "reloaded; new connections use them"), "the reload")

    with connect() as fresh:
        new_der = fresh.getpeercert(binary_form=True)
        assert new_der != old_der
        assert new_der == ssl.PEM_cert_to_DER_cert(new_cert.cert_chain_pems[0].bytes().decode())
        assert _get(fresh) == b"ok\n"
    # The connection from before the reload goes on, on its old certificate.
    assert _get(kept) == b"ok\n"
    assert kept.getpeercert(binary_form=True) == old_der

    # A broken file is refused: the edge keeps serving the last good certificate.
    cert_file.write_text("not a certificate\n")
    edge.process.popen.send_signal(signal.SIGHUP)
    poll(10, lambda: log_has(edge.process, "reload failed"), "the refused reload")
    with connect() as after:
        assert after.getpeercert(binary_form=True) == new_der
    assert _get(kept) == b"ok\n"


def _scan(port: int) -> str:
    """The SSH host key an edge offers a new connection (`type base64`)."""
    scanned = subprocess.run(
        ["ssh-keyscan", "-T", "5", "-t", "ed25519", "-p", str(port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=15,
    )
    return " ".join(scanned.stdout.split()[1:3])


def test_sighup_reloads_the_ssh_host_key_under_a_live_connection(
    net: Devnet, git: Git, tmp_path: Path, stack: ExitStack
) -> None:
    key_file = tmp_path / "host_ed25519_key"
    old_key = public_key_line(load_or_create_key(key_file))
    edge = own_edge(net, stack, host_key_file=key_file)
    assert _scan(edge.ssh_port) == old_key
    _, head = seeded_repo(net, git, "alice/host-key", "fra", tmp_path / "w")
    # One SSH connection (an OpenSSH ControlMaster) that later git runs share; it
    # pinned the old key (known_hosts).
    control = Path(stack.enter_context(tempfile.TemporaryDirectory(dir="/tmp"))) / "cm"
    ssh = f"{ssh_git_command(net, tmp_path, 'alice')} -o ControlPath={control}"
    master = subprocess.Popen(
        [*shlex.split(ssh), "-M", "-N", "-p", str(edge.ssh_port), "git@127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stack.callback(master.kill)
    poll(10, control.exists, "the SSH control master")
    url = f"{edge.ssh_url}/alice/host-key.git"

    def ls_remote() -> str:
        return git.run("ls-remote", url, "main", GIT_SSH_COMMAND=ssh).stdout.split()[0]

    assert ls_remote() == head

    new_key = public_key_line(load_or_create_key(tmp_path / "next_key"))
    (tmp_path / "next_key").replace(key_file)
    edge.process.popen.send_signal(signal.SIGHUP)
    poll(10, lambda: log_has(edge.process, "reloaded; new connections use them"), "the reload")
    assert _scan(edge.ssh_port) == new_key != old_key
    # The connection from before the reload goes on, on its old key.
    assert ls_remote() == head
    assert master.poll() is None
