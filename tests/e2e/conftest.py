"""A real network for end-to-end tests: etcd, nodes fra-1 and lax-1, an edge.

Module-scoped: started once per test module, stopped (every process reaped)
when the module ends.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio

from devnet.network import Devnet, EdgeHandle, NodeHandle, start_devnet
from devnet.replcheck import Ack, Report, check, read_consensus, replica_refs
from routing.etcd import EtcdClient
from routing.model import RepoName
from routing.schema import DEFAULT_PREFIX, Keys
from tests.e2e.web_upstream import WebUpstream

T = TypeVar("T")


THREE_REGIONS = ("fra", "lax", "syd")


@contextmanager
def three_regions(
    tmp_path_factory: pytest.TempPathFactory, name: str, edge_options: str = ""
) -> Iterator[Devnet]:
    """What the replication tests run on: etcd, one node and one edge in each of fra,
    lax and syd, 3 s leases (a killed node leaves placement and reads quickly)."""
    with start_devnet(
        tmp_path_factory.mktemp(name),
        THREE_REGIONS,
        lease_ttl=3,
        edge_per_region=True,
        edge_options=edge_options,
    ) as network:
        yield network


@pytest.fixture(scope="module")
def net(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Devnet]:
    """The module's network: etcd, fra-1, lax-1 and an edge; or, in a module that sets
    `NETWORK = THREE_REGIONS`, three_regions()."""
    if getattr(request.module, "NETWORK", None) == THREE_REGIONS:
        with three_regions(tmp_path_factory, request.module.__name__.rsplit(".", 1)[-1]) as net3:
            yield net3
        return
    with start_devnet(tmp_path_factory.mktemp("net"), lease_ttl=3) as network:
        yield network


@pytest.fixture(scope="module")
def upstream() -> Iterator[WebUpstream]:
    """A web frontend (tests/e2e/web_upstream.py) for the module's web tests."""
    with WebUpstream() as server:
        yield server


@pytest.fixture(scope="module")
def web_net(tmp_path_factory: pytest.TempPathFactory, upstream: WebUpstream) -> Iterator[Devnet]:
    """etcd, fra-1 and an edge whose web upstream is `upstream`."""
    with start_devnet(
        tmp_path_factory.mktemp("web"), ("fra",), lease_ttl=3, web_upstream=upstream.url
    ) as network:
        yield network


@dataclass
class Git:
    """Runs the stock git CLI against the demo's CA, with no user config."""

    home: Path
    ca_file: Path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ["PATH"],
            "HOME": str(self.home),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_SSL_CAINFO": str(self.ca_file),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Alice",
            "GIT_AUTHOR_EMAIL": "alice@example.com",
            "GIT_COMMITTER_NAME": "Alice",
            "GIT_COMMITTER_EMAIL": "alice@example.com",
            **extra,
        }

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        check: bool = True,
        timeout: float = 120,
        **env: str,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["git", *args],
            cwd=cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def new_worktree(self, path: Path) -> Path:
        self.run("init", "-q", "-b", "main", str(path))
        return path

    def commit(self, work: Path, name: str, data: bytes) -> str:
        (work / name).write_bytes(data)
        self.run("add", name, cwd=work)
        self.run("commit", "-q", "-m", f"add {name}", cwd=work)
        return self.run("rev-parse", "HEAD", cwd=work).stdout.strip()


@pytest.fixture
def git(tmp_path: Path, net: Devnet) -> Git:
    home = tmp_path / "home"
    home.mkdir()
    return Git(home, net.ca_file)


def tls(net: Devnet) -> ssl.SSLContext:
    """Trust the network's own CA (what GIT_SSL_CAINFO does for git)."""
    return ssl.create_default_context(cafile=str(net.ca_file))


def create_repo(
    net: Devnet,
    name: str,
    region: str | None = None,
    edge_url: str | None = None,
    *,
    public: bool = False,
    as_user: str | None = None,
) -> httpx.Response:
    """Create through the API as the name's owner (or `as_user`), with their token."""
    user = as_user or _owner_or_default(name)
    headers = {"Fly-Region": region} if region else {}
    return httpx.post(
        f"{edge_url or net.edge.https_url}/api/repos",
        json={"name": name, "public": public},
        headers=headers,
        auth=(user, net.user_token(user)),
        verify=tls(net),
        timeout=30,
    )


def _owner_or_default(name: str) -> str:
    owner = name.split("/", 1)[0]
    return owner if owner.isascii() and owner.isalnum() else "alice"


def repo_url(net: Devnet, name: str, user: str | None = None, edge_url: str | None = None) -> str:
    """The clone URL with `user`'s (default: the owner's) token in it."""
    user = user or _owner_or_default(name)
    base = edge_url or net.edge.https_url
    return base.replace("https://", f"https://{user}:{net.user_token(user)}@") + f"/{name}.git"


def api_get(net: Devnet, path: str, user: str | None = "alice") -> httpx.Response:
    auth = (user, net.user_token(user)) if user else None
    return httpx.get(f"{net.edge.https_url}{path}", auth=auth, verify=tls(net), timeout=30)


def anonymous_url(net: Devnet, name: str) -> str:
    return f"{net.edge.https_url}/{name}.git"


def raw_exchange(edge_url: str, ca_file: Path, request: bytes, timeout: float = 10) -> bytes:
    """Send bytes as they are (no client-side path normalisation); return the first read."""
    host, port = edge_url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(request)
        return tls.recv(65536)


def raw_status(edge_url: str, ca_file: Path, method: str, path: str) -> int:
    answer = raw_exchange(
        edge_url,
        ca_file,
        f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    return int(answer.split(b" ", 2)[1])


def gitedge(
    edge_url: str, ca_file: Path, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """The `gitedge` CLI against an edge, with only the credentials given in env."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("GITEDGE_")}
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        env={**base, "GITEDGE_URL": edge_url, "GITEDGE_CA_FILE": str(ca_file), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def ssh_git_command(net: Devnet, key_dir: Path, user: str = "alice") -> str:
    """GIT_SSH_COMMAND for stock OpenSSH with a new key of `user`'s (added through
    the API), the edges' host key pinned."""
    key = key_dir / "id_ed25519"
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", user, "-f", str(key)]
    subprocess.run(keygen, check=True)
    added = httpx.post(
        f"{net.edge.https_url}/api/user/keys",
        json={"title": "laptop", "key": key.with_suffix(".pub").read_text()},
        auth=(user, net.user_token(user)),
        verify=tls(net),
        timeout=30,
    )
    assert added.status_code == 201, added.text
    return shlex.join(
        [
            "ssh", "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={net.known_hosts}",
        ]
    )  # fmt: skip


def region_edge(net: Devnet, region: str) -> EdgeHandle:
    """The network's (first) edge in `region`."""
    return next(e for e in net.edges if e.region == region)


def create_replicated(net: Devnet, name: str, region: str, replicas: int) -> httpx.Response:
    """Create `name` (alice's) through `region`'s edge with `replicas` replicas."""
    return httpx.post(
        f"{region_edge(net, region).https_url}/api/repos",
        json={"name": name, "replicas": replicas},
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
        timeout=30,
    )


def repo_where(net: Devnet, name: str) -> dict[str, Any]:
    """`gitedge repo where NAME` as alice, through the first edge, parsed."""
    shown = gitedge(
        net.edge.https_url,
        net.ca_file,
        "repo",
        "where",
        name,
        GITEDGE_USER="alice",
        GITEDGE_TOKEN=net.user_token("alice"),
    )
    assert shown.returncode == 0, shown.stderr
    answer: dict[str, Any] = json.loads(shown.stdout)
    return answer


def poll(deadline_s: float, check: Callable[[], T | None], what: str = "the condition") -> T:
    """Call check() until it returns something truthy, and return that; fail at the deadline."""
    deadline = time.monotonic() + deadline_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def git_children(pid: int) -> list[int]:
    """Live `git` processes descended from `pid` (via /proc)."""
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        names[int(entry.name)] = name
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if names[child].startswith("git"):
                found.append(child)
    return found


# -- replication: what etcd agrees on, what a replica holds, the checker ---------------


def consensus(net: Devnet, name: str) -> tuple[int, dict[str, str]]:
    async def read() -> tuple[int, dict[str, str]]:
        async with EtcdClient(net.etcd.url) as etcd:
            return await read_consensus(etcd, Keys(DEFAULT_PREFIX), RepoName.parse(name))

    return trio.run(read)


def run_checker(net: Devnet, name: str, acks: list[Ack]) -> Report:
    volumes = [node.volume_dir for node in net.nodes.values()]

    async def go() -> Report:
        async with EtcdClient(net.etcd.url) as etcd:
            return await check(etcd, Keys(DEFAULT_PREFIX), RepoName.parse(name), acks, volumes)

    return trio.run(go)


def disk_refs(node: NodeHandle, name: str) -> dict[str, str]:
    return replica_refs(node.volume_dir / RepoName.parse(name).bare_dir)
