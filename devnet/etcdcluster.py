"""A real multi-member etcd cluster on loopback, optionally with TLS and auth.

Production runs etcd as 3 (or 5) members behind TLS with client certificates
and users; this starts the same shape on one machine from Debian's
`etcd-server` binary, for the end-to-end tests of failover and of the client's
TLS and auth. Peers talk plain HTTP on loopback; clients talk HTTPS when `tls`.

With `tls`, one trustme CA signs every member's server certificate and one
client certificate (CN `gitedge-client`, a name that is no etcd user, so the
certificate alone grants nothing: the password does). With `auth`, users
`root` and `gitedge` are made and auth enabled; `gitedge` may read and write
the gitedge prefix only.

Blocking code, like devnet/procs.py: fixtures and the demo, never an event loop.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx
import trustme

from devnet.procs import (
    PORT_RACE_ATTEMPTS,
    EtcdServer,
    StartupError,
    free_port,
    lost_port_race,
    spawn,
)
from routing.schema import DEFAULT_PREFIX, Keys

ETCD_USER = "gitedge"
CLIENT_CN = "gitedge-client"


@dataclass(frozen=True)
class EtcdTlsFiles:
    ca_file: Path
    client_cert: Path
    client_key: Path


@dataclass
class EtcdCluster:
    """Members (each an EtcdServer), their shared argv, and how to reach them."""

    work_dir: Path
    members: list[EtcdServer]
    argvs: list[list[str]]
    tls: EtcdTlsFiles | None = None
    password_file: Path | None = None
    root_password: str = ""
    _stopped: set[int] = field(default_factory=set)

    @property
    def urls(self) -> list[str]:
        return [m.url for m in self.members]

    @property
    def url(self) -> str:
        return self.members[0].url

    def toml_lines(
        self, *, cert: bool = True, password_file: Path | None = None, tls: bool = True
    ) -> list[str]:
        """The `[etcd]` keys (after the table header) that reach this cluster as gitedge.

        `cert=False` leaves the client certificate out; `password_file` replaces the
        right one; `tls=False` leaves out the CA too (tests of refusals)."""
        lines = [f"endpoints = {_toml(self.urls)}"]
        if self.tls is not None and tls:
            lines.append(f"ca_file = {_toml(str(self.tls.ca_file))}")
            if cert:
                lines.append(f"cert_file = {_toml(str(self.tls.client_cert))}")
                lines.append(f"key_file = {_toml(str(self.tls.client_key))}")
        if self.password_file is not None:
            lines.append(f"username = {_toml(ETCD_USER)}")
            lines.append(f"password_file = {_toml(str(password_file or self.password_file))}")
        return lines

    @contextmanager
    def client(
        self, member: int, *, timeout: float = 2.0, root: bool = True
    ) -> Iterator[httpx.Client]:
        """A blocking client to one member, as root when auth is on (admin calls)."""
        verify: ssl.SSLContext | bool = False
        if self.tls is not None:
            verify = ssl.create_default_context(cafile=str(self.tls.ca_file))
            verify.load_cert_chain(self.tls.client_cert, self.tls.client_key)
        with httpx.Client(
            base_url=self.members[member].url, verify=verify, timeout=timeout, trust_env=False
        ) as client:
            if root and self.password_file is not None:
                answer = client.post(
                    "/v3/auth/authenticate", json={"name": "root", "password": self.root_password}
                )
                answer.raise_for_status()
                client.headers["authorization"] = answer.json()["token"]
            yield client

    # --- members ----------------------------------------------------------------

    def kill(self, member: int) -> None:
        """SIGKILL one member (its data stays for a restart)."""
        self.members[member].process.kill()
        self._stopped.add(member)

    def start(self, member: int) -> None:
        """Start a killed member again; returns once it is up (not yet healthy:
        a minority member has no leader)."""
        old = self.members[member]
        old.process.kill()
        proc = spawn(old.process.name, self.argvs[member], self.work_dir / "logs")
        self.members[member] = EtcdServer(proc, old.url, old.data_dir)
        self._stopped.discard(member)

    def alive(self) -> list[int]:
        return [i for i in range(len(self.members)) if i not in self._stopped]

    def status(self, member: int) -> dict[str, object] | None:
        """`/v3/maintenance/status` of one member, or None if it does not answer."""
        try:
            with self.client(member, root=False) as client:
                answer = client.post("/v3/maintenance/status", json={})
                if answer.status_code != 200:
                    return None
                result: dict[str, object] = answer.json()
                return result
        except (httpx.HTTPError, KeyError, ValueError):
            return None

    def healthy(self, member: int) -> bool:
        """The member answers and knows a leader."""
        status = self.status(member)
        return status is not None and str(status.get("leader", "0")) not in ("0", "")

    def leader(self) -> int | None:
        """The member that is the leader now, if any answers so."""
        for member in self.alive():
            status = self.status(member)
            header = status.get("header") if status else None
            if (
                status
                and isinstance(header, dict)
                and status.get("leader") == header.get("member_id")
            ):
                return member
        return None

    def wait(self, members: list[int], timeout: float = 30.0, *, leaderless: bool = False) -> None:
        """Wait until each of `members` is healthy (or, `leaderless`, answers with no leader)."""
        deadline = time.monotonic() + timeout
        for member in members:
            proc = self.members[member].process
            while True:
                if not proc.alive():
                    raise StartupError(f"{proc.name} exited:\n" + proc.log_tail())
                status = self.status(member)
                if status is not None:
                    has_leader = str(status.get("leader", "0")) not in ("0", "")
                    if has_leader != leaderless:
                        break
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"{proc.name}: not ready after {timeout}s\n" + proc.log_tail()
                    )
                time.sleep(0.05)

    def stop(self) -> None:
        for member in self.members:
            member.process.kill()

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_etcd_cluster(
    work_dir: Path,
    size: int = 3,
    *,
    tls: bool = False,
    auth: bool = False,
    prefix: str = DEFAULT_PREFIX,
    timeout: float = 30.0,
) -> EtcdCluster:
    """`size` members on free loopback ports, all healthy, data under `work_dir`.

    Fast failure detection for tests: 50 ms heartbeats, 500 ms election timeout
    (etcd's defaults are 100 ms and 1 s)."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise StartupError("etcd not found on PATH (Debian: apt-get install etcd-server)")
    work_dir.mkdir(parents=True, exist_ok=True)
    for attempt in range(PORT_RACE_ATTEMPTS):
        try:
            return _start_cluster_once(etcd, work_dir, size, tls, auth, prefix, timeout)
        except StartupError as error:
            if not lost_port_race(error) or attempt == PORT_RACE_ATTEMPTS - 1:
                raise
            for data_dir in work_dir.glob("etcd*-data"):
                shutil.rmtree(data_dir, ignore_errors=True)
    raise AssertionError("unreachable")


def _start_cluster_once(
    etcd: str, work_dir: Path, size: int, tls: bool, auth: bool, prefix: str, timeout: float
) -> EtcdCluster:
    scheme = "https" if tls else "http"
    names = [f"etcd{i + 1}" for i in range(size)]
    clients = [f"{scheme}://127.0.0.1:{free_port()}" for _ in names]
    peers = [f"http://127.0.0.1:{free_port()}" for _ in names]
    initial = ",".join(f"{n}={p}" for n, p in zip(names, peers, strict=True))
    tls_files, tls_args = _make_tls(work_dir) if tls else (None, [])
    argvs = []
    for name, client, peer in zip(names, clients, peers, strict=True):
        argvs.append(
            [
                etcd,
                *("--name", name, "--data-dir", str(work_dir / f"{name}-data")),
                *("--listen-client-urls", client, "--advertise-client-urls", client),
                *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                *("--initial-cluster", initial, "--initial-cluster-state", "new"),
                *("--initial-cluster-token", f"gitedge-{secrets.token_hex(4)}"),
                *("--heartbeat-interval", "50", "--election-timeout", "500"),
                *("--log-level", "warn", "--logger", "zap"),
                *tls_args,
            ]
        )
    token = argvs[0][argvs[0].index("--initial-cluster-token") + 1]
    for argv in argvs:  # one cluster token for all members
        argv[argv.index("--initial-cluster-token") + 1] = token
    members = [
        EtcdServer(spawn(name, argv, work_dir / "logs"), client, work_dir / f"{name}-data")
        for name, argv, client in zip(names, argvs, clients, strict=True)
    ]
    cluster = EtcdCluster(work_dir, members, argvs, tls_files)
    try:
        cluster.wait(list(range(size)), timeout)
        if auth:
            _enable_auth(cluster, prefix)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _make_tls(work_dir: Path) -> tuple[EtcdTlsFiles, list[str]]:
    tls_dir = work_dir / "etcd-tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="gitedge etcd test CA")
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="etcd")
    # No CN: etcd's JSON gateway refuses (400) any client certificate with a common name
    # ("CommonName of client sending a request against gateway will be ignored").
    client = ca.issue_cert(CLIENT_CN)
    files = EtcdTlsFiles(
        tls_dir / "ca.pem", tls_dir / "client-cert.pem", tls_dir / "client-key.pem"
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    server.cert_chain_pems[0].write_to_path(str(tls_dir / "server-cert.pem"))
    server.private_key_pem.write_to_path(str(tls_dir / "server-key.pem"))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    for key in (tls_dir / "server-key.pem", files.client_key):
        key.chmod(0o600)
    args = [
        *("--cert-file", str(tls_dir / "server-cert.pem")),
        *("--key-file", str(tls_dir / "server-key.pem")),
        *("--trusted-ca-file", str(files.ca_file), "--client-cert-auth"),
    ]
    return files, args


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _enable_auth(cluster: EtcdCluster, prefix: str) -> None:
    """Users root and gitedge (readwrite on `prefix` and its ref logs), then auth on."""
    cluster.root_password = secrets.token_urlsafe(16)
    password = secrets.token_urlsafe(16)
    cluster.password_file = cluster.work_dir / "etcd-password"
    cluster.password_file.write_text(password + "\n")
    cluster.password_file.chmod(0o600)
    calls = [
        ("/v3/auth/user/add", {"name": "root", "password": cluster.root_password}),
        ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
        ("/v3/auth/role/add", {"name": ETCD_USER}),
        *(
            (
                "/v3/auth/role/grant",
                {
                    "name": ETCD_USER,
                    "perm": {
                        "permType": "READWRITE",
                        "key": _b64(granted),
                        "range_end": _b64(_prefix_end(granted)),
                    },
                },
            )
            # The prefix, and the replicated repositories' ref logs beside it.
            for granted in (prefix, Keys(prefix).refs_root)
        ),
        ("/v3/auth/user/add", {"name": ETCD_USER, "password": password}),
        ("/v3/auth/user/grant", {"user": ETCD_USER, "role": ETCD_USER}),
        ("/v3/auth/enable", {}),
    ]
    saved, cluster.password_file = cluster.password_file, None  # no auth yet for these
    try:
        with cluster.client(0) as client:
            for path, body in calls:
                answer = client.post(path, json=body)
                if answer.status_code != 200:
                    raise StartupError(f"etcd {path}: {answer.status_code} {answer.text}")
    finally:
        cluster.password_file = saved


def change_password(cluster: EtcdCluster, password: str) -> None:
    """Set gitedge's password (as root); etcd drops the user's tokens."""
    with cluster.client(cluster.alive()[0]) as client:
        answer = client.post(
            "/v3/auth/user/changepw", json={"name": ETCD_USER, "password": password}
        )
        answer.raise_for_status()


def _toml(value: object) -> str:
    return json.dumps(value)  # JSON strings and lists are valid TOML values


__all__ = [
    "CLIENT_CN",
    "ETCD_USER",
    "EtcdCluster",
    "EtcdTlsFiles",
    "change_password",
    "start_etcd_cluster",
]
