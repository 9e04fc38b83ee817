"""What users see when parts of the network fail: fast, clear, nothing lost."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from devnet.network import Devnet, start_devnet
from tests.e2e.conftest import Git, api_get, create_repo, poll, raw_exchange, repo_url, tls


def test_dead_node_is_503_fast_and_leaves_placement(net: Devnet, git: Git, tmp_path: Path) -> None:
    node = net.start_node("ber-1", "ber", lease_ttl=2)
    assert create_repo(net, "carol/doomed", region="ber").status_code == 201
    node.process.kill()  # SIGKILL: no clean lease revoke

    started = time.monotonic()
    proc = git.run("clone", repo_url(net, "carol/doomed"), str(tmp_path / "d"), check=False)
    assert proc.returncode != 0
    assert "503" in proc.stderr
    assert time.monotonic() - started < 5

    # Until the lease expires a create may still pick ber-1: its init fails and
    # the record is rolled back. After expiry the region has no live volume.
    def no_live_volume() -> bool:
        response = create_repo(net, "carol/next", region="ber")
        assert response.status_code == 503, response.text
        return "no live volume in region 'ber'" in response.text

    poll(15, no_live_volume)
    where = api_get(net, "/api/repos/carol/next", user="carol")
    assert where.status_code == 404
    assert not (node.volume_dir / "carol" / "next.git").exists()


def test_concurrent_creates_through_two_edges(net: Devnet) -> None:
    second = net.start_edge("fra")
    urls = [net.edge.https_url, second.https_url]
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda u: create_repo(net, "dave/race", "lax", u), urls))
    assert sorted(r.status_code for r in responses) == [201, 409]


def test_slow_headers_get_408(net: Devnet) -> None:
    edge = net.start_edge("fra", extra="[limits]\nheader_timeout = 0.5")
    # No blank line: the head never ends.
    answer = raw_exchange(edge.https_url, net.ca_file, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408")


def test_etcd_down_known_repos_route_creates_fail(tmp_path: Path) -> None:
    with start_devnet(tmp_path / "net", lease_ttl=3) as net:
        git = Git(tmp_path, net.ca_file)
        assert create_repo(net, "erin/kept", region="lax").status_code == 201
        work = git.new_worktree(tmp_path / "w")
        head = git.commit(work, "a", b"a\n")
        git.run("push", "-q", repo_url(net, "erin/kept"), "main", cwd=work)

        net.etcd.stop()
        git.run("clone", "-q", repo_url(net, "erin/kept"), str(tmp_path / "c"))
        assert git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == head
        response = create_repo(net, "erin/new", region="lax")
        assert response.status_code == 503
        poll(
            20,
            lambda: httpx.get(f"{net.edge.https_url}/readyz", verify=tls(net)).status_code == 503,
        )


def test_region_header_ignored_from_untrusted_peer(net: Devnet) -> None:
    # Loopback is not a trusted proxy for this edge: Fly-Region must not count,
    # and the internal counters are not shown.
    edge = net.start_edge("fra", edge_options='trusted_proxies = ["192.0.2.0/24"]')
    created = create_repo(net, "frank/placed", region="lax", edge_url=edge.https_url)
    assert created.status_code == 201, created.text
    assert created.json()["region"] == "fra"
    stats = httpx.get(f"{edge.https_url}/_gitedge/stats", verify=tls(net))
    assert stats.status_code == 404
