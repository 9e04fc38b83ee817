"""The edge's configuration: TOML in, a frozen EdgeConfig out.

See configs/edge.dev.toml for every key with its default and meaning.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

from plumbing.maxstartups import MaxStartups, MaxStartupsError
from plumbing.observe import Observability, load_observability
from plumbing.sshkeys import KeyFileError, load_or_create_key
from plumbing.tomlconf import ConfigError, Table
from routing.etcd_security import EtcdSecurity, load_etcd_security
from routing.model import InvalidRegion, Region, parse_region
from routing.regions import RttTable, RttTableError, parse_rtt_table
from routing.schema import DEFAULT_PREFIX

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Listener:
    """One address of a `listen` key (which may list several).

    `::` is dual-stack: one socket that takes IPv4 clients too (plumbing/listen.py).
    """

    host: str
    port: int


Listeners = tuple[Listener, ...]

LOOPBACK: tuple[Network, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)


class ProxyMode(StrEnum):
    """`proxy_protocol` of a listener (docs/proxy-protocol.md).

    off: no header is read (one arriving is the client's bytes, and fails TLS, SSH
    or HTTP); optional: a header is used when a trusted peer sends one; required:
    every connection must start with one, from a trusted peer.
    """

    OFF = "off"
    OPTIONAL = "optional"
    REQUIRED = "required"


@dataclass(frozen=True)
class ProxyProtocol:
    """A listener's PROXY protocol policy: `proxy_protocol`, `_from` and `_timeout`."""

    mode: ProxyMode = ProxyMode.OFF
    trusted: tuple[Network, ...] = LOOPBACK
    """Peers whose header is believed (the load balancers); any other peer that
    sends one is disconnected."""
    timeout: float = 5.0
    """How long the header may take to arrive (under `optional`: the first bytes)."""

    def trusts(self, peer_ip: str) -> bool:
        return _in_networks(peer_ip, self.trusted)


# DESIGN "Known pitfalls": asyncssh's default 2 MiB window caps a 100 ms-RTT
# transfer at ~10 MB/s; 16 MiB gave 61 MB/s on the same path.
DEFAULT_SSH_WINDOW = 16 * 2**20
# Keys of [ssh] that configured the edge's SSH connections to nodes, which are
# gone (sessions ride the pooled HTTP connections): refused, naming the key, so
# an operator does not keep tuning something that does nothing.
REMOVED_SSH_KEYS = {
    "node_client_key_file": "nodes no longer run SSH; sessions reach them over HTTP",
    "near_window": "there are no edge -> node SSH channels any more; TCP sizes that hop",
}


# OpenSSH's default, 10:30:100, was too low for GitLab.com's git fleet, where CI
# jobs connect on the hour (they ran 250, then 300: gl-infra/production#1546).
DEFAULT_MAX_STARTUPS = MaxStartups(100, 30, 200)


# `[ssh] ciphers` may name only these: asyncssh's default ciphers (a test checks
# they still are). No CBC among them, which is what lets the edge skip the empty
# SSH_MSG_IGNORE before each packet (edge/ssh/asyncssh_gap.py).
SSH_CIPHERS = (
    "chacha20-poly1305@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)


@dataclass(frozen=True)
class SshFrontConfig:
    """The client-facing SSH listener (`[ssh]`); absent: no SSH front."""

    listen: Listeners
    host_key_files: tuple[Path, ...]
    """Private host keys offered to clients; made (ed25519, 0600) when missing."""
    login_grace_time: float = 60.0
    idle_timeout: float = 600.0
    """A connection that moves no git data for this long is closed."""
    max_sessions: int = 10
    """Concurrent sessions (channels) per client connection, like OpenSSH's MaxSessions."""
    window: int = DEFAULT_SSH_WINDOW
    """The receive window of client channels (what a push may have in flight)."""
    ciphers: tuple[str, ...] = ()
    """The ciphers offered to clients, in order; empty: asyncssh's defaults (SSH_CIPHERS)."""
    max_connections: int = 4096
    """Client connections open at once on the SSH front; more are closed at once."""
    max_connections_per_address: int = 64
    """The same, per client address (an IPv6 /64; trusted proxies exempt)."""
    max_startups: MaxStartups = DEFAULT_MAX_STARTUPS
    """Unauthenticated connections, `start:rate:full` as OpenSSH's MaxStartups."""
    per_write_timeout: float = 30.0
    """A session whose client takes no bytes for this long is cut (Gitea's
    SSH_PER_WRITE_TIMEOUT), and with it the node's git."""
    proxy_protocol: ProxyProtocol = ProxyProtocol()


class NodeTlsPolicy(StrEnum):
    """`[nodes] require_tls`: which nodes git may reach only over TLS.

    A node serves TLS when its URL in etcd is https (the edge then pins its
    certificate); this says when the edge refuses a node whose URL is plain
    http (503). A region is taken to be one private network; between regions
    the path is assumed to leave it, hence the default.
    """

    NEVER = "never"
    OTHER_REGIONS = "other-regions"
    ALWAYS = "always"

    def requires_tls(self, edge_region: str, node_region: str) -> bool:
        if self is NodeTlsPolicy.OTHER_REGIONS:
            return node_region != edge_region
        return self is NodeTlsPolicy.ALWAYS


@dataclass(frozen=True)
class NodeDial:
    """Where the edge dials one node instead of the address it advertises in etcd.

    `[nodes.dial]` in the config. For networks where the advertised address is
    not the route from this edge (the cross-region benchmark puts a latency
    relay per region pair in front of each node). HTTPS requests and SSH
    sessions both use it: both ride the same pooled HTTP connections. TLS
    certificate pins are still checked against the node's record in etcd.
    """

    http: tuple[str, int]


@dataclass(frozen=True)
class SlotRule:
    """At most `limit` at once (0: no limit), then at most `queue` waiting."""

    limit: int
    queue: int


@dataclass(frozen=True)
class RateRule:
    """A token bucket: `per_minute` refill (0: no limit), `burst` at most at once."""

    per_minute: int
    burst: int


@dataclass(frozen=True)
class OpLimits:
    """`[limits]` on git operations, failed authentications and API writes (edge/limits.py).

    Anchors: Gitaly's concurrency limiter (`max_per_repo`, `max_queue_size`,
    `max_queue_wait`) and GitLab's 600 SSH git operations per minute per user.
    """

    per_user: SlotRule = SlotRule(10, 20)
    per_repo: SlotRule = SlotRule(20, 40)
    per_address: SlotRule = SlotRule(10, 10)
    """Anonymous operations, per client address."""
    per_node: SlotRule = SlotRule(64, 128)
    node_user_share: float = 0.5
    """The most of a node's slots (and queue) one user or anonymous address holds."""
    queue_wait: float = 10.0
    """The longest an operation waits in the queues (all of them) before a refusal."""
    git_rate_per_user: RateRule = RateRule(600, 600)
    git_rate_per_address: RateRule = RateRule(1200, 1200)
    auth_fail_rate_per_address: RateRule = RateRule(10, 30)
    api_write_rate: RateRule = RateRule(60, 60)
    """Per user and per client address; the admin token's writes are not counted."""
    tracked_keys: int = 65536
    """Most users or addresses each rate table remembers (least recently used dropped)."""


def _op_limits(limits: Table) -> OpLimits:
    d = OpLimits()

    def slots(name: str, rule: SlotRule) -> SlotRule:
        return SlotRule(
            limits.int(f"git_{name}", rule.limit, 0, 100_000),
            limits.int(f"git_{name}_queue", rule.queue, 0, 100_000),
        )

    def rate(name: str, rule: RateRule) -> RateRule:
        """`<what>_rate[_per_address]` (per minute) and `<what>_burst[_per_address]`."""
        return RateRule(
            limits.int(name, rule.per_minute, 0, 10_000_000),
            limits.int(name.replace("_rate", "_burst"), rule.burst, 1, 10_000_000),
        )

    return OpLimits(
        per_user=slots("per_user", d.per_user),
        per_repo=slots("per_repo", d.per_repo),
        per_address=slots("per_address", d.per_address),
        per_node=slots("per_node", d.per_node),
        node_user_share=limits.float("git_node_user_share", d.node_user_share, 0.01, 1.0),
        queue_wait=limits.float("git_queue_wait", d.queue_wait, 0, 600),
        git_rate_per_user=rate("git_rate_per_user", d.git_rate_per_user),
        git_rate_per_address=rate("git_rate_per_address", d.git_rate_per_address),
        auth_fail_rate_per_address=rate("auth_fail_rate_per_address", d.auth_fail_rate_per_address),
        api_write_rate=rate("api_write_rate", d.api_write_rate),
        tracked_keys=limits.int("tracked_keys", d.tracked_keys, 16, 10_000_000),
    )


@dataclass(frozen=True)
class WebConfig:
    """`[web]`: the web frontend behind the edge (docs/web.md).

    Every request that is neither git nor the edge's own (`/api`, `/_gitedge`,
    `/healthz`, `/readyz`) goes to the upstream of the edge's own region.
    """

    upstream: str
    """The default upstream, `http://host:port`."""
    regions: tuple[tuple[Region, str], ...] = ()
    """`[web.upstreams]`: region -> upstream, for regions whose frontend is elsewhere."""
    connect_timeout: float = 3.0
    idle_timeout: float = 30.0
    """Pooled keep-alive connections to an upstream are closed after this."""
    response_timeout: float = 120.0
    """Longest wait for the response head, and longest silence inside its body."""
    total_timeout: float = 0.0
    """A request is ended this long after its head arrived, however busy (0: never).
    None by default: a large download may rightly take hours, and a stalled one is
    caught by `response_timeout`; set it to bound server-sent events and long polls."""
    max_idle: int = 32
    upgrade_idle_timeout: float = 300.0
    """An upgraded connection (WebSocket) with no bytes either way this long is closed."""
    upgrade_total_timeout: float = 3600.0
    """An upgraded connection is closed this long after its 101, however busy (0: never).
    An hour by default: WebSocket clients (LiveView, graphql-ws) reconnect, and the
    reconnect re-checks the `X-Gitedge-User` credentials and may land on another edge."""
    secret: str = ""
    """Sent as `x-gitedge-secret` on every request upstream ("" : none sent); what a
    frontend checks before it trusts the edge's `x-gitedge-*` headers."""
    replay_max_body: int = 2**20
    """Request bodies up to this size are read before the first send, so that a
    `Gitedge-Replay` answer can be replayed with them; a larger body streams, and
    a replay asked for it is answered 413 (docs/web.md)."""

    def upstream_for(self, region: str) -> str:
        return dict(self.regions).get(Region(region), self.upstream)


def _web_upstream(table: Table, key: str) -> str:
    raw = table.str(key)
    parts = urlsplit(raw)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise table.error(key, f"must be http://host[:port] (no path), got {raw!r}")
    if parts.query or parts.fragment or parts.username:
        raise table.error(key, f"must be http://host[:port] (no path), got {raw!r}")
    return raw.rstrip("/")


def _web(web: Table) -> WebConfig:
    regions: list[tuple[Region, str]] = []
    if web.has("upstreams"):
        upstreams = web.table("upstreams")
        for name in sorted(upstreams.entries()):
            try:
                region = parse_region(name)
            except InvalidRegion as exc:
                raise upstreams.error(name, str(exc)) from None
            regions.append((region, _web_upstream(upstreams, name)))
    has_secret = web.has("secret") or web.has("secret_file")
    config = WebConfig(
        upstream=_web_upstream(web, "upstream"),
        regions=tuple(regions),
        connect_timeout=web.float("connect_timeout", 3.0, 0.1, 60),
        idle_timeout=web.float("idle_timeout", 30.0, 1, 3600),
        response_timeout=web.float("response_timeout", 120.0, 1, 86400),
        total_timeout=web.float("total_timeout", 0.0, 0, 7 * 86400),
        max_idle=web.int("max_idle", 32, 0, 10000),
        upgrade_idle_timeout=web.float("upgrade_idle_timeout", 300.0, 1, 86400),
        upgrade_total_timeout=web.float("upgrade_total_timeout", 3600.0, 0, 7 * 86400),
        secret=web.secret("secret") if has_secret else "",
        replay_max_body=web.int("replay_max_body", 2**20, 0, 2**30),
    )
    web.check_unknown()
    return config


@dataclass(frozen=True)
class EdgeConfig:
    region: Region
    etcd_endpoints: tuple[str, ...]
    etcd_prefix: str = DEFAULT_PREFIX
    https: Listeners = ()
    cert_file: Path | None = None
    key_file: Path | None = None
    http: Listeners = ()
    https_proxy_protocol: ProxyProtocol = ProxyProtocol()
    http_proxy_protocol: ProxyProtocol = ProxyProtocol()
    region_header: str = "Fly-Region"
    trusted_proxies: tuple[Network, ...] = (
        ipaddress.ip_network("127.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    fallback_region: Region | None = None
    default_replicas: int = 1
    """`[edge] default_replicas`: the replication factor of a create that names none."""
    replica_read_wait: float = 3.0
    """`[edge] replica_read_wait`: how long a read of a replicated repository with no
    replica in sync waits for one to catch up before it fails (503 / SSH exit 75)."""
    rtt: RttTable = field(default_factory=RttTable)
    """`[regions.rtt]`: round trips between regions, which rank in-sync replicas for reads."""
    node_admin_secret: str = ""
    node_connect_timeout: float = 3.0
    node_idle_timeout: float = 30.0
    node_response_timeout: float = 300.0
    max_idle_per_node: int = 32
    header_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    body_idle_timeout: float = 300.0
    tls_handshake_timeout: float = 10.0
    drain_timeout: float = 60.0
    max_connections: int = 4096
    """`[limits]`: client connections open at once on each of the HTTPS and HTTP fronts."""
    max_connections_per_address: int = 256
    """`[limits]`: the same, per client address; trusted proxies are exempt (they
    bring many clients through one address)."""
    address_ipv6_prefix: int = 64
    """`[limits]`: IPv6 clients are counted per prefix of this length (HTTP and SSH)."""
    per_write_timeout: float = 30.0
    """`[limits]`: a write to a client may take this long per 64 KiB it carries (at
    least this long); a client slower than that is cut, and so is the node request
    behind it (edge/http/stream.py)."""
    body_min_rate: float = 1024.0
    """`[limits]`: a request body must arrive at this many bytes/s on average (0: off)..."""
    body_rate_grace: float = 30.0
    """...falling behind by at most this many seconds (edge/proto/pace.py)."""
    admin_token: str = ""
    """Bearer token for the admin API (users, tokens); empty: admin API off."""
    ssh: SshFrontConfig | None = None
    node_dial: tuple[tuple[str, NodeDial], ...] = ()
    """`[nodes.dial]`: (node id, override) pairs; see NodeDial."""
    node_require_tls: NodeTlsPolicy = NodeTlsPolicy.OTHER_REGIONS
    etcd_security: EtcdSecurity = field(default_factory=EtcdSecurity)
    """`[etcd]` ca_file, cert_file, key_file, username, password_file (etcd_security.py)."""
    etcd_timeout: float = 5.0
    """`[etcd] timeout`: seconds per request and endpoint."""
    etcd_write_timeout: float = 1.5
    """`[etcd] write_timeout`: a create (any etcd write) not acknowledged by then, over
    all endpoints, answers 503; its outcome is unknown (a majority of etcd is down)."""
    ops: OpLimits = OpLimits()
    """`[limits]` on git operations, failed authentications and API writes."""
    observe: Observability = field(default_factory=Observability)
    """`[admin] listen` (`/metrics`) and `[log] format` (plumbing/observe.py)."""
    web: WebConfig | None = None
    """`[web]`; None: requests that are neither git nor the edge's own get 404."""

    def dial_overrides(self) -> dict[str, NodeDial]:
        return dict(self.node_dial)

    def is_trusted_proxy(self, peer_ip: str) -> bool:
        return _in_networks(peer_ip, self.trusted_proxies)


def _in_networks(peer_ip: str, networks: tuple[Network, ...]) -> bool:
    try:
        addr = ipaddress.ip_address(peer_ip)
    except ValueError:
        return False
    return any(addr in net for net in networks)


def load_edge_config(path: Path) -> EdgeConfig:
    root = Table.load(path)
    edge, etcd, nodes = root.table("edge"), root.table("etcd"), root.table("nodes")
    limits, https, http = root.table("limits"), root.table("https"), root.table("http")
    ssh, regions = root.table("ssh"), root.table("regions")

    def region(table: Table, key: str, default: str | None = None) -> Region:
        try:
            return parse_region(table.str(key, default))
        except InvalidRegion as exc:
            raise table.error(key, str(exc)) from None

    https_listener: Listeners = ()
    cert = key = None
    if root.has("https"):
        https_listener = _listeners(https)
        cert, key = Path(https.str("cert_file")), Path(https.str("key_file"))
        for name, file in (("cert_file", cert), ("key_file", key)):
            if not file.is_file():
                raise https.error(name, f"no such file {file}")
    http_listener: Listeners = ()
    if root.has("http"):
        http_listener = _listeners(http)
    if not https_listener and not http_listener:
        raise root.error("https", "configure [https] or [http] (or both)")

    fallback = region(edge, "fallback_region") if edge.has("fallback_region") else None
    header = edge.str("region_header", "Fly-Region")
    if not re.fullmatch(r"[A-Za-z0-9-]+", header):
        raise edge.error("region_header", f"not a header name: {header!r}")
    config = EdgeConfig(
        region=region(edge, "region"),
        etcd_endpoints=tuple(_etcd_endpoints(etcd)),
        etcd_prefix=etcd.str("prefix", DEFAULT_PREFIX),
        https=https_listener,
        cert_file=cert,
        key_file=key,
        http=http_listener,
        https_proxy_protocol=_proxy_protocol(https) if https_listener else ProxyProtocol(),
        http_proxy_protocol=_proxy_protocol(http) if http_listener else ProxyProtocol(),
        region_header=header,
        trusted_proxies=edge.networks("trusted_proxies", ["127.0.0.0/8", "::1/128"]),
        fallback_region=fallback,
        default_replicas=edge.int("default_replicas", 1, 1, 9),
        replica_read_wait=edge.float("replica_read_wait", 3.0, 0, 60),
        rtt=_rtt(regions),
        node_admin_secret=nodes.secret("admin_secret"),
        node_connect_timeout=nodes.float("connect_timeout", 3.0, 0.1, 60),
        node_idle_timeout=nodes.float("idle_timeout", 30.0, 1, 3600),
        node_response_timeout=nodes.float("response_timeout", 300.0, 1, 86400),
        max_idle_per_node=nodes.int("max_idle_per_node", 32, 0, 10000),
        header_timeout=limits.float("header_timeout", 10.0, 0.1, 600),
        keepalive_timeout=limits.float("keepalive_timeout", 60.0, 0.1, 3600),
        body_idle_timeout=limits.float("body_idle_timeout", 300.0, 1, 86400),
        tls_handshake_timeout=limits.float("tls_handshake_timeout", 10.0, 0.1, 600),
        drain_timeout=limits.float("drain_timeout", 60.0, 0, 3600),
        max_connections=limits.int("max_connections", 4096, 1, 1_000_000),
        max_connections_per_address=limits.int("max_connections_per_address", 256, 1, 1_000_000),
        address_ipv6_prefix=limits.int("address_ipv6_prefix", 64, 32, 128),
        per_write_timeout=limits.float("per_write_timeout", 30.0, 0.1, 3600),
        body_min_rate=limits.float("body_min_rate", 1024.0, 0, 1e9),
        body_rate_grace=limits.float("body_rate_grace", 30.0, 0.1, 3600),
        ops=_op_limits(limits),
        admin_token=(
            edge.secret("admin_token")
            if edge.has("admin_token") or edge.has("admin_token_file")
            else ""
        ),
        ssh=_ssh(ssh) if root.has("ssh") else None,
        node_dial=_node_dial(nodes.table("dial")) if nodes.has("dial") else (),
        node_require_tls=_tls_policy(nodes),
        etcd_security=load_etcd_security(etcd, _etcd_endpoints(etcd)),
        etcd_timeout=etcd.float("timeout", 5.0, 0.1, 120),
        etcd_write_timeout=etcd.float("write_timeout", 1.5, 0.1, 120),
        observe=load_observability(root),
        web=_web(root.table("web")) if root.has("web") else None,
    )
    if not config.etcd_prefix.startswith("/") or not config.etcd_prefix.endswith("/"):
        raise etcd.error("prefix", "must start and end with '/'")
    for table in (root, edge, etcd, nodes, limits, https, http, ssh, regions):
        table.check_unknown()
    return config


def _etcd_endpoints(etcd: Table) -> list[str]:
    endpoints = etcd.str_list("endpoints")
    if not endpoints:
        raise etcd.error("endpoints", "must name at least one etcd endpoint")
    for endpoint in endpoints:
        if not endpoint.startswith(("http://", "https://")):
            raise etcd.error("endpoints", f"must be http:// or https:// URLs, got {endpoint!r}")
    return endpoints


def _rtt(regions: Table) -> RttTable:
    """`[regions.rtt]`: `fra.lax = 140` (ms), each link once (routing/regions.py)."""
    if not regions.has("rtt"):
        return RttTable()
    try:
        return parse_rtt_table(regions.table("rtt").entries())
    except RttTableError as exc:
        raise regions.error("rtt", str(exc)) from None


def _proxy_protocol(table: Table) -> ProxyProtocol:
    """`proxy_protocol`, `proxy_protocol_from`, `proxy_protocol_timeout` of one listener."""
    raw = table.str("proxy_protocol", ProxyMode.OFF.value)
    try:
        mode = ProxyMode(raw)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in ProxyMode)
        raise table.error("proxy_protocol", f"must be one of {choices}, got {raw!r}") from None
    trusted = table.networks("proxy_protocol_from", [str(net) for net in LOOPBACK])
    if mode is not ProxyMode.OFF and not trusted:
        raise table.error("proxy_protocol_from", "needs at least one network (the balancers)")
    return ProxyProtocol(mode, trusted, table.float("proxy_protocol_timeout", 5.0, 0.1, 60))


def _listeners(table: Table) -> Listeners:
    return tuple(Listener(host, port) for host, port in table.host_ports("listen"))


_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _tls_policy(nodes: Table) -> NodeTlsPolicy:
    raw = nodes.str("require_tls", NodeTlsPolicy.OTHER_REGIONS.value)
    try:
        return NodeTlsPolicy(raw)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in NodeTlsPolicy)
        raise nodes.error("require_tls", f"must be one of {choices}, got {raw!r}") from None


def _node_dial(dial: Table) -> tuple[tuple[str, NodeDial], ...]:
    """`[nodes.dial]`: `<node-id> = { http = "host:port" }`."""
    overrides = []
    # Table has no public key listing (plumbing/tomlconf.py); the keys are the data here.
    for node_id in list(dial._data):
        if not _NODE_ID.fullmatch(node_id):
            raise dial.error(node_id, "not a node id")
        entry = dial.table(node_id)
        if entry.has("ssh"):
            # Nodes have no SSH listener any more; SSH sessions go where `http` says.
            raise entry.error("ssh", "removed: SSH sessions reach nodes over http; delete it")
        http = entry.host_port("http") if entry.has("http") else None
        entry.check_unknown()
        if http is None:
            raise dial.error(node_id, "give http = 'host:port'")
        if http[1] == 0:
            raise entry.error("http", "port 0 cannot be dialled")
        overrides.append((node_id, NodeDial(http)))
    return tuple(overrides)


def _ssh(ssh: Table) -> SshFrontConfig:
    for key, why in REMOVED_SSH_KEYS.items():
        if ssh.has(key):
            raise ssh.error(key, f"removed: {why}; delete it")
    listen = _listeners(ssh)
    host_keys = tuple(Path(p) for p in ssh.str_list("host_key_files"))
    if not host_keys:
        raise ssh.error("host_key_files", "needs at least one key file")
    # Made here, on first start, so that a restart keeps them: clients pin the
    # host key. Read again by the SSH front.
    for path in host_keys:
        try:
            load_or_create_key(path)
        except KeyFileError as exc:
            raise ssh.error("host_key_files", str(exc)) from None
    return SshFrontConfig(
        listen=listen,
        host_key_files=host_keys,
        login_grace_time=ssh.float("login_grace_time", 60.0, 1, 3600),
        idle_timeout=ssh.float("idle_timeout", 600.0, 1, 86400),
        max_sessions=ssh.int("max_sessions", 10, 1, 1000),
        # Below 64 KiB a window costs a round trip per packet; above 1 GiB is a typo.
        window=ssh.int("window", DEFAULT_SSH_WINDOW, 64 * 1024, 2**30),
        ciphers=_ciphers(ssh),
        max_connections=ssh.int("max_connections", 4096, 1, 1_000_000),
        max_connections_per_address=ssh.int("max_connections_per_address", 64, 1, 1_000_000),
        max_startups=_max_startups(ssh),
        per_write_timeout=ssh.float("per_write_timeout", 30.0, 0.1, 3600),
        proxy_protocol=_proxy_protocol(ssh),
    )


def _max_startups(ssh: Table) -> MaxStartups:
    raw = ssh.str("max_startups", str(DEFAULT_MAX_STARTUPS))
    try:
        return MaxStartups.parse(raw)
    except MaxStartupsError as exc:
        raise ssh.error("max_startups", str(exc)) from None


def _ciphers(ssh: Table) -> tuple[str, ...]:
    if not ssh.has("ciphers"):
        return ()
    ciphers = tuple(ssh.str_list("ciphers"))
    if not ciphers:
        raise ssh.error("ciphers", "needs at least one cipher (or leave it out for the defaults)")
    for name in ciphers:
        if name not in SSH_CIPHERS:
            raise ssh.error("ciphers", f"{name!r} is not one of {', '.join(SSH_CIPHERS)}")
    if len(set(ciphers)) != len(ciphers):
        raise ssh.error("ciphers", "names a cipher twice")
    return ciphers


__all__ = [
    "ConfigError",
    "EdgeConfig",
    "Listener",
    "Listeners",
    "NodeDial",
    "NodeTlsPolicy",
    "OpLimits",
    "ProxyMode",
    "ProxyProtocol",
    "RateRule",
    "SlotRule",
    "SshFrontConfig",
    "WebConfig",
    "load_edge_config",
]
