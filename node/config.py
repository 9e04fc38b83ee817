"""The node's TOML config: `[node]` and `[etcd]`, every key checked and named on error.

There is no `[ssh]` any more: edges carry SSH sessions to the node over its
HTTP listener (`node.ssh_http`). A config that still has the table is refused,
so an operator learns that its listener is gone instead of finding out from
a firewall rule.

```toml
[node]
id = "fra-1"                  # required, [a-z0-9-]
region = "fra"                # required
volume_dir = "/var/lib/gitedge/vol"   # required; created if missing
listen = "127.0.0.1:0"        # host:port, 0 = any free port
advertise_url = "http://10.0.0.5:8080"   # optional; default http(s)://<bound host>:<bound port>
admin_secret_file = "/etc/gitedge/node-secret"   # or admin_secret = "..."
lease_ttl = 10                # seconds, at least 2
keepalive_timeout = 75        # idle seconds on a client connection
drain_timeout = 60            # SIGTERM: stop accepting, let requests finish this long (0-3600)
startup_catch_up_timeout = 30 # seconds the start-up catch-up may hold registration (0-3600)
[etcd]
endpoints = ["http://127.0.0.1:2379"]   # several members: tried in turn (failover)
prefix = "/gitedge/"
timeout = 5                   # seconds per request and endpoint
# ca_file, cert_file, key_file, username, password_file: TLS and auth, as for the
# edge (routing/etcd_security.py)
[tls]                         # optional: without it the node serves plain HTTP
cert_file = "/var/lib/gitedge/node-tls-cert.pem"   # both missing: a self-signed pair is made
key_file = "/var/lib/gitedge/node-tls-key.pem"     # (0600) and kept; edges pin the cert
[admin]                       # optional: GET /metrics (plumbing/observe.py)
listen = "127.0.0.1:9464"     # the default; loopback or a private network only
[log]
format = "text"               # or "json"
```
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from node.housekeeping import HousekeepingConfig, Limits
from plumbing.observe import Observability, load_observability
from plumbing.tomlconf import ConfigError, Table
from routing.etcd_security import EtcdSecurity, load_etcd_security
from routing.model import InvalidRegion, NodeId, Region, parse_region
from routing.schema import DEFAULT_PREFIX, Keys
from routing.snapshots import SNAPSHOT_AFTER

__all__ = ["ConfigError", "NodeConfig", "TlsConfig", "load_node_config"]

_NODE_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_ETCD = "http://127.0.0.1:2379"
# GitHub refuses pushes over 2 GiB; a pack that size is already a repository to
# import, not a push.
DEFAULT_MAX_PUSH_SIZE = 2 * 2**30
DEFAULT_STARTUP_CATCH_UP_TIMEOUT = 30.0


@dataclass(frozen=True)
class TlsConfig:
    """`[tls]`: the node serves HTTPS, and edges pin this certificate from etcd."""

    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class NodeConfig:
    node_id: NodeId
    region: Region
    volume_dir: Path
    listen_host: str
    listen_port: int
    advertise_url: str | None
    admin_secret: str
    lease_ttl: int = 10
    # The edge pools node connections with a 30 s idle timeout; ours must be
    # longer, or the node closes a connection just as the edge reuses it.
    keepalive_timeout: float = 75.0
    drain_timeout: float = 60.0
    """SIGTERM: how long requests in flight may run on; the lease is kept meanwhile."""
    startup_catch_up_timeout: float = DEFAULT_STARTUP_CATCH_UP_TIMEOUT
    """How long the start-up catch-up of every replicated repository may run before the
    node registers anyway (what is left catches up from the watch; docs/replication.md)."""
    etcd_endpoints: tuple[str, ...] = (DEFAULT_ETCD,)
    etcd_prefix: str = DEFAULT_PREFIX
    tls: TlsConfig | None = None
    etcd_security: EtcdSecurity = field(default_factory=EtcdSecurity)
    etcd_timeout: float = 5.0
    snapshot_after: int = SNAPSHOT_AFTER
    """Ref-log entries past the newest snapshot that make this node write one."""
    observe: Observability = field(default_factory=Observability)
    """`[admin] listen` (`/metrics`) and `[log] format` (plumbing/observe.py)."""
    max_push_size: int = DEFAULT_MAX_PUSH_SIZE
    """`[limits] max_push_size`: the largest pack one client push may send, in bytes
    (git's receive.maxInputSize; 0: no limit). Peer transfers are not limited."""
    housekeeping: HousekeepingConfig = field(default_factory=HousekeepingConfig)
    """`[housekeeping]`: background optimization after pushes (docs/housekeeping.md)."""

    @property
    def keys(self) -> Keys:
        return Keys(self.etcd_prefix)


def load_node_config(path: Path) -> NodeConfig:
    """Read and check a node config; raises ConfigError naming the file and key."""
    root = Table.load(Path(path))
    node = root.table("node")
    etcd = root.table("etcd")
    if root.has("ssh"):
        raise root.error(
            "[ssh]",
            "removed: the node has no SSH listener; edges carry SSH sessions over"
            " its HTTP listener (delete the table, and the node's SSH firewall rule)",
        )
    tls = root.table("tls") if root.has("tls") else None
    limits = root.table("limits")
    housekeeping = root.table("housekeeping")

    node_id = node.str("id")
    if not _NODE_ID.fullmatch(node_id):
        raise node.error("id", f"use lowercase letters, digits and '-', got {node_id!r}")
    try:
        region = parse_region(node.str("region"))
    except InvalidRegion as exc:
        raise node.error("region", str(exc)) from None
    host, port = node.host_port("listen", "127.0.0.1:0")
    advertise_url = node.optional_str("advertise_url")
    # Edges dial TLS exactly when the URL says https.
    scheme = "https://" if tls is not None else "http://"
    if advertise_url is not None and not advertise_url.startswith(scheme):
        raise node.error(
            "advertise_url",
            f"must be an {scheme} URL {'with' if tls else 'without'} [tls], got {advertise_url!r}",
        )
    if advertise_url is None and _is_wildcard(host):
        # Nobody can connect to 0.0.0.0: the edge needs a routable address.
        raise node.error("advertise_url", f"is required when listening on {host!r}")

    config = NodeConfig(
        node_id=NodeId(node_id),
        region=region,
        volume_dir=Path(node.str("volume_dir")),
        listen_host=host,
        listen_port=port,
        advertise_url=advertise_url.rstrip("/") if advertise_url else None,
        admin_secret=node.secret("admin_secret"),
        lease_ttl=node.int("lease_ttl", 10, lo=2, hi=3600),
        keepalive_timeout=node.float("keepalive_timeout", 75.0, lo=1.0, hi=3600.0),
        drain_timeout=node.float("drain_timeout", 60.0, lo=0.0, hi=3600.0),
        startup_catch_up_timeout=node.float(
            "startup_catch_up_timeout", DEFAULT_STARTUP_CATCH_UP_TIMEOUT, lo=0.0, hi=3600.0
        ),
        etcd_endpoints=tuple(_endpoints(etcd)),
        etcd_prefix=_prefix(etcd),
        etcd_security=load_etcd_security(etcd, _endpoints(etcd)),
        etcd_timeout=etcd.float("timeout", 5.0, lo=0.1, hi=120.0),
        tls=_tls(tls) if tls is not None else None,
        snapshot_after=node.int("snapshot_after", SNAPSHOT_AFTER, lo=1, hi=1_000_000),
        max_push_size=limits.int("max_push_size", DEFAULT_MAX_PUSH_SIZE, lo=0, hi=2**50),
        observe=load_observability(root),
        housekeeping=_housekeeping(housekeeping),
    )
    for table in (root, node, etcd, limits, housekeeping, *(t for t in (tls,) if t is not None)):
        table.check_unknown()
    return config


def _housekeeping(table: Table) -> HousekeepingConfig:
    default = HousekeepingConfig()
    limits = default.limits
    return HousekeepingConfig(
        enabled=table.bool("enabled", default.enabled),
        max_concurrent=table.int("max_concurrent", default.max_concurrent, lo=1, hi=64),
        timeout=table.float("timeout", default.timeout, lo=1.0, hi=86400.0),
        limits=Limits(
            loose_objects=table.int("loose_objects_limit", limits.loose_objects, lo=1, hi=2**30),
            loose_kib=table.int("loose_kib_limit", limits.loose_kib, lo=1, hi=2**40),
            max_packs=table.int("max_packs", limits.max_packs, lo=1, hi=100_000),
            loose_refs=table.int("loose_refs_limit", limits.loose_refs, lo=1, hi=2**30),
        ),
    )


def _tls(tls: Table) -> TlsConfig:
    return TlsConfig(cert_file=Path(tls.str("cert_file")), key_file=Path(tls.str("key_file")))


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False  # a host name


def _endpoints(etcd: Table) -> list[str]:
    endpoints = etcd.str_list("endpoints", [DEFAULT_ETCD])
    if not endpoints:
        raise etcd.error("endpoints", "must name at least one etcd endpoint")
    for endpoint in endpoints:
        if not endpoint.startswith(("http://", "https://")):
            raise etcd.error("endpoints", f"must be http:// or https:// URLs, got {endpoint!r}")
    return endpoints


def _prefix(etcd: Table) -> str:
    prefix = etcd.str("prefix", DEFAULT_PREFIX)
    try:
        Keys(prefix)
    except ValueError as exc:
        raise etcd.error("prefix", str(exc)) from None
    return prefix
