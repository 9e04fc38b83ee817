"""Connection limits against a real edge (docs/connections.md), from real sockets.

The edge under test has small limits (LIMITS, SSH_LIMITS) and trusts only
127.0.0.1 as a proxy, so that other loopback clients are counted per address.
Each test speaks from its own loopback addresses (127.0.0.N: all of 127/8 is
local on Linux), so that one test's connections are not another's; each closes
what it opened, and the next waits until the edge has let go of them.
"""

from __future__ import annotations

import base64
import os
import shlex
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import pytest

from devnet.network import Devnet, EdgeHandle, start_devnet
from tests.e2e.conftest import Git, create_repo, git_children, poll, repo_url, ssh_git_command

PER_ADDRESS = 3
PER_LISTENER = 6
LIMITS = f"""
[limits]
max_connections = {PER_LISTENER}
max_connections_per_address = {PER_ADDRESS}
per_write_timeout = 1.0
body_min_rate = 1000
body_rate_grace = 1.0
tls_handshake_timeout = 1.0
"""
SSH_PER_ADDRESS = 3
STARTUPS_FULL = 4
SSH_LIMITS = f"""
max_connections = 20
max_connections_per_address = {SSH_PER_ADDRESS}
max_startups = "{STARTUPS_FULL}:30:{STARTUPS_FULL}"
per_write_timeout = 1.0
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with start_devnet(tmp_path_factory.mktemp("conns"), regions=("fra",), lease_ttl=3) as network:
        yield network


@pytest.fixture(scope="module")
def edge(net: Devnet) -> EdgeHandle:
    """An edge with small connection limits; `net.edge` (no small limits) sets things up."""
    return net.start_edge(
        "fra",
        http=True,
        # Trusted proxies skip the per-address caps: only 127.0.0.1 is one here
        # (it may read /_gitedge/stats); the tests speak from other loopback addresses.
        edge_options='trusted_proxies = ["127.0.0.1/32"]',
        ssh_options=SSH_LIMITS,
        extra=LIMITS,
    )


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


def _connect(address: tuple[str, int], source: str) -> socket.socket:
    sock = socket.create_connection(address, timeout=10, source_address=(source, 0))
    return sock


def _read_all(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """Everything until the peer closes (a reset counts as closed)."""
    data = b""
    with suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _health(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """One keep-alive GET /healthz on `sock`: the status line."""
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
    answer = b""
    while b"\r\n\r\n" not in answer or not answer.endswith(b"ok\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer.split(b"\r\n", 1)[0]


def _held_http(address: tuple[str, int], source: str, stack: ExitStack) -> socket.socket:
    """A plain-HTTP connection the edge admitted (it answered a request on it)."""
    sock = stack.enter_context(_connect(address, source))
    assert _health(sock).startswith(b"HTTP/1.1 200")
    return sock


def _admitted_again(address: tuple[str, int], source: str) -> bool:
    """Whether a new connection from `source` is served (the edge let go of old ones)."""
    with _connect(address, source) as sock:
        try:
            return _health(sock).startswith(b"HTTP/1.1 200")
        except ConnectionResetError:
            return False


# -- per address, per listener --------------------------------------------------------


def test_per_address_cap_answers_503_and_frees_up_when_one_closes(edge: EdgeHandle) -> None:
    assert edge.http_url is not None
    address = _host_port(edge.http_url)
    with ExitStack() as stack:
        held = [_held_http(address, "127.0.0.11", stack) for _ in range(PER_ADDRESS)]
        with _connect(address, "127.0.0.11") as over:
            # As a client does: the request at once (the 503 must survive the close).
            over.sendall(b"GET /healthz HTTP/1.1\r\nHost: edge\r\n\r\n")
            answer = _read_all(over)
        head = answer.split(b"\r\n\r\n", 1)[0].lower()
        assert head.startswith(b"http/1.1 503 ")
        assert b"connection: close" in head and b"retry-after: 1" in head
        assert b"too many connections from this address" in answer
        # Another address is not affected.
        _held_http(address, "127.0.0.12", stack)
        stats = httpx.get(f"{edge.http_url}/_gitedge/stats", timeout=10).json()
        assert stats["http_refused_address_full"] >= 1
        assert stats["http_connections"] >= PER_ADDRESS + 1
        held[0].close()
        poll(10, lambda: _admitted_again(address, "127.0.0.11"), "a slot for 127.0.0.11")


def test_listener_cap_closes_https_at_once_and_is_per_front(
    net: Devnet, edge: EdgeHandle, tmp_path: Path
) -> None:
    address = _host_port(edge.https_url)
    ctx = ssl.create_default_context(cafile=str(net.ca_file))

    def tls_connect(source: str, stack: ExitStack) -> ssl.SSLSocket:
        raw = _connect(address, source)
        return stack.enter_context(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))

    with ExitStack() as stack:
        for i in range(PER_LISTENER):
            sock = tls_connect(f"127.0.0.{21 + i // PER_ADDRESS}", stack)
            assert _health(sock).startswith(b"HTTP/1.1 200")
        # Full: a new client from a fresh address is closed before any TLS.
        refused = (ssl.SSLError, ConnectionResetError, BrokenPipeError)
        with pytest.raises(refused), ExitStack() as over:
            tls_connect("127.0.0.23", over)
        # What git sees (from 127.0.0.1, a fresh address): a failed connection.
        git = Git(tmp_path, net.ca_file)
        refused_clone = git.run("ls-remote", f"{edge.https_url}/alice/any.git", check=False)
        assert refused_clone.returncode == 128
        print("git over a full HTTPS listener:", refused_clone.stderr.strip())
        # The plain-HTTP front counts its own connections.
        assert edge.http_url is not None
        assert _admitted_again(_host_port(edge.http_url), "127.0.0.23")


def test_tls_handshake_timeout_closes_a_silent_connection(edge: EdgeHandle) -> None:
    address = _host_port(edge.https_url)
    with _connect(address, "127.0.0.26") as sock:
        sock.settimeout(20)  # far beyond the 1 s handshake timeout: a hang fails here
        assert _read_all(sock) == b""  # closed, without a byte of TLS


# -- SSH: per address and MaxStartups ----------------------------------------------------


def _ssh_banner(address: tuple[str, int], source: str, stack: ExitStack) -> bytes:
    """Connect from `source`, send only our version line; the edge's version line,
    or b"" when the edge closed the connection without one."""
    sock = stack.enter_context(_connect(address, source))
    sock.sendall(b"SSH-2.0-banner-only\r\n")
    data = b""
    with suppress(ConnectionResetError):
        while b"\r\n" not in data and (chunk := sock.recv(4096)):
            data += chunk
    return data


def test_ssh_per_address_cap_and_max_startups_refuse_banner_only_connections(
    edge: EdgeHandle,
) -> None:
    address = ("127.0.0.1", edge.ssh_port)
    with ExitStack() as stack:
        first = ExitStack()
        stack.enter_context(first)
        assert _ssh_banner(address, "127.0.0.31", first).startswith(b"SSH-2.0-")
        for _ in range(SSH_PER_ADDRESS - 1):
            assert _ssh_banner(address, "127.0.0.31", stack).startswith(b"SSH-2.0-")
        # Over the per-address cap: closed before the edge says a word.
        assert _ssh_banner(address, "127.0.0.31", stack) == b""
        for i in range(STARTUPS_FULL - SSH_PER_ADDRESS):
            assert _ssh_banner(address, f"127.0.0.{32 + i}", stack).startswith(b"SSH-2.0-")
        # `full` unauthenticated connections are open: every new one is dropped.
        for _ in range(3):
            assert _ssh_banner(address, "127.0.0.39", stack) == b""
        # What OpenSSH sees (from 127.0.0.1): no banner, exit 255.
        ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
               "-o", "UserKnownHostsFile=/dev/null", "-p", str(edge.ssh_port), "git@127.0.0.1",
               "git-upload-pack 'alice/any.git'"]  # fmt: skip
        dropped = subprocess.run(ssh, capture_output=True, text=True, timeout=30)
        assert dropped.returncode == 255
        assert "kex_exchange_identification" in dropped.stderr, dropped.stderr
        print("OpenSSH past MaxStartups:", dropped.stderr.strip())
        first.close()

        def admitted() -> bool:
            with ExitStack() as probe:
                return _ssh_banner(address, "127.0.0.39", probe).startswith(b"SSH-2.0-")

        poll(10, admitted, "a MaxStartups slot after one connection closed")


def _edge_stats(edge: EdgeHandle) -> dict[str, int]:
    """The edge's counters, read from 127.0.0.1 (its one trusted proxy)."""
    answer: dict[str, int] = httpx.get(f"{edge.http_url}/_gitedge/stats", timeout=10).json()
    return answer


def _read_advert(stdout: int) -> bytes:
    advert = b""
    while not advert.endswith(b"0000"):
        chunk = os.read(stdout, 65536)
        assert chunk, "no ref advertisement"
        advert += chunk
    return advert


def test_authenticated_connections_do_not_count_toward_max_startups(
    net: Devnet, edge: EdgeHandle, big_repo: tuple[str, str], tmp_path: Path
) -> None:
    name, _ = big_repo
    address = ("127.0.0.1", edge.ssh_port)
    poll(10, lambda: _edge_stats(edge)["ssh_unauthenticated"] == 0, "earlier connections to go")
    ssh = shlex.split(ssh_git_command(net, tmp_path))
    session = subprocess.Popen(
        [*ssh, "-p", str(edge.ssh_port), "git@127.0.0.1", f"git-upload-pack '{name}.git'"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert session.stdin is not None and session.stdout is not None
    try:
        _read_advert(session.stdout.fileno())  # authenticated, and its session is open
        with ExitStack() as stack:
            # With the session counted, the 4th of these would be dropped.
            for i in range(STARTUPS_FULL):
                assert _ssh_banner(address, f"127.0.0.{61 + i}", stack).startswith(b"SSH-2.0-")
            assert _ssh_banner(address, "127.0.0.69", stack) == b""
    finally:
        session.stdin.close()  # no wants: upload-pack ends
        try:
            session.wait(timeout=10)
        except subprocess.TimeoutExpired:
            session.kill()
            session.wait()


# -- a client that stops reading; a body that trickles --------------------------------


@pytest.fixture(scope="module")
def big_repo(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """alice/big: 32 MiB of random data and its head, pushed through `net.edge`.

    More than what can sit in the buffers between the node's git and a client
    that stopped reading (its socket's, the edge's, the node connection's):
    git is still writing when the client stops.
    """
    assert create_repo(net, "alice/big", region="fra").status_code == 201
    git = Git(tmp_path_factory.mktemp("big-home"), net.ca_file)
    work = git.new_worktree(tmp_path_factory.mktemp("big") / "w")
    # 128 blobs: over transfer.unpackLimit (100), so the node keeps the pack as pushed.
    for i in range(128):
        (work / f"blob{i:03}").write_bytes(os.urandom(2**18))
    fast = ("-c", "core.compression=0", "-c", "pack.window=0")
    git.run(*fast, "add", ".", cwd=work)
    git.run("commit", "-q", "-m", "big", cwd=work)
    git.run(*fast, "push", "-q", repo_url(net, "alice/big"), "main", cwd=work)
    return "alice/big", git.run("rev-parse", "HEAD", cwd=work).stdout.strip()


def _pkt(line: str) -> bytes:
    data = line.encode()
    return b"%04x" % (len(data) + 4) + data


def _basic(net: Devnet) -> str:
    return base64.b64encode(f"alice:{net.user_token('alice')}".encode()).decode()


def _node_git(net: Devnet) -> list[int]:
    return git_children(net.nodes["fra-1"].process.popen.pid)


def test_http_client_that_stops_reading_is_cut_and_the_nodes_git_ends(
    net: Devnet, edge: EdgeHandle, big_repo: tuple[str, str]
) -> None:
    name, head = big_repo
    assert edge.http_url is not None and not _node_git(net)
    body = _pkt(f"want {head}\n") + b"0000" + _pkt("done\n")
    request = (
        f"POST /{name}.git/git-upload-pack HTTP/1.1\r\nHost: edge\r\n"
        f"Authorization: Basic {_basic(net)}\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        # A small receive window, so that the edge's writes block soon.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.41", 0))
        sock.settimeout(20)
        sock.connect(_host_port(edge.http_url))
        sock.sendall(request)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        # Now the client stops reading, with git writing its pack on the node.
        poll(10, lambda: _node_git(net), "git upload-pack on the node")
        poll(15, lambda: not _node_git(net), "git on the node to end")
        received = len(_read_all(sock))  # the edge has closed: what was in flight, then EOF
    assert received < 16 * 2**20, "the whole pack arrived: the client was not cut"
    assert "WriteTimeout" in edge.process.log_tail(200)


def test_ssh_client_that_stops_reading_is_cut_and_the_nodes_git_ends(
    net: Devnet, edge: EdgeHandle, big_repo: tuple[str, str], tmp_path: Path
) -> None:
    name, head = big_repo
    assert not _node_git(net)
    ssh = shlex.split(ssh_git_command(net, tmp_path))
    client = subprocess.Popen(
        [*ssh, "-p", str(edge.ssh_port), "git@127.0.0.1", f"git-upload-pack '{name}.git'"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert client.stdin is not None and client.stdout is not None
    try:
        assert head.encode() in _read_advert(client.stdout.fileno())
        client.stdin.write(_pkt(f"want {head}\n") + b"0000" + _pkt("done\n"))
        client.stdin.flush()
        # From here nothing reads ssh's stdout: its pipe fills, ssh stops opening
        # the channel's window, and the edge's writes wait.
        poll(10, lambda: _node_git(net), "git upload-pack on the node")
        poll(15, lambda: not _node_git(net), "git on the node to end")
        # The edge aborted the connection: ssh exits once it has written what it had.
        while os.read(client.stdout.fileno(), 2**20):
            pass
        assert client.wait(timeout=15) != 0
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    assert "took no output" in edge.process.log_tail(200)


def test_request_body_that_trickles_is_cut_and_the_nodes_git_ends(
    net: Devnet, edge: EdgeHandle, big_repo: tuple[str, str]
) -> None:
    """The issue's attack: `Content-Length: 100000000`, then a byte at a time,
    each well inside body_idle_timeout (300 s): the rate floor cuts it."""
    name, head = big_repo
    assert edge.http_url is not None and not _node_git(net)
    head_bytes = (
        f"POST /{name}.git/git-upload-pack HTTP/1.1\r\nHost: edge\r\n"
        f"Authorization: Basic {_basic(net)}\r\n"
        "Content-Type: application/x-git-upload-pack-request\r\n"
        "Content-Length: 100000000\r\n\r\n"
    ).encode()
    trickle = _pkt(f"want {head}\n")
    seen_git = False
    with _connect(_host_port(edge.http_url), "127.0.0.51") as sock:
        sock.sendall(head_bytes)
        sock.settimeout(0.2)  # the attacker's pace: a byte per 0.2 s, 5 B/s
        answer = b""
        deadline = time.monotonic() + 20
        for byte in trickle:
            assert time.monotonic() < deadline, "the trickle was not cut"
            seen_git = seen_git or bool(_node_git(net))
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if answer:
                break
        else:
            pytest.fail("the whole want line went through: the trickle was not cut")
    assert seen_git, "the attack never reached git on the node"
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    poll(10, lambda: not _node_git(net), "git on the node to end")
