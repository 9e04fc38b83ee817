"""A node with `[tls]`: HTTPS on its listener, a certificate made once and kept,
and the certificate's SHA-256 published in its etcd record for edges to pin."""

from __future__ import annotations

import base64
import hashlib
import ssl
import stat
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from node.app import NodeRuntime, run_node
from node.config import ConfigError, NodeConfig, load_node_config
from plumbing.tlscerts import cert_sha256
from routing.etcd import EtcdClient
from routing.schema import decode_node
from tests.node.conftest import ADMIN_SECRET, ConfigFactory, tls_table
from tests.node.gitutil import git


def _insecure_client() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _trusting(cert_file: Path) -> ssl.SSLContext:
    """A client that trusts exactly this certificate (no host name: it names none)."""
    ctx = ssl.create_default_context(cafile=str(cert_file))
    ctx.check_hostname = False
    return ctx


async def _served_certificate(url: str) -> bytes:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    tcp = await trio.open_tcp_stream(host, int(port))
    tls = trio.SSLStream(tcp, _insecure_client())
    try:
        await tls.do_handshake()
        der = tls.getpeercert(binary_form=True)
    finally:
        await trio.aclose_forcefully(tls)
    assert isinstance(der, bytes)
    return der


def _spki_pin(cert_file: Path) -> str:
    """git's (curl's) http.pinnedPubkey form of the certificate's public key."""
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256//" + base64.b64encode(hashlib.sha256(spki).digest()).decode()


async def _start(nursery: trio.Nursery, config: NodeConfig) -> NodeRuntime:
    with trio.fail_after(20):
        runtime: NodeRuntime = await nursery.start(run_node, config)
    return runtime


async def test_tls_node_serves_https_and_publishes_the_served_certificates_pin(
    make_config: ConfigFactory, etcd: EtcdClient, nursery: trio.Nursery
) -> None:
    config = make_config(tls=True)
    assert config.tls is not None
    assert not config.tls.cert_file.exists()  # made by the node on its first start
    runtime = await _start(nursery, config)
    assert runtime.http_url.startswith("https://127.0.0.1:")
    with trio.fail_after(10):
        kv = await etcd.get(config.keys.node("fra-1"))
        served = cert_sha256(await _served_certificate(runtime.http_url))
    assert kv is not None
    record = decode_node(kv.value)
    assert record.http_url == runtime.http_url
    assert record.tls_cert_sha256 == served == runtime.tls_cert_sha256
    assert stat.S_IMODE(config.tls.key_file.stat().st_mode) == 0o600
    # The pin is the certificate file's: what an operator compares by hand.
    der = ssl.PEM_cert_to_DER_cert(config.tls.cert_file.read_text())
    assert cert_sha256(der) == served


async def test_plain_node_publishes_no_pin(
    make_config: ConfigFactory, etcd: EtcdClient, nursery: trio.Nursery
) -> None:
    config = make_config()
    runtime = await _start(nursery, config)
    assert runtime.http_url.startswith("http://") and runtime.tls_cert_sha256 is None
    with trio.fail_after(10):
        kv = await etcd.get(config.keys.node("fra-1"))
    assert kv is not None and decode_node(kv.value).tls_cert_sha256 is None
    assert b"tls_cert_sha256" not in kv.value


async def test_real_git_pushes_and_clones_over_the_nodes_tls(
    make_config: ConfigFactory, nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = make_config(tls=True)
    assert config.tls is not None
    runtime = await _start(nursery, config)
    async with httpx.AsyncClient(verify=_trusting(config.tls.cert_file)) as client:
        created = await client.post(
            f"{runtime.http_url}/_gitedge/repos",
            json={"name": "alice/tls"},
            headers={"authorization": f"Bearer {ADMIN_SECRET}"},
        )
    assert created.status_code == 201, created.text
    home, work = tmp_path / "home", tmp_path / "work"
    url = f"{runtime.http_url}/alice/tls.git"
    # git checks the node's key itself: no CA, the pinned public key only.
    pinned = [
        "-c",
        "http.sslVerify=false",
        "-c",
        f"http.pinnedPubkey={_spki_pin(config.tls.cert_file)}",
        "-c",
        f"http.extraHeader=authorization: Bearer {ADMIN_SECRET}",
    ]
    await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
    (work / "README").write_text("over TLS\n")
    await git("add", "README", cwd=work, home=home)
    await git("commit", "-q", "-m", "first", cwd=work, home=home)
    head = await git("rev-parse", "HEAD", cwd=work, home=home)
    await git(*pinned, "push", "-q", url, "main", cwd=work, home=home)
    await git(*pinned, "clone", "-q", url, str(tmp_path / "clone"), cwd=tmp_path, home=home)
    assert await git("rev-parse", "HEAD", cwd=tmp_path / "clone", home=home) == head
    # The same git with another key pinned refuses the node: it did speak TLS.
    wrong = [*pinned[:3], "http.pinnedPubkey=sha256//" + base64.b64encode(b"x" * 32).decode()]
    with pytest.raises(AssertionError, match="exited"):
        await git(*wrong, "ls-remote", url, cwd=tmp_path, home=home)


async def test_certificate_is_made_once_and_kept_across_restarts(
    make_config: ConfigFactory,
) -> None:
    config = make_config(tls=True)
    pins = []
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            runtime = await _start(nursery, config)
            pins.append(runtime.tls_cert_sha256)
            nursery.cancel_scope.cancel()
    assert pins[0] is not None and pins[0] == pins[1]


async def test_an_operators_certificate_is_served_and_pinned(
    make_config: ConfigFactory, nursery: trio.Nursery
) -> None:
    config = make_config(tls=True)
    assert config.tls is not None
    issued = trustme.CA().issue_cert("fra-1.internal")
    issued.cert_chain_pems[0].write_to_path(str(config.tls.cert_file))
    issued.private_key_pem.write_to_path(str(config.tls.key_file))
    runtime = await _start(nursery, config)
    expected = cert_sha256(ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode()))
    assert runtime.tls_cert_sha256 == expected
    with trio.fail_after(10):
        assert cert_sha256(await _served_certificate(runtime.http_url)) == expected


async def test_plain_http_to_the_tls_port_is_dropped_and_the_node_serves_on(
    make_config: ConfigFactory, nursery: trio.Nursery
) -> None:
    config = make_config(tls=True)
    assert config.tls is not None
    runtime = await _start(nursery, config)
    host, port = runtime.http_url.removeprefix("https://").rsplit(":", 1)
    with trio.fail_after(10):
        plain = await trio.open_tcp_stream(host, int(port))
        await plain.send_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = b""
        try:
            while data := await plain.receive_some(65536):
                answer += data
        except trio.BrokenResourceError:
            pass  # reset: also not an answer
        await plain.aclose()
    assert b"HTTP/1.1" not in answer  # at most a TLS alert, never an HTTP answer
    async with httpx.AsyncClient(verify=_trusting(config.tls.cert_file)) as client:
        healthy = await client.get(f"{runtime.http_url}/healthz")
    assert healthy.status_code == 200


@pytest.mark.parametrize(
    ("tls", "advertise", "complaint"),
    [
        (True, "http://10.0.0.5:9001", "https:// URL with [tls]"),
        (False, "https://10.0.0.5:9001", "http:// URL without [tls]"),
    ],
)
def test_advertised_scheme_must_match_tls(
    tmp_path: Path, tls: bool, advertise: str, complaint: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        f"""[node]
id = "fra-1"
region = "fra"
volume_dir = "{tmp_path / "vol"}"
advertise_url = "{advertise}"
admin_secret = "s"
{tls_table(tmp_path, "fra-1") if tls else ""}"""
    )
    with pytest.raises(ConfigError, match="advertise_url") as info:
        load_node_config(path)
    assert complaint in str(info.value)


def test_tls_table_needs_both_files(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nid = "fra-1"\nregion = "fra"\nvolume_dir = "{tmp_path}"\nadmin_secret = "s"\n'
        '[tls]\ncert_file = "c.pem"\n'
    )
    with pytest.raises(ConfigError, match=r"\[tls\]: key_file: is required"):
        load_node_config(path)
