"""PROXY protocol on the edge's listeners, with real git, OpenSSH and TLS clients.

One edge of the module's network listens with `proxy_protocol = "required"` on
[https] and [ssh] and "optional" on [http], trusting only 127.0.0.2 (which
plays the load balancer: tests/e2e/proxy_relay.py connects from it and writes
the header). Its requests to node fra-1 pass through a tap, so the test sees
the X-Forwarded-For the node gets.
"""

from __future__ import annotations

import shlex
import socket
import ssl
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest

from devnet.network import Devnet, EdgeHandle
from edge.proto.proxy_header import encode_v1, encode_v2
from tests.e2e.conftest import Git, create_repo, poll, repo_url, ssh_git_command, tls
from tests.e2e.proxy_relay import HeaderRelay

RELAY = Path(__file__).with_name("proxy_relay.py")
BALANCER = "127.0.0.2"


def _port(url: str) -> int:
    return int(url.rpartition(":")[2])


@pytest.fixture(scope="module")
def tap(net: Devnet) -> Iterator[HeaderRelay]:
    node = net.nodes["fra-1"].http_url.removeprefix("http://")
    host, _, port = node.rpartition(":")
    relay = HeaderRelay((host, int(port)), source="127.0.0.1")
    yield relay
    relay.close()


@pytest.fixture(scope="module")
def edge(net: Devnet, tap: HeaderRelay) -> EdgeHandle:
    options = "\n".join(
        [
            'proxy_protocol = "{mode}"',
            f'proxy_protocol_from = ["{BALANCER}/32"]',
            "proxy_protocol_timeout = 2.0",
        ]
    )
    handle = net.start_edge(
        "fra",
        http=True,
        listener_options=options.replace("{mode}", "required"),
        extra=f'[nodes.dial]\n"fra-1" = {{ http = "127.0.0.1:{tap.port}" }}',
    )
    # [http] is "optional" (the second listener table): rewrite and restart it.
    text = handle.config_path.read_text()
    head, http_table, rest = text.partition("[http]")
    table, ssh, tail = rest.partition("[ssh]")
    table = table.replace('"required"', '"optional"')
    handle.config_path.write_text(head + http_table + table + ssh + tail)
    return net.restart_edge(handle)


@pytest.fixture(scope="module")
def repo(net: Devnet) -> str:
    assert create_repo(net, "alice/proxied", region="fra").status_code == 201
    return "alice/proxied"


def _closed(sock: socket.socket) -> bool:
    """The edge closed without a byte of answer (an RST when our bytes were left unread)."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


def _edge_log(edge: EdgeHandle) -> str:
    return edge.process.log_path.read_text(errors="replace")


def _logged(edge: EdgeHandle, line: str) -> bool | None:
    return line in _edge_log(edge) or None


def test_https_clone_behind_a_v1_header_uses_the_client_address(
    net: Devnet, edge: EdgeHandle, tap: HeaderRelay, repo: str, git: Git, tmp_path: Path
) -> None:
    header = encode_v1(("203.0.113.7", 50123), ("127.0.0.1", _port(edge.https_url)))
    relay = HeaderRelay(("127.0.0.1", _port(edge.https_url)), header)
    try:
        url = repo_url(net, repo, edge_url=f"https://127.0.0.1:{relay.port}")
        git.run("clone", "-q", url, str(tmp_path / "clone"))
    finally:
        relay.close()
    poll(5, lambda: "203.0.113.7 GET /alice/proxied.git/info/refs" in _edge_log(edge) or None)
    assert b"x-forwarded-for: 203.0.113.7\r\n" in tap.upstream_bytes
    assert b"x-forwarded-for: 127.0.0.2" not in tap.upstream_bytes


def test_https_clone_behind_a_v2_header(
    net: Devnet, edge: EdgeHandle, tap: HeaderRelay, repo: str, git: Git, tmp_path: Path
) -> None:
    header = encode_v2(("2001:db8::7", 50123), ("::1", 443), tlvs=((0x05, b"lb-id-1"),))
    relay = HeaderRelay(("127.0.0.1", _port(edge.https_url)), header)
    try:
        url = repo_url(net, repo, edge_url=f"https://127.0.0.1:{relay.port}")
        git.run("clone", "-q", url, str(tmp_path / "clone"))
    finally:
        relay.close()
    poll(
        5, lambda: "2001:db8::7 POST /alice/proxied.git/git-upload-pack" in _edge_log(edge) or None
    )
    assert b"x-forwarded-for: 2001:db8::7\r\n" in tap.upstream_bytes


def test_ssh_clone_behind_a_v2_header_logs_the_client_address(
    net: Devnet, edge: EdgeHandle, repo: str, git: Git, tmp_path: Path
) -> None:
    ssh = ssh_git_command(net, tmp_path)
    header = encode_v2(("198.51.100.23", 40222), ("127.0.0.1", edge.ssh_port))
    proxy = shlex.join(
        [sys.executable, str(RELAY), "--header-hex", header.hex(), "--source", BALANCER, "%h", "%p"]
    )
    command = f"{ssh} -o {shlex.quote('ProxyCommand=' + proxy)}"
    url = f"ssh://git@127.0.0.1:{edge.ssh_port}/{repo}.git"
    git.run("clone", "-q", url, str(tmp_path / "clone"), GIT_SSH_COMMAND=command)
    assert "SSH alice authenticated from 198.51.100.23" in _edge_log(edge)


def test_required_without_a_header_is_closed(net: Devnet, edge: EdgeHandle) -> None:
    with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)):
        httpx.get(f"{edge.https_url}/healthz", verify=tls(net), timeout=10)
    # SSH: not a byte of banner for a client that sends none (the edge never speaks first).
    with socket.create_connection(("127.0.0.1", edge.ssh_port), timeout=10) as sock:
        sock.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        assert _closed(sock)
    # The balancer itself, forgetting the header: its ClientHello is not one.
    port = _port(edge.https_url)
    with (
        socket.create_connection(
            ("127.0.0.1", port), timeout=10, source_address=(BALANCER, 0)
        ) as raw,
        pytest.raises((ssl.SSLError, ConnectionResetError)),
    ):
        tls(net).wrap_socket(raw, server_hostname="127.0.0.1")
    for line in (
        "https 127.0.0.1 - connection closed: PROXY header required, peer not in",
        "ssh 127.0.0.1 - connection closed: PROXY header required, peer not in",
        "https 127.0.0.2 - connection closed: no PROXY header",
    ):
        poll(5, partial(_logged, edge, line), line)


def test_header_from_an_untrusted_peer_is_refused(net: Devnet, edge: EdgeHandle) -> None:
    assert edge.http_url is not None
    port = _port(edge.http_url)
    request = b"GET /healthz HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n"
    # [http] is optional: a direct client without a header is served...
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
    # ...the balancer's LOCAL health check too...
    balancer = socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(BALANCER, 0)
    )
    with balancer:
        balancer.sendall(encode_v2(None) + request)
        assert balancer.recv(100).startswith(b"HTTP/1.1 200")
    # ...but a header from anyone else is a forged client address: closed.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(encode_v1(("203.0.113.66", 1), ("127.0.0.1", port)) + request)
        assert _closed(sock)
    line = "http 127.0.0.1 - connection closed: PROXY header from a peer not in proxy_protocol_from"
    poll(5, lambda: line in _edge_log(edge) or None)
    assert "203.0.113.66" not in _edge_log(edge)


def test_tls_after_the_header_is_not_disturbed(net: Devnet, edge: EdgeHandle) -> None:
    """The header and the ClientHello in one segment: the edge takes the header only."""
    port = _port(edge.https_url)
    ctx: ssl.SSLContext = tls(net)
    raw = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(BALANCER, 0))
    raw.sendall(encode_v1(("192.0.2.99", 7), ("127.0.0.1", port)))
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: edge\r\nconnection: close\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 200")
    poll(5, lambda: "192.0.2.99 GET /healthz" in _edge_log(edge) or None)
