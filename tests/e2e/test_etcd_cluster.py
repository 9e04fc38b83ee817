"""etcd in production: 3 real members with TLS client certificates and users.

One network for the module: a 3-member etcd cluster (HTTPS, client certificates
required, auth on, devnet/etcdcluster.py), node fra-1 and two edges, all
reaching etcd as user `gitedge` with the client certificate. Members are
killed with SIGKILL and started again from their data; every test leaves all
three running. No etcd member outlives the module (checked at teardown).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from devnet.etcdcluster import EtcdCluster, change_password, start_etcd_cluster
from devnet.network import Devnet, EdgeHandle, start_devnet
from devnet.procs import StartupError
from routing.etcd import EtcdClient
from routing.etcd_security import EtcdSecurity
from routing.schema import DEFAULT_PREFIX, Keys
from tests.e2e.conftest import Git, create_repo, gitedge, poll, repo_url, tls

CI = os.environ.get("CI") == "true"
# Clones before and after each kill: few under CI, more locally.
CLONES_AROUND_KILL = 3 if CI else 10


@pytest.fixture(scope="module")
def cluster_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    work = tmp_path_factory.mktemp("etcd-cluster")
    cluster = start_etcd_cluster(work / "etcd", 3, tls=True, auth=True)
    members = cluster.members
    try:
        with start_devnet(work, ("fra",), lease_ttl=3, etcd_cluster=cluster) as net:
            net.start_edge("fra")  # a second edge: "another path" for creates
            yield net
    finally:
        cluster.stop()
        for member in [*members, *cluster.members]:
            assert member.process.popen.poll() is not None, f"{member.process.name} outlived"


@pytest.fixture
def git(tmp_path: Path, cluster_net: Devnet) -> Git:
    home = tmp_path / "home"
    home.mkdir()
    return Git(home, cluster_net.ca_file)


def etcd(net: Devnet) -> EtcdCluster:
    assert net.etcd_cluster is not None
    return net.etcd_cluster


def stats(net: Devnet, edge: EdgeHandle) -> dict[str, object]:
    answer = httpx.get(f"{edge.https_url}/_gitedge/stats", verify=tls(net), timeout=10)
    answer.raise_for_status()
    result: dict[str, object] = answer.json()
    return result


def pushed_repo(net: Devnet, git: Git, tmp_path: Path, name: str) -> str:
    created = create_repo(net, name, region="fra")
    assert created.status_code == 201, created.text
    work = git.new_worktree(tmp_path / f"w-{name.replace('/', '-')}")
    head = git.commit(work, "a", b"a\n")
    git.run("push", "-q", repo_url(net, name), "main", cwd=work)
    return head


class CloneLoop:
    """Clones one repository over and over in a thread, counting every outcome."""

    def __init__(self, git: Git, url: str, head: str, where: Path) -> None:
        self._git, self._url, self._head, self._where = git, url, head, where
        self.ok = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        round_ = 0
        while not self._stop.is_set():
            round_ += 1
            target = self._where / f"c{round_}"
            proc = self._git.run("clone", "-q", self._url, str(target), check=False, timeout=60)
            if proc.returncode != 0:
                self.failures.append(proc.stderr)
                continue
            got = self._git.run("rev-parse", "HEAD", cwd=target, check=False).stdout.strip()
            if got != self._head:
                self.failures.append(f"cloned {got}, expected {self._head}")
            else:
                self.ok += 1

    def wait_for(self, clones: int) -> None:
        poll(120, lambda: self.ok >= clones or bool(self.failures), f"{clones} clones")

    def __enter__(self) -> CloneLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(90)


def test_tls_and_auth_are_required(cluster_net: Devnet, git: Git, tmp_path: Path) -> None:
    net, cluster = cluster_net, etcd(cluster_net)
    # The edges and the node of the fixture reach etcd with certificate + password.
    head = pushed_repo(net, git, tmp_path, "alice/secure")
    git.run("clone", "-q", repo_url(net, "alice/secure"), str(tmp_path / "c"))
    assert git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == head

    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password\n")
    refusals = {
        "no client certificate": cluster.toml_lines(cert=False),
        "wrong password": cluster.toml_lines(password_file=wrong),
    }
    for what, lines in refusals.items():
        with pytest.raises(StartupError) as edge_failed:
            net.start_edge("fra", etcd_table=lines, timeout=20)
        with pytest.raises(StartupError) as node_failed:
            net.start_node(f"fra-x{len(what)}", "fra", etcd_table=lines, timeout=20)
        for failed in (edge_failed, node_failed):
            text = str(failed.value)
            assert "exited with 1" in text, (what, text)
            if what == "wrong password":
                assert "etcd refused user 'gitedge'" in text, text
                assert "authentication failed" in text, text
            else:
                assert "TLS with etcd failed" in text, text
                assert "CERTIFICATE" in text.upper(), text
            assert "Traceback" not in text, text

    # etcd drops every token of a user whose password changes: the edge and the
    # node authenticate again on "invalid auth token", with no restart.
    change_password(cluster, cluster.password_file.read_text().strip())  # type: ignore[union-attr]
    assert create_repo(net, "alice/after-new-token", region="fra").status_code == 201

    password = cluster.password_file.read_text().strip()  # type: ignore[union-attr]
    for log in (net.work_dir / "logs").glob("*.log"):
        assert password not in log.read_text(errors="replace"), f"password in {log}"


def test_one_member_killed_while_cloning(cluster_net: Devnet, git: Git, tmp_path: Path) -> None:
    net, cluster = cluster_net, etcd(cluster_net)
    head = pushed_repo(net, git, tmp_path, "alice/busy")
    edge_a, edge_b = net.edges[0], net.edges[1]
    # Member 0 is everyone's first endpoint: it carries the edges' watches and the
    # node's lease keepalives and replication watch. Kill it (when it leads, a new
    # leader is elected meanwhile).
    with CloneLoop(git, repo_url(net, "alice/busy"), head, tmp_path / "clones") as loop:
        loop.wait_for(CLONES_AROUND_KILL)
        cluster.kill(0)
        loop.wait_for(loop.ok + CLONES_AROUND_KILL)
        # Writes go on with 2 of 3, and the watch moved: a repository created through
        # edge B reaches edge A's cache by its watch.
        before = repos_cached(net, edge_a)
        created = poll(20, lambda: _created(net, "alice/while-one-down", edge_b))
        assert created.status_code == 201, created.text
        poll(20, lambda: repos_cached(net, edge_a) > before, "the watch event on edge A")
        loop.wait_for(loop.ok + 1)
    assert loop.failures == [], loop.failures
    assert loop.ok >= 2 * CLONES_AROUND_KILL

    cluster.start(0)
    cluster.wait([0, 1, 2])


def repos_cached(net: Devnet, edge: EdgeHandle) -> int:
    return int(str(stats(net, edge)["repos_cached"]))


def test_majority_down_then_back(cluster_net: Devnet, git: Git, tmp_path: Path) -> None:
    net, cluster = cluster_net, etcd(cluster_net)
    edge_a, edge_b = net.edges[0], net.edges[1]
    head = pushed_repo(net, git, tmp_path, "alice/known")
    token = net.user_token("alice")

    # Kill the two followers: the leader keeps taking proposals into its log until
    # it notices (an election timeout later), and can commit them when they return.
    leader = poll(10, lambda: [m for m in [cluster.leader()] if m is not None], "a leader")
    followers = [m for m in range(3) if m not in leader]
    for member in followers:
        cluster.kill(member)
    try:
        # Creates fail fast, at once after the kill: 503 within 2 s, whether or not
        # the last member has noticed yet that it lost its quorum.
        for attempt in range(3):
            started = time.monotonic()
            answer = create_repo(net, f"alice/refused{attempt}", region="fra")
            elapsed = time.monotonic() - started
            assert answer.status_code == 503, answer.text
            assert elapsed < 2.0, f"create answered after {elapsed:.2f}s"
        # Known repositories route from the cache.
        for round_ in range(CLONES_AROUND_KILL):
            target = tmp_path / f"k{round_}"
            git.run("clone", "-q", repo_url(net, "alice/known"), str(target))
            assert git.run("rev-parse", "HEAD", cwd=target).stdout.strip() == head
        cli = gitedge(
            edge_a.https_url,
            net.ca_file,
            *("repo", "create", "alice/refused-cli", "--region", "fra"),
            GITEDGE_USER="alice",
            GITEDGE_TOKEN=token,
        )
        assert cli.returncode == 1 and "503" in cli.stderr, cli.stderr
        poll(20, lambda: stats(net, edge_a)["cache_synced"] is False, "the edge to see it")
        target = tmp_path / "k-degraded"
        git.run("clone", "-q", repo_url(net, "alice/known"), str(target))
    finally:
        for member in followers:
            cluster.start(member)
    cluster.wait([0, 1, 2])

    # The mirror resyncs and creates work again, through either edge; one created
    # through edge B is routed by edge A from its cache (no etcd read on lookup).
    poll(30, lambda: stats(net, edge_a)["cache_synced"] is True, "the cache to resync")
    again = poll(20, lambda: _created(net, "alice/after", edge_a))
    assert again.status_code == 201, again.text
    # Refused creates that etcd applied after all are deleted meanwhile (below): wait
    # for that first, or their deletes could cancel out the count this waits on
    # (a CI run saw it time out so).
    poll(30, lambda: stats(net, edge_a)["creates_unsettled"] == 0, "unsettled creates")
    before = repos_cached(net, edge_a)
    other = create_repo(net, "alice/via-b", "fra", edge_b.https_url)
    assert other.status_code == 201, other.text
    poll(20, lambda: repos_cached(net, edge_a) > before, "the watch event on edge A")
    reads = stats(net, edge_a)["lookup_etcd_reads"]
    git.run("clone", "-q", repo_url(net, "alice/via-b"), str(tmp_path / "via-b"))
    assert stats(net, edge_a)["lookup_etcd_reads"] == reads

    # A refused create that etcd applied after all (a cut-off leader's log entry,
    # committed when the quorum came back) is deleted: each name is free again.
    poll(30, lambda: stats(net, edge_a)["creates_unsettled"] == 0, "unsettled creates")
    for name in ("alice/refused0", "alice/refused1", "alice/refused2", "alice/refused-cli"):
        answer = create_repo(net, name, region="fra")
        assert answer.status_code == 201, (name, answer.text)


def _created(net: Devnet, name: str, edge: EdgeHandle) -> httpx.Response | None:
    answer = create_repo(net, name, "fra", edge.https_url)
    return answer if answer.status_code != 503 else None


def test_the_gitedge_user_may_write_the_ref_logs_beside_its_prefix(cluster_net: Devnet) -> None:
    """Replicated pushes write their ref log under `/gitedge.refs/`, outside the prefix:
    a role granted the prefix alone (as docs/etcd.md once said) was refused there (403)."""

    cluster = etcd(cluster_net)
    assert cluster.tls is not None and cluster.password_file is not None
    security = EtcdSecurity(
        ca_file=cluster.tls.ca_file,
        cert_file=cluster.tls.client_cert,
        key_file=cluster.tls.client_key,
        username="gitedge",
        password_file=cluster.password_file,
    )
    key = Keys(DEFAULT_PREFIX).refs_root + "probe/permission"

    async def write_and_read() -> bytes | None:
        async with EtcdClient(cluster.urls, security=security) as client:
            await client.put(key, b"ok")
            kv = await client.get(key)
            await client.delete(key)
            return None if kv is None else kv.value

    assert trio.run(write_and_read) == b"ok"
