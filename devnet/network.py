"""A whole gitedge network on one machine: etcd, regional nodes, edges.

Used by `gitedge demo`, the end-to-end tests and the benchmarks, so all three
run the same processes the same way. Every server is a real child process
started with its own TOML config in the work dir, on free loopback ports, and
is waited for through the ready file it writes once it serves.

Edges speak SSH too: they share one host key (pinned by clients through
`Devnet.known_hosts`) and carry sessions to the nodes over HTTP.

Nodes serve plain HTTP unless started with `tls` (or in `tls_regions`): then
HTTPS with a certificate they make, which edges pin from etcd. Edges are
started with `[nodes] require_tls = "never"` unless told otherwise: every
region of a devnet is on this one machine.
"""

from __future__ import annotations

import json
import secrets
import ssl
import sys
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, Unpack

import httpx
import trustme

from devnet.etcdcluster import EtcdCluster
from devnet.procs import (
    EtcdServer,
    ManagedProcess,
    spawn,
    start_etcd,
    stop_all,
    wait_until,
)
from plumbing.sshkeys import load_or_create_key, public_key_line
from routing.regions import RttTable, parse_rtt_table

DEVNET_RTT = parse_rtt_table({"fra": {"lax": 140, "syd": 260}, "lax": {"syd": 150}})
"""The round trips every devnet edge is configured with (`[regions.rtt]`): Frankfurt,
Los Angeles and Sydney's real ones, roughly; twice the one-way delays the regions
benchmark emulates (configs/regions.toml)."""


@dataclass
class NodeHandle:
    node_id: str
    region: str
    volume_dir: Path
    config_path: Path
    process: ManagedProcess
    ready: dict[str, Any]

    @property
    def http_url(self) -> str:
        return str(self.ready["http_url"])

    @property
    def metrics_url(self) -> str | None:
        value = self.ready.get("metrics_url")
        return str(value) if value else None

    @property
    def volume_id(self) -> str:
        return str(self.ready["volume_id"])

    @property
    def tls_cert_sha256(self) -> str | None:
        """The pin of the certificate a TLS node serves (and publishes in etcd)."""
        value = self.ready.get("tls_cert_sha256")
        return str(value) if value else None


@dataclass
class EdgeHandle:
    name: str
    region: str
    config_path: Path
    process: ManagedProcess
    ready: dict[str, Any]

    @property
    def https_url(self) -> str:
        return str(self.ready["https_url"])

    @property
    def http_url(self) -> str | None:
        value = self.ready.get("http_url")
        return str(value) if value else None

    @property
    def metrics_url(self) -> str | None:
        """`http://127.0.0.1:PORT/metrics` on its admin listener (`[admin]`)."""
        value = self.ready.get("metrics_url")
        return str(value) if value else None

    @property
    def ssh_port(self) -> int:
        address = self.ready.get("ssh_address")
        if not address:
            raise LookupError(f"{self.name} has no SSH front")
        return int(str(address).rpartition(":")[2])

    @property
    def ssh_url(self) -> str:
        """`ssh://git@127.0.0.1:PORT`: append `/owner/name.git` to clone."""
        return f"ssh://git@127.0.0.1:{self.ssh_port}"


def _toml(value: object) -> str:
    return json.dumps(value)  # JSON strings, numbers and lists are valid TOML values


@dataclass
class _Starting:
    """A server process spawned and not yet waited for: several start at once."""

    proc: ManagedProcess
    ready_file: Path
    timeout: float

    def wait(self) -> dict[str, Any]:
        wait_until(self.proc, self.ready_file.exists, self.timeout, "ready file")
        info: dict[str, Any] = json.loads(self.ready_file.read_text())
        return info


def _spawn(
    name: str,
    args: list[str],
    work_dir: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> _Starting:
    ready_file = work_dir / f"{name}.ready.json"
    ready_file.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "edge.cli", *args, "--ready-file", str(ready_file)]
    return _Starting(spawn(name, argv, work_dir / "logs", env), ready_file, timeout)


class EdgeOptions(TypedDict, total=False):
    """`Devnet.start_edge`'s options (its docstring says what each does)."""

    http: bool
    ssh: bool
    edge_options: str
    extra: str
    ssh_options: str
    listener_options: str
    timeout: float
    etcd_endpoints: list[str] | None
    etcd_table: list[str] | None
    require_tls: str | None
    rtt: RttTable
    cert_files: tuple[Path, Path] | None
    host_key_file: Path | None
    web_upstream: str | None
    web_options: str


@dataclass
class _SpawnedEdge:
    name: str
    region: str
    config_path: Path
    starting: _Starting
    host_key: str
    """Its SSH host key line for known_hosts; empty without SSH."""


def _wait_all(starting: list[_Starting]) -> list[dict[str, Any]]:
    """Every ready file, in order; if one fails, none of the others is left running."""
    try:
        return [s.wait() for s in starting]
    except BaseException:
        stop_all([s.proc for s in starting])
        raise


@dataclass
class Devnet:
    work_dir: Path
    etcd: EtcdServer
    ca_file: Path
    cert_file: Path
    key_file: Path
    admin_secret_file: Path
    admin_token_file: Path
    nodes: dict[str, NodeHandle] = field(default_factory=dict)
    edges: list[EdgeHandle] = field(default_factory=list)
    _tokens: dict[str, str] = field(default_factory=dict)
    etcd_cluster: EtcdCluster | None = None
    """A multi-member etcd (devnet/etcdcluster.py); `etcd` is then its first member."""
    web_upstream: str | None = None
    """The `[web] upstream` of every edge started (`gitedge demo --web-upstream`)."""

    def etcd_lines(self) -> list[str]:
        """The keys of the `[etcd]` table every node and edge gets."""
        if self.etcd_cluster is not None:
            return self.etcd_cluster.toml_lines()
        return [f"endpoints = {_toml([self.etcd.url])}"]

    @property
    def admin_token(self) -> str:
        return self.admin_token_file.read_text().strip()

    def user_token(self, user: str) -> str:
        """A personal token for `user`, creating the user first if needed (admin API)."""
        if user not in self._tokens:
            headers = {"authorization": f"Bearer {self.admin_token}"}
            verify = ssl.create_default_context(cafile=str(self.ca_file))
            with httpx.Client(base_url=self.edge.https_url, verify=verify, timeout=30) as api:
                created = api.post("/api/admin/users", json={"name": user}, headers=headers)
                if created.status_code not in (201, 409):
                    raise RuntimeError(f"create user {user}: {created.status_code} {created.text}")
                token = api.post(f"/api/admin/users/{user}/tokens", headers=headers)
                token.raise_for_status()
                self._tokens[user] = str(token.json()["token"])
        return self._tokens[user]

    @property
    def edge(self) -> EdgeHandle:
        return self.edges[0]

    # Every edge of the network shares one host key (clients pin it, whichever
    # edge they reach).
    @property
    def edge_host_key_file(self) -> Path:
        return self.work_dir / "ssh" / "edge_host_ed25519_key"

    @property
    def known_hosts(self) -> Path:
        """An OpenSSH known_hosts file with every edge's host key line."""
        return self.work_dir / "ssh" / "known_hosts"

    def _edge_host_key(self) -> str:
        """The edges' host public key line, made on first use."""
        return public_key_line(load_or_create_key(self.edge_host_key_file))

    def start_node(
        self,
        node_id: str,
        region: str,
        *,
        lease_ttl: int = 10,
        timeout: float = 30.0,
        tls: bool = False,
        etcd_table: list[str] | None = None,
        extra: str = "",
    ) -> NodeHandle:
        """A node; with `tls` it serves HTTPS with a self-signed certificate it
        makes in the work dir (kept across restarts of the same node id).
        `etcd_table` replaces the keys of its `[etcd]` table (`etcd_lines()`);
        `extra` is more tables for its config (`[limits]`)."""
        handle, starting = self._spawn_node(
            node_id, region, lease_ttl, timeout, tls, etcd_table, extra
        )
        return self._node_ready(handle, starting.wait())

    def start_nodes(
        self, nodes: list[tuple[str, str]], *, lease_ttl: int = 10, tls_ids: Collection[str] = ()
    ) -> list[NodeHandle]:
        """Several nodes (id, region) started at once, as `start_node` starts one: each
        one's start-up is mostly its own interpreter's imports, and they overlap."""
        spawned = [
            self._spawn_node(node_id, region, lease_ttl, 30.0, node_id in tls_ids, None, "")
            for node_id, region in nodes
        ]
        infos = _wait_all([starting for _, starting in spawned])
        return [
            self._node_ready(handle, info) for (handle, _), info in zip(spawned, infos, strict=True)
        ]

    def _node_ready(self, handle: NodeHandle, info: dict[str, Any]) -> NodeHandle:
        handle.ready = info
        self.nodes[handle.node_id] = handle
        return handle

    def _spawn_node(
        self,
        node_id: str,
        region: str,
        lease_ttl: int,
        timeout: float,
        tls: bool,
        etcd_table: list[str] | None,
        extra: str,
    ) -> tuple[NodeHandle, _Starting]:
        volume_dir = self.work_dir / "volumes" / node_id
        config_path = self.work_dir / f"node-{node_id}.toml"
        config_path.write_text(
            "\n".join(
                [
                    "[node]",
                    f"id = {_toml(node_id)}",
                    f"region = {_toml(region)}",
                    f"volume_dir = {_toml(str(volume_dir))}",
                    'listen = "127.0.0.1:0"',
                    f"admin_secret_file = {_toml(str(self.admin_secret_file))}",
                    f"lease_ttl = {lease_ttl}",
                    "[admin]",  # /metrics on a free loopback port
                    'listen = "127.0.0.1:0"',
                    "[etcd]",
                    *(etcd_table if etcd_table is not None else self.etcd_lines()),
                    *(self._node_tls_table(node_id) if tls else []),
                    extra,
                    "",
                ]
            )
        )
        starting = _spawn(
            f"node-{node_id}", ["node", "--config", str(config_path)], self.work_dir, timeout
        )
        return NodeHandle(node_id, region, volume_dir, config_path, starting.proc, {}), starting

    def restart_node(
        self,
        node: NodeHandle,
        *,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
        config_path: Path | None = None,
    ) -> NodeHandle:
        """Start a stopped (or killed) node again from its own config file; `env`
        adds to its environment (tests: GITEDGE_TEST_PAUSE, node/replication.py).
        `config_path` starts it, this once, from another file (a variant of its own);
        the handle keeps its own for the next restart."""
        node.process.stop()
        starting = self._spawn_again(node, timeout, env, config_path)
        return self._restarted(node, starting, starting.wait())

    def restart_nodes(self, nodes: list[NodeHandle], *, timeout: float = 30.0) -> None:
        """`restart_node` for several, stopped together and then started together (the
        network has none of them meanwhile: for a config change, not a rolling restart)."""
        stop_all([node.process for node in nodes])
        starting = [self._spawn_again(node, timeout, None, None) for node in nodes]
        for node, started, info in zip(nodes, starting, _wait_all(starting), strict=True):
            self._restarted(node, started, info)

    def _spawn_again(
        self,
        node: NodeHandle,
        timeout: float,
        env: dict[str, str] | None,
        config_path: Path | None,
    ) -> _Starting:
        args = ["node", "--config", str(config_path or node.config_path)]
        return _spawn(f"node-{node.node_id}", args, self.work_dir, timeout, env)

    def _restarted(self, node: NodeHandle, started: _Starting, info: dict[str, Any]) -> NodeHandle:
        handle = NodeHandle(
            node.node_id, node.region, node.volume_dir, node.config_path, started.proc, info
        )
        self.nodes[node.node_id] = handle
        return handle

    def _node_tls_table(self, node_id: str) -> list[str]:
        tls_dir = self.work_dir / "tls"
        return [
            "[tls]",
            f"cert_file = {_toml(str(tls_dir / f'node-{node_id}-cert.pem'))}",
            f"key_file = {_toml(str(tls_dir / f'node-{node_id}-key.pem'))}",
        ]

    def start_edge(self, region: str, **options: Unpack[EdgeOptions]) -> EdgeHandle:
        """An edge; `edge_options` are lines for its [edge] table, `ssh_options` for
        its [ssh] table, `extra` more tables.

        With `ssh`, its SSH front listens on a free port and its host key line is
        added to `known_hosts`. `etcd_endpoints` replaces the devnet's etcd URL
        (the regions benchmark reaches etcd through a latency relay); `etcd_table`
        replaces all the keys of its `[etcd]` table.
        `require_tls` is its `[nodes] require_tls` (None: the edge's default).
        `rtt` is its `[regions.rtt]`, which ranks in-sync replicas for reads.
        `cert_files` (cert, key) replace the network's shared HTTPS certificate
        (a test that rewrites them and sends SIGHUP); `host_key_file` the shared
        SSH host key (it is made if missing, and added to `known_hosts`).
        `listener_options` are lines for each of [https], [http] and [ssh].
        `web_upstream` (default: the network's) is its `[web] upstream`; `web_options`
        more lines for that table. Without either, no [web] table: non-git requests 404.
        """
        return self._edge_ready(self._spawn_edge(region, len(self.edges) + 1, **options))

    def start_edges(self, edges: Sequence[tuple[str, EdgeOptions]]) -> list[EdgeHandle]:
        """Edges (region, options), started at once (their start-ups overlap), each as
        `start_edge` starts one; appended to `edges` in this order."""
        first = len(self.edges) + 1
        spawned = [
            self._spawn_edge(region, first + i, **options)
            for i, (region, options) in enumerate(edges)
        ]
        _wait_all([edge.starting for edge in spawned])
        return [self._edge_ready(edge) for edge in spawned]

    def _spawn_edge(
        self,
        region: str,
        index: int,
        *,
        http: bool = False,
        ssh: bool = True,
        edge_options: str = "",
        extra: str = "",
        ssh_options: str = "",
        listener_options: str = "",
        timeout: float = 30.0,
        etcd_endpoints: list[str] | None = None,
        etcd_table: list[str] | None = None,
        require_tls: str | None = "never",
        rtt: RttTable = DEVNET_RTT,
        cert_files: tuple[Path, Path] | None = None,
        host_key_file: Path | None = None,
        web_upstream: str | None = None,
        web_options: str = "",
    ) -> _SpawnedEdge:
        cert_file, key_file = cert_files or (self.cert_file, self.key_file)
        name = f"edge-{region}-{index}"
        config_path = self.work_dir / f"{name}.toml"
        lines = [
            "[edge]",
            f"region = {_toml(region)}",
            f"admin_token_file = {_toml(str(self.admin_token_file))}",
            edge_options,
            "[https]",
            'listen = "127.0.0.1:0"',
            f"cert_file = {_toml(str(cert_file))}",
            f"key_file = {_toml(str(key_file))}",
            listener_options,
        ]
        if http:
            lines += ["[http]", 'listen = "127.0.0.1:0"', listener_options]
        host_key_file = host_key_file or self.edge_host_key_file
        host_key = public_key_line(load_or_create_key(host_key_file)) if ssh else ""
        if ssh:
            lines += [
                "[ssh]",
                'listen = "127.0.0.1:0"',
                f"host_key_files = {_toml([str(host_key_file)])}",
                ssh_options,
                listener_options,
            ]
        lines += [
            "[nodes]",
            f"admin_secret_file = {_toml(str(self.admin_secret_file))}",
            f"require_tls = {_toml(require_tls)}" if require_tls else "",
            "[etcd]",
            *(
                etcd_table
                if etcd_table is not None
                else [f"endpoints = {_toml(etcd_endpoints)}"]
                if etcd_endpoints
                else self.etcd_lines()
            ),
            rtt.to_toml() if rtt.links else "",
            # /metrics on a free loopback port (the default, 9464, would collide).
            "[admin]",
            'listen = "127.0.0.1:0"',
        ]
        upstream = web_upstream or self.web_upstream
        if upstream:
            lines += ["[web]", f"upstream = {_toml(upstream)}", web_options]
        lines += [extra, ""]
        config_path.write_text("\n".join(lines))
        starting = _spawn(name, ["edge", "--config", str(config_path)], self.work_dir, timeout)
        return _SpawnedEdge(name, region, config_path, starting, host_key)

    def _edge_ready(self, edge: _SpawnedEdge) -> EdgeHandle:
        handle = EdgeHandle(
            edge.name, edge.region, edge.config_path, edge.starting.proc, edge.starting.wait()
        )
        self.edges.append(handle)
        if edge.host_key:
            with self.known_hosts.open("a") as known_hosts:
                known_hosts.write(f"[127.0.0.1]:{handle.ssh_port} {edge.host_key}\n")
        return handle

    def restart_edge(self, edge: EdgeHandle, *, timeout: float = 30.0) -> EdgeHandle:
        """Stop `edge` and start it again from its config: a cold edge (empty pools,
        cache rebuilt from etcd) on new free ports. Replaces it in `edges`."""
        return self.restart_edges([edge], timeout=timeout)[0]

    def restart_edges(self, edges: list[EdgeHandle], *, timeout: float = 30.0) -> list[EdgeHandle]:
        """`restart_edge` for several, stopped together and then started together."""
        stop_all([edge.process for edge in edges])
        starting = [
            _spawn(edge.name, ["edge", "--config", str(edge.config_path)], self.work_dir, timeout)
            for edge in edges
        ]
        infos = _wait_all(starting)
        handles = []
        for edge, started, info in zip(edges, starting, infos, strict=True):
            handle = EdgeHandle(edge.name, edge.region, edge.config_path, started.proc, info)
            self.edges[self.edges.index(edge)] = handle
            if handle.ready.get("ssh_address"):
                with self.known_hosts.open("a") as known_hosts:
                    known_hosts.write(f"[127.0.0.1]:{handle.ssh_port} {self._edge_host_key()}\n")
            handles.append(handle)
        return handles

    def stop(self) -> None:
        """Stop edges, then nodes (which revoke their leases), then etcd; the processes
        of each kind at once."""
        stop_all([edge.process for edge in self.edges])
        stop_all([node.process for node in self.nodes.values()])
        if self.etcd_cluster is not None:
            self.etcd_cluster.stop()
        else:
            self.etcd.stop()

    def __enter__(self) -> Devnet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_devnet(
    work_dir: Path,
    regions: tuple[str, ...] = ("fra", "lax"),
    edge_region: str | None = None,
    lease_ttl: int = 10,
    tls_regions: Collection[str] = (),
    edge_per_region: bool = False,
    edge_options: str = "",
    etcd_cluster: EtcdCluster | None = None,
    web_upstream: str | None = None,
) -> Devnet:
    """etcd, one node per region (`<region>-1`) and one edge, all ready.

    `etcd_cluster`: a started cluster to use instead of a new single etcd (the
    devnet stops it with the rest).

    With `edge_per_region`, one edge in each region (the first region's first).
    The nodes of `tls_regions` serve HTTPS (see `Devnet.start_node`).
    `web_upstream`: every edge's `[web] upstream` (docs/web.md)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca_file, cert_file, key_file = (
        work_dir / "ca.pem",
        work_dir / "edge-cert.pem",
        work_dir / "edge-key.pem",
    )
    ca.cert_pem.write_to_path(str(ca_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    secret_file, admin_token_file = work_dir / "node-admin-secret", work_dir / "admin-token"
    for path in (secret_file, admin_token_file):
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    etcd = start_etcd(work_dir) if etcd_cluster is None else etcd_cluster.members[0]
    net = Devnet(
        work_dir,
        etcd,
        ca_file,
        cert_file,
        key_file,
        secret_file,
        admin_token_file,
        etcd_cluster=etcd_cluster,
        web_upstream=web_upstream,
    )
    try:
        # Every node registered before any edge starts, as if one by one.
        net.start_nodes(
            [(f"{region}-1", region) for region in regions],
            lease_ttl=lease_ttl,
            tls_ids={f"{region}-1" for region in tls_regions},
        )
        edge_regions = regions if edge_per_region else (edge_region or regions[0],)
        net.start_edges([(region, {"edge_options": edge_options}) for region in edge_regions])
    except BaseException:
        net.stop()
        raise
    return net
