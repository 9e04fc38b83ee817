"""Edge -> node TLS with the node's certificate pinned from etcd, end to end:
stock git, real edges and nodes as processes, a real etcd.

The network: fra-1 (plain http), lax-1 (TLS), syd-1 (plain http), and the
devnet's own edge in fra with `require_tls = "never"` to create repositories.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio

from devnet.network import Devnet, EdgeHandle, start_devnet
from plumbing.tls import SocketTLSStream
from plumbing.tlscerts import load_or_create_cert
from routing.etcd import EtcdClient
from routing.schema import Keys, decode_node
from tests.e2e.conftest import Git, create_repo, repo_url, tls

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    work = tmp_path_factory.mktemp("net")
    with start_devnet(work, ("fra", "lax", "syd"), lease_ttl=3, tls_regions=("lax",)) as network:
        yield network


@pytest.fixture(scope="module")
def repos(net: Devnet, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One repository with one commit on each node: region -> its HEAD."""
    git = Git(tmp_path_factory.mktemp("home"), net.ca_file)
    heads = {}
    for region in ("fra", "lax", "syd"):
        name = f"alice/in-{region}"
        created = create_repo(net, name, region=region)
        assert created.status_code == 201, created.text
        assert created.json()["node"] == f"{region}-1"
        work = git.new_worktree(tmp_path_factory.mktemp(f"work-{region}"))
        heads[region] = git.commit(work, "README", f"hello from {region}\n".encode())
        git.run("push", "-q", repo_url(net, name), "main", cwd=work)
    return heads


@pytest.fixture
def git(tmp_path: Path, net: Devnet) -> Git:
    home = tmp_path / "home"
    home.mkdir()
    return Git(home, net.ca_file)


def _clone(git: Git, net: Devnet, edge: EdgeHandle, region: str, dest: Path) -> str:
    """git's stderr on failure, "" on success."""
    url = repo_url(net, f"alice/in-{region}", edge_url=edge.https_url)
    proc = git.run("clone", "-q", url, str(dest), check=False)
    return "" if proc.returncode == 0 else proc.stderr


def _stats(edge: EdgeHandle, net: Devnet) -> dict[str, object]:
    answer = httpx.get(f"{edge.https_url}/_gitedge/stats", verify=tls(net), timeout=10)
    answer.raise_for_status()
    stats: dict[str, object] = answer.json()
    return stats


def test_the_tls_node_publishes_an_https_url_and_the_pin_of_what_it_serves(net: Devnet) -> None:
    lax = net.nodes["lax-1"]
    assert lax.http_url.startswith("https://") and lax.tls_cert_sha256
    assert net.nodes["fra-1"].http_url.startswith("http://")
    assert net.nodes["fra-1"].tls_cert_sha256 is None

    async def published() -> tuple[str, str | None]:
        async with EtcdClient(net.etcd.url) as etcd:
            kv = await etcd.get(Keys().node("lax-1"))
        assert kv is not None
        record = decode_node(kv.value)
        return record.http_url, record.tls_cert_sha256

    assert trio.run(published) == (lax.http_url, lax.tls_cert_sha256)


def test_push_and_clone_through_the_edge_to_a_tls_node(
    net: Devnet, repos: dict[str, str], git: Git, tmp_path: Path
) -> None:
    # `repos` created alice/in-lax through the edge (its init went over the
    # pinned TLS connection) and pushed to it; now clone and fetch it back.
    for version in ("0", "2"):
        dest = tmp_path / f"clone-v{version}"
        url = repo_url(net, "alice/in-lax")
        git.run("-c", f"protocol.version={version}", "clone", "-q", url, str(dest))
        assert git.run("rev-parse", "HEAD", cwd=dest).stdout.strip() == repos["lax"]
    work = tmp_path / "clone-v2"
    second = git.commit(work, "NEWS", b"more\n")
    git.run("push", "-q", "origin", "main", cwd=work)
    assert git.run("ls-remote", "origin", "main", cwd=work).stdout.split()[0] == second
    assert (net.nodes["lax-1"].volume_dir / "alice" / "in-lax.git" / "HEAD").is_file()


def test_the_default_policy_refuses_a_plain_node_in_another_region(
    net: Devnet, repos: dict[str, str], git: Git, tmp_path: Path
) -> None:
    edge = net.start_edge("fra", require_tls=None)  # [nodes] require_tls left at its default
    refused = _clone(git, net, edge, "syd", tmp_path / "syd")
    assert "503" in refused, refused
    assert _stats(edge, net)["node_connects"] == 0  # refused before dialling
    log = edge.process.log_path.read_text()
    assert "syd-1 (region syd) serves plain http" in log and "'other-regions'" in log
    # The same edge: a plain node in its own region, and a TLS node anywhere.
    assert _clone(git, net, edge, "fra", tmp_path / "fra") == ""
    assert _clone(git, net, edge, "lax", tmp_path / "lax") == ""
    assert (tmp_path / "lax" / "README").read_text() == "hello from lax\n"
    # Creates reach the node over the same pool, so the policy holds for them too.
    created = create_repo(net, "alice/far-plain", region="syd", edge_url=edge.https_url)
    assert created.status_code == 503, created.text
    assert not (net.nodes["syd-1"].volume_dir / "alice" / "far-plain.git").exists()


def test_always_refuses_every_plain_node_and_serves_tls_ones(
    net: Devnet, repos: dict[str, str], git: Git, tmp_path: Path
) -> None:
    edge = net.start_edge("fra", require_tls="always")
    assert "503" in _clone(git, net, edge, "fra", tmp_path / "fra")
    assert _clone(git, net, edge, "lax", tmp_path / "lax") == ""


class Impostor:
    """A TLS server with a certificate of its own; counts handshakes and plaintext."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.handshakes = 0
        self.received = b""

    async def handle(self, tcp: trio.SocketStream) -> None:
        stream = SocketTLSStream(tcp, self.context)
        try:
            with trio.fail_after(10):
                await stream.do_handshake()
                self.handshakes += 1
                while data := await stream.receive_some(65536):
                    self.received += data
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def test_a_node_whose_certificate_is_not_the_pin_gets_no_git_and_the_client_503(
    net: Devnet, repos: dict[str, str], git: Git, tmp_path: Path
) -> None:
    # What a hijacked route looks like: the edge reaches something else at
    # lax-1's address. [nodes.dial] sends it there; the record (URL and pin)
    # is still lax-1's own.
    cert_file, key_file = tmp_path / "impostor-cert.pem", tmp_path / "impostor-key.pem"
    impostor_pin = load_or_create_cert(cert_file, key_file, "gitedge node lax-1")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    impostor = Impostor(ctx)
    net.user_token("alice")  # blocking (an API call) the first time: before serving
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, impostor.handle, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        dial = f'[nodes.dial]\n"lax-1" = {{ http = "127.0.0.1:{port}" }}'
        edge = await trio.to_thread.run_sync(
            partial(net.start_edge, "fra", require_tls="always", extra=dial)
        )
        clone = await trio.run_process(
            ["git", "clone", "-q", repo_url(net, "alice/in-lax", edge_url=edge.https_url), "c"],
            cwd=tmp_path,
            env=git.env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        nursery.cancel_scope.cancel()
    assert clone.returncode != 0 and b"503" in clone.stderr, clone.stderr
    assert impostor.handshakes >= 1  # the edge did reach it and did TLS...
    assert impostor.received == b""  # ...and sent it nothing: no request, no credential
    log = edge.process.log_path.read_text()
    genuine_pin = net.nodes["lax-1"].tls_cert_sha256
    assert f"sha256 {impostor_pin} is not the pin in etcd ({genuine_pin})" in log
    stats = await trio.to_thread.run_sync(_stats, edge, net)
    assert stats["node_connects"] == 0
