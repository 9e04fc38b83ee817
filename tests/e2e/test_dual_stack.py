"""The production example config takes IPv4 and IPv6 clients on every listener.

Regression: its `listen = "[::]:443"` and `"[::]:22"` bound IPv6 only (trio and
asyncio set IPV6_V6ONLY), so `git clone https://127.0.0.1/...` could not
connect. The example is started as it is, with only its ports (0: free ports)
and file paths (a temp dir) substituted, and each listener is reached at
127.0.0.1 and at ::1.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme

from devnet.procs import EtcdServer, has_ipv6_loopback, spawn, start_etcd, wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "configs" / "edge.production.toml"


def _substitute(text: str, pattern: str, replacement: str) -> str:
    """re.sub that fails when the example no longer has what the test replaces."""
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count, f"the production example has no {pattern!r} any more"
    return new


@dataclass
class ProductionEdge:
    ready: dict[str, Any]
    ca: trustme.CA
    log: Path


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = start_etcd(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def production_edge(
    tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer
) -> Iterator[ProductionEdge]:
    tmp_path = tmp_path_factory.mktemp("production")
    etc = tmp_path / "etc"
    (etc / "tls").mkdir(parents=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    cert.cert_chain_pems[0].write_to_path(str(etc / "tls" / "fullchain.pem"))
    cert.private_key_pem.write_to_path(str(etc / "tls" / "privkey.pem"))
    for name in ("admin-token", "node-admin-secret"):
        (etc / name).write_text(secrets.token_urlsafe(32))
    text = EXAMPLE.read_text()
    assert 'listen = "[::]:443"' in text and 'listen = "[::]:22"' in text
    text = _substitute(text, r'^(listen = "\[::\]):\d+"', r'\1:0"')
    text = _substitute(text, r"/etc/gitedge/", f"{etc}/")
    # This test's etcd is a plain single member: no TLS, no users (tests/e2e/test_etcd_cluster.py
    # covers those).
    text = _substitute(
        text, r"^(ca_file|cert_file|key_file|username|password_file) = .*/etcd/.*\n", ""
    )
    text = _substitute(text, r'^username = "gitedge"\n', "")
    text = _substitute(text, r"^endpoints = .*$", f"endpoints = {json.dumps([etcd.url])}")
    # Its admin listener (/metrics) has a fixed loopback port: any free one here.
    text = _substitute(text, r'^listen = "127\.0\.0\.1:9464"', 'listen = "127.0.0.1:0"')
    config = tmp_path / "edge.toml"
    config.write_text(text)
    ready_file = tmp_path / "edge.ready.json"
    argv = [sys.executable, "-m", "edge.cli", "edge", "--config", str(config)]
    proc = spawn("edge", [*argv, "--ready-file", str(ready_file)], tmp_path / "logs")
    try:
        wait_until(proc, ready_file.exists, 30, "ready file")
        yield ProductionEdge(json.loads(ready_file.read_text()), ca, proc.log_path)
    finally:
        proc.stop()


def _port(address: str) -> int:
    host, _, port = address.rpartition(":")
    assert host == "[::]", f"the example listens on [::], the edge bound {address}"
    return int(port)


def _https_get(ca: trustme.CA, host: str, port: int) -> bytes:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with (
        socket.create_connection((host, port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: git.example.com\r\nConnection: close\r\n\r\n")
        return tls.recv(4096)


def _ssh_banner(host: str, port: int) -> bytes:
    with socket.create_connection((host, port), timeout=10) as sock:
        return sock.makefile("rb").readline()


NO_IPV6 = pytest.mark.skipif(
    not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1 cannot be bound)"
)


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=NO_IPV6)])
def test_production_example_listens_on_both_families(
    production_edge: ProductionEdge, host: str
) -> None:
    listening = production_edge.ready["listening"]
    assert set(listening) == {"https", "ssh", "admin"}
    for address in listening["https"]:
        answer = _https_get(production_edge.ca, host, _port(address))
        assert answer.startswith(b"HTTP/1.1 200 "), (host, answer)
    for address in listening["ssh"]:
        assert _ssh_banner(host, _port(address)).startswith(b"SSH-2.0-"), host
    # IPv4 clients arrive as ::ffff:127.0.0.1 on the dual-stack socket; the log
    # (and the trusted-proxy check) see the address the client has.
    log = production_edge.log.read_text()
    # (The example logs JSON lines: logger and message are fields of one line.)
    access = rf'edge\.access"?[:,].*?{re.escape(host)} GET /healthz HTTP/1.1 200 '
    assert re.search(access, log), log
    assert "::ffff:" not in log


@pytest.fixture(scope="module")
def dual_stack_node(
    tmp_path_factory: pytest.TempPathFactory, etcd: EtcdServer
) -> Iterator[dict[str, Any]]:
    """A node with `listen = "[::]:0"`, as a production node on a dual-stack host."""
    tmp_path = tmp_path_factory.mktemp("node")
    (tmp_path / "secret").write_text(secrets.token_urlsafe(32))
    config = tmp_path / "node.toml"
    config.write_text(
        "\n".join(
            [
                "[node]",
                'id = "fra-9"',
                'region = "fra"',
                f"volume_dir = {json.dumps(str(tmp_path / 'volume'))}",
                'listen = "[::]:0"',
                'advertise_url = "http://node.fra.internal:9001"',
                f"admin_secret_file = {json.dumps(str(tmp_path / 'secret'))}",
                "[etcd]",
                f"endpoints = {json.dumps([etcd.url])}",
                "",
            ]
        )
    )
    ready_file = tmp_path / "node.ready.json"
    argv = [sys.executable, "-m", "edge.cli", "node", "--config", str(config)]
    proc = spawn("node", [*argv, "--ready-file", str(ready_file)], tmp_path / "logs")
    try:
        wait_until(proc, ready_file.exists, 30, "ready file")
        yield json.loads(ready_file.read_text())
    finally:
        proc.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=NO_IPV6)])
def test_a_node_on_the_wildcard_takes_both_families(
    dual_stack_node: dict[str, Any], host: str
) -> None:
    port = _port(dual_stack_node["listening"])
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: node\r\nConnection: close\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 "), host
