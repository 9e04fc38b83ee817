"""Replication between nodes that serve HTTPS: each pins its peers' certificates from
etcd (node/peer_tls.py), as edges do; no CA, no host name, and no one else gets the
node credential."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import trio

from devnet.network import Devnet, start_devnet
from node.peer_tls import PeerCerts, PeerTlsError, git_config
from routing.model import NodeId, NodeRecord
from routing.schema import DEFAULT_PREFIX, Keys, decode_node
from tests.e2e.conftest import Git, poll, repo_url, tls


@pytest.fixture(scope="module")
def tls_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    with start_devnet(
        tmp_path_factory.mktemp("tlsnet"), ("fra", "lax"), lease_ttl=3, tls_regions=("fra", "lax")
    ) as network:
        yield network


@pytest.fixture
def git(tmp_path: Path, tls_net: Devnet) -> Git:
    home = tmp_path / "home"
    home.mkdir()
    return Git(home, tls_net.ca_file)


def _repo(net: Devnet, name: str) -> httpx.Response:
    return httpx.get(
        f"{net.edge.https_url}/api/repos/{name}",
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
        timeout=30,
    )


def test_a_push_replicates_between_tls_nodes(tls_net: Devnet, git: Git, tmp_path: Path) -> None:
    assert all(n.http_url.startswith("https://") for n in tls_net.nodes.values())
    made = httpx.post(
        f"{tls_net.edge.https_url}/api/repos",
        json={"name": "alice/secure", "replicas": 2, "sync_replicas": 2},
        auth=("alice", tls_net.user_token("alice")),
        verify=tls(tls_net),
        timeout=30,
    )
    assert made.status_code == 201, made.text
    work = git.new_worktree(tmp_path / "w")
    head = git.commit(work, "a.txt", b"one\n")
    # W=2: the push succeeds only if the objects reached the other node over TLS.
    git.run("push", "-q", repo_url(tls_net, "alice/secure"), "main", cwd=work)

    def both_in_sync() -> bool:
        replicas = _repo(tls_net, "alice/secure").json()["replicas"]
        return len(replicas) == 2 and all(r["state"] == "in-sync" for r in replicas)

    poll(20, both_in_sync, "both replicas in sync")
    for node in tls_net.nodes.values():
        bare = node.volume_dir / "alice/secure.git"
        assert git.run("rev-parse", "refs/heads/main", cwd=bare).stdout.strip() == head


def _published(net: Devnet, node_id: str) -> NodeRecord:
    """The node's record as it published it in etcd (its pin included)."""
    key = base64.b64encode(Keys(DEFAULT_PREFIX).node(NodeId(node_id)).encode()).decode()
    got = httpx.post(f"{net.etcd.url}/v3/kv/range", json={"key": key}, timeout=10)
    got.raise_for_status()
    return decode_node(base64.b64decode(got.json()["kvs"][0]["value"]))


async def test_a_peer_certificate_counts_only_if_it_is_the_pinned_one(tls_net: Devnet) -> None:
    record = _published(tls_net, "fra-1")
    assert record.tls_cert_sha256 and record.http_url.startswith("https://")
    certs = PeerCerts()
    peer = await certs.get(record)
    assert peer is not None and peer.pinned_pubkey.startswith("sha256//")
    assert ("http.pinnedPubkey", peer.pinned_pubkey) in git_config(peer)
    # The context trusts exactly that certificate: a request to the node verifies.
    context = peer.ssl_context()
    got = await trio.to_thread.run_sync(
        lambda: httpx.get(f"{record.http_url}/healthz", verify=context, timeout=10)
    )
    assert got.status_code == 200
    # lax-1's certificate is not fra-1's: pinned elsewhere, refused.
    with pytest.raises(PeerTlsError, match="is not the pinned"):
        await PeerCerts().get(replace(record, tls_cert_sha256="0" * 64))
    with pytest.raises(PeerTlsError, match="publishes no certificate pin"):
        await PeerCerts().get(replace(record, tls_cert_sha256=None))
    plain = replace(record, http_url="http://127.0.0.1:9", tls_cert_sha256=None)
    assert await certs.get(plain) is None  # plain HTTP: nothing to pin
