"""The edge process: root nursery, listeners, shutdown.

The routing mirror runs beside the listeners and never blocks them: an edge
that starts while etcd is down serves health checks at once and says not
ready on /readyz until its cache has synced.

Signals (edge/lifecycle.py, docs/operations.md): SIGTERM/SIGINT drain every
listener and exit 0; SIGHUP reloads the TLS certificate and SSH host keys.
"""

from __future__ import annotations

import logging
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from edge.api.node_admin import NodeAdmin
from edge.config import EdgeConfig, Listeners
from edge.http.admission import admitted
from edge.http.front import serve_connection
from edge.http.pool import NodePool
from edge.lifecycle import SIGNALS, ServerTls, handle_signals
from edge.proxy_accept import with_client_address
from edge.ssh.aio import open_aio_loop
from edge.ssh.front import SshFront
from edge.ssh.relay import NodeSessions
from edge.state import EdgeState
from plumbing.admin_http import admin_addresses, open_admin_listeners, serve_admin
from plumbing.connlimit import ConnLimiter
from plumbing.listen import address_text, open_trio_listeners
from plumbing.runtime import write_ready_file
from plumbing.tls import SocketTLSStream
from routing.cache import RoutingCache
from routing.etcd import EtcdClient
from routing.etcd_security import EtcdAccessDenied, EtcdSetupError
from routing.mirror import mirror_prefix
from routing.schema import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EdgeRuntime:
    https_url: str | None
    http_url: str | None
    state: EdgeState
    accepting: trio.CancelScope
    ssh_address: str | None = None
    """`host:port` of the SSH front, when `[ssh]` is configured."""
    listening: dict[str, list[str]] = field(default_factory=dict)
    """Every bound `host:port` per front ("https", "http", "ssh", "admin"); the URLs name
    the first."""
    server_tls: ServerTls | None = None
    """The HTTPS front's certificate, reloaded by SIGHUP."""
    metrics_url: str | None = None
    """`http://host:port/metrics` on the admin listener, when `[admin]` is configured."""

    async def reload(self) -> None:
        """SIGHUP: the TLS certificate and key, and the SSH host keys, read again."""
        if self.server_tls is not None:
            await self.server_tls.reload()
        front = self.state.ssh_front
        if isinstance(front, SshFront):
            await front.reload_host_keys()


def tls_context(config: EdgeConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    assert config.cert_file is not None and config.key_file is not None
    ctx.load_cert_chain(config.cert_file, config.key_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # HTTP/2 would break git's chunked pushes through a 1.1-only relay.
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def _addresses(listeners: list[trio.SocketListener]) -> list[str]:
    return [address_text(listener.socket.getsockname()) for listener in listeners]


def _open(listeners: Listeners) -> list[trio.SocketListener]:
    """Bound here, not by trio.open_tcp_listeners: `[::]` is dual-stack (plumbing/listen.py)."""
    opened: list[trio.SocketListener] = []
    try:
        for listener in listeners:
            opened += open_trio_listeners(listener.host, listener.port)
    except BaseException:
        for done in opened:
            done.socket.close()
        raise
    return opened


def _limiter(state: EdgeState, front: str) -> ConnLimiter:
    """One front's connection caps (`[limits] max_connections*`), counted in /stats."""
    config = state.config
    limiter = ConnLimiter(
        config.max_connections,
        config.max_connections_per_address,
        ipv6_prefix=config.address_ipv6_prefix,
        exempt=config.is_trusted_proxy,
    )
    state.connection_limits[front] = limiter
    return limiter


async def _serve_tls(
    state: EdgeState, server_tls: ServerTls, stream: trio.SocketStream, peer: str
) -> None:
    """`peer`: the client's address, the socket's or its PROXY header's (edge/proxy_accept.py)."""
    try:
        # Takes the socket over; like SSLStream(https_compatible=True) it treats
        # a missing close_notify as EOF, which git clients often do. The context
        # is the one current at accept (a SIGHUP replaces it for later ones).
        tls = SocketTLSStream(stream, server_tls.context)
    except OSError as exc:  # the peer reset before we got to it
        log.debug("TLS setup for %s failed: %r", peer, exc)
        await trio.aclose_forcefully(stream)
        return
    try:
        with trio.fail_after(state.config.tls_handshake_timeout):
            await tls.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("TLS handshake with %s failed: %r", peer, exc)
        await trio.aclose_forcefully(tls)
        return
    await serve_connection(state, tls, peer, "https")


async def _serve_plain(state: EdgeState, stream: trio.SocketStream, peer: str) -> None:
    await serve_connection(state, stream, peer, "http")


async def run_edge(
    config: EdgeConfig, *, task_status: trio.TaskStatus[EdgeRuntime] = trio.TASK_STATUS_IGNORED
) -> None:
    keys = Keys(config.etcd_prefix)
    async with EtcdClient(
        config.etcd_endpoints,
        timeout=config.etcd_timeout,
        write_timeout=config.etcd_write_timeout,
        security=config.etcd_security,
    ) as etcd:
        await etcd.check_access(keys.prefix)  # wrong credentials: refuse to start
        cache = RoutingCache(keys, etcd, rtt=config.rtt)
        dial = config.dial_overrides()
        pool = NodePool(
            config.node_connect_timeout,
            config.node_idle_timeout,
            config.max_idle_per_node,
            dial={node: d.http for node, d in dial.items()},
            credential=config.node_admin_secret,
            # TLS pins and node regions, from the watch-fed mirror of etcd.
            nodes=lambda node_id: cache.nodes.get(node_id),
            region=config.region,
            require_tls=config.node_require_tls,
        )
        state = EdgeState(config, etcd, cache, pool, NodeAdmin(pool))
        if config.web is not None:
            # Its own pool: the frontend is no node (no credential, no pin, no dial table).
            web = config.web
            state.web_pool = NodePool(web.connect_timeout, web.idle_timeout, web.max_idle)
        try:
            async with _ssh_front(config, state) as ssh_front, trio.open_nursery() as root:
                root.start_soon(mirror_prefix, etcd, keys.prefix, cache)
                root.start_soon(cache.unsettled.settle_forever, etcd)
                async with trio.open_nursery() as handlers, trio.open_nursery() as accepting:
                    # SIGTERM: every listener stops (they all run in `accepting`).
                    state.drain.on_begin(accepting.cancel_scope.cancel)
                    https_url = http_url = ssh_address = None
                    server_tls: ServerTls | None = None
                    listening: dict[str, list[str]] = {}
                    if config.https:
                        server_tls = ServerTls(partial(tls_context, config))
                        https = _open(config.https)
                        listening["https"] = _addresses(https)
                        https_url = f"https://{listening['https'][0]}"
                        serve_tls = partial(_serve_tls, state, server_tls)
                        accepting.start_soon(
                            partial(
                                trio.serve_listeners,
                                with_client_address(
                                    config.https_proxy_protocol,
                                    "https",
                                    admitted(_limiter(state, "https"), "https", serve_tls),
                                ),
                                https,
                                handler_nursery=handlers,
                            )
                        )
                    if config.http:
                        plain = _open(config.http)
                        serve_plain = partial(_serve_plain, state)
                        listening["http"] = _addresses(plain)
                        http_url = f"http://{listening['http'][0]}"
                        accepting.start_soon(
                            partial(
                                trio.serve_listeners,
                                with_client_address(
                                    config.http_proxy_protocol,
                                    "http",
                                    admitted(_limiter(state, "http"), "http", serve_plain),
                                ),
                                plain,
                                handler_nursery=handlers,
                            )
                        )
                    metrics_url = None
                    if config.observe.admin_listen:
                        admin = open_admin_listeners(config.observe.admin_listen)
                        listening["admin"] = admin_addresses(admin)
                        metrics_url = f"http://{listening['admin'][0]}/metrics"
                        # Not in `accepting`: a draining edge can still be watched.
                        root.start_soon(serve_admin, admin, state.registry, handlers)
                    if ssh_front is not None:
                        # In `accepting`: a drain stops the SSH listener with the others.
                        listening["ssh"] = await accepting.start(ssh_front.serve)
                        ssh_address = listening["ssh"][0]
                        state.drain.on_begin(ssh_front.begin_drain)
                    bound = [f"{front}://{a}" for front, on in listening.items() for a in on]
                    log.info("edge %s listening: %s", config.region, " ".join(bound))
                    task_status.started(
                        EdgeRuntime(
                            https_url,
                            http_url,
                            state,
                            accepting.cancel_scope,
                            ssh_address,
                            listening,
                            server_tls,
                            metrics_url,
                        )
                    )
        finally:
            with trio.move_on_after(5, shield=True):
                await pool.aclose()
                if state.web_pool is not None:
                    await state.web_pool.aclose()


@asynccontextmanager
async def _ssh_front(config: EdgeConfig, state: EdgeState) -> AsyncIterator[SshFront | None]:
    """The SSH front on its trio-asyncio loop, when `[ssh]` is configured.

    Its sessions live in a nursery of their own, outside the listeners', so a
    drain lets them finish; they reach nodes over `state.pool`, the HTTPS
    front's pool. On the way out it disconnects its clients while the loop
    still runs.
    """
    if config.ssh is None:
        yield None
        return
    async with open_aio_loop(), trio.open_nursery() as sessions:
        # The node answers a session's request before git runs: an answer that
        # takes longer than this means a node in trouble (as a connect does).
        nodes = NodeSessions(state.pool, head_timeout=2 * config.node_connect_timeout)
        front = SshFront(
            config.ssh,
            state.cache,
            nodes,
            state.requests,
            sessions,
            region=config.region,
            read_wait=config.replica_read_wait,
            limits=state.limits,
            git_ops=state.git_ops,
            limiter=ConnLimiter(
                config.ssh.max_connections,
                config.ssh.max_connections_per_address,
                ipv6_prefix=config.address_ipv6_prefix,
                exempt=config.is_trusted_proxy,
            ),
        )
        state.ssh_front = front
        try:
            yield front
        finally:
            await front.aclose()
            sessions.cancel_scope.cancel()


async def _main(config: EdgeConfig, ready_file: Path | None) -> None:
    """Serve until drained (edge/lifecycle.py): SIGTERM/SIGINT drain, SIGHUP reloads."""
    with trio.open_signal_receiver(*SIGNALS) as signals:
        async with trio.open_nursery() as nursery:
            runtime: EdgeRuntime = await nursery.start(run_edge, config)
            if ready_file:
                write_ready_file(
                    ready_file,
                    {
                        "https_url": runtime.https_url,
                        "http_url": runtime.http_url,
                        "ssh_address": runtime.ssh_address,
                        "listening": runtime.listening,
                        "metrics_url": runtime.metrics_url,
                        "region": config.region,
                    },
                )
            await handle_signals(
                signals,
                drain=runtime.state.drain,
                requests=runtime.state.requests,
                drain_timeout=config.drain_timeout,
                reload=runtime.reload,
                stop=nursery.cancel_scope,
                nursery=nursery,
            )


def run(config: EdgeConfig, ready_file: Path | None) -> None:
    try:
        trio.run(_main, config, ready_file)
    except* (EtcdAccessDenied, EtcdSetupError) as group:
        # Wrong etcd credentials or TLS files: one clear line each, no traceback.
        for error in _leaves(group):
            print(f"gitedge edge: {error}", file=sys.stderr)
        raise SystemExit(1) from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return leaves
