"""`gitedge node`: the root nursery of a regional git node.

    gitedge node --config node.toml [--ready-file PATH]

Startup: volume identity -> listen (HTTP, or HTTPS with `[tls]`: smart HTTP and
the SSH sessions edges carry over it) -> register in etcd (waiting while etcd is
down) -> ready.

SIGTERM/SIGINT drain (plumbing/drain.py): stop accepting, close idle keep-alive
connections, answer the requests in flight with `connection: close` and let them
finish for up to `drain_timeout`, all the while keeping the etcd lease alive
(replicated pushes vote through it); then kill what git children are left (every
request's `finally`), revoke the lease, exit 0. A second signal stops at once.
SIGHUP is logged and ignored (a new certificate takes a restart: edges pin it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import trio

from node.config import ConfigError, NodeConfig, load_node_config
from node.faultpoints import PAUSE_ENV, FaultPointError, FaultPoints
from node.git_http import GitHttpServer
from node.housekeeper import Housekeeper
from node.metrics import GitProcessMetrics, ReplicaMetrics
from node.refhook import SECRET_ENV, URL_ENV
from node.registry import Registration, VolumeError, load_or_create_volume
from node.repl_api import ReplApi
from node.repl_ops import ReplicaOps
from node.replication import Replicator
from node.repos import RepoStore
from node.tls import CertFileError, NodeTls, load_node_tls
from plumbing.admin_http import admin_addresses, open_admin_listeners, serve_admin
from plumbing.drain import Drain, RequestTracker
from plumbing.listen import address_text, open_trio_listeners
from plumbing.runtime import setup_logging, write_ready_file
from routing.etcd import EtcdClient, EtcdError
from routing.etcd_security import EtcdAccessDenied, EtcdSetupError
from routing.model import NodeId, Region, VolumeId

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeRuntime:
    """What a started node tells its caller (and writes to the ready file)."""

    node_id: NodeId
    region: Region
    volume_id: VolumeId
    http_url: str
    tls_cert_sha256: str | None = None
    listening: str | None = None
    """The bound `host:port` (http_url may be an advertise_url naming another)."""
    metrics_url: str | None = None
    """`http://host:port/metrics` on the admin listener, when `[admin]` is configured."""

    def ready_info(self) -> dict[str, str]:
        return {key: value for key, value in asdict(self).items() if value is not None}


async def run_node(
    config: NodeConfig,
    faults: FaultPoints | None = None,
    *,
    drain: Drain | None = None,
    requests: RequestTracker | None = None,
    task_status: trio.TaskStatus[NodeRuntime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `started(NodeRuntime)` once listening and registered.

    `drain`, once begun, stops the listener and closes idle connections; the
    caller waits on `requests` and then cancels (the lease lives until then)."""
    drain = drain or Drain()
    volume = await trio.to_thread.run_sync(load_or_create_volume, config.volume_dir, config.region)
    store = RepoStore(config.volume_dir)
    await trio.to_thread.run_sync(store.prepare)
    tls: NodeTls | None = None
    if config.tls is not None:
        tls = await trio.to_thread.run_sync(load_node_tls, config.tls, config.node_id)
    # `[::]` is dual-stack here as on the edge (plumbing/listen.py).
    listeners = open_trio_listeners(config.listen_host, config.listen_port)
    http_url = config.advertise_url or _bound_url(listeners[0], "https" if tls else "http")
    async with EtcdClient(
        list(config.etcd_endpoints), timeout=config.etcd_timeout, security=config.etcd_security
    ) as etcd:
        await etcd.check_access(config.keys.prefix)  # wrong credentials: refuse to start
        metrics = GitProcessMetrics()
        replicator = Replicator(
            etcd,
            config.keys,
            store,
            volume.volume_id,
            config.admin_secret,
            snapshot_after=config.snapshot_after,
            faults=faults,
            metrics=ReplicaMetrics(metrics.registry, volume.volume_id),
        )
        # The replication hooks run inside receive-pack and call back here.
        store.hook_env = {URL_ENV: http_url, SECRET_ENV: config.admin_secret}
        housekeeper = Housekeeper(store, config.housekeeping, replicator.lock)
        server = GitHttpServer(
            store,
            config.admin_secret,
            housekeeper=housekeeper,
            keepalive_timeout=config.keepalive_timeout,
            max_push_size=config.max_push_size,
            repl=ReplApi(
                replicator,
                ReplicaOps(replicator, store, config.keys, volume.volume_id),
                store.root,
            ),
            drain=drain,
            requests=requests,
            metrics=metrics,
        )
        handler = (
            server.handle_connection
            if tls is None
            else partial(tls.serve, server.handle_connection)
        )
        registration: Registration | None = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(replicator.run)
                await nursery.start(housekeeper.run)
                # Connections live in `nursery`, the listener in `accepting`: a
                # drain stops the one and lets the others finish.
                accepting = trio.CancelScope()
                drain.on_begin(accepting.cancel)
                # Bound already: clients queue in the backlog until the loop runs.
                nursery.start_soon(_accept, accepting, handler, listeners, nursery)
                log.info("node %s listening on %s", config.node_id, http_url)
                metrics_url = None
                if config.observe.admin_listen:
                    admin = open_admin_listeners(config.observe.admin_listen)
                    metrics_url = f"http://{admin_addresses(admin)[0]}/metrics"
                    # Not in `accepting`: a draining node can still be watched.
                    nursery.start_soon(serve_admin, admin, server.metrics.registry, nursery)

                registration = Registration(
                    etcd,
                    config.keys,
                    node_id=config.node_id,
                    volume=volume,
                    volume_dir=config.volume_dir,
                    http_url=http_url,
                    lease_ttl=config.lease_ttl,
                    tls_cert_sha256=tls.cert_sha256 if tls else None,
                )
                # Reconcile before serving (a crash may have left refs behind the
                # consensus this replica already published), then follow the watch.
                with trio.move_on_after(config.startup_catch_up_timeout):
                    try:
                        await replicator.catch_up_all(own_too=True)
                    except EtcdError as exc:
                        log.warning("startup catch-up skipped: %s", exc)
                nursery.start_soon(replicator.follow)
                await nursery.start(registration.run)
                task_status.started(
                    NodeRuntime(
                        config.node_id,
                        config.region,
                        volume.volume_id,
                        http_url,
                        tls_cert_sha256=tls.cert_sha256 if tls else None,
                        listening=address_text(listeners[0].socket.getsockname()),
                        metrics_url=metrics_url,
                    )
                )
        finally:
            # Cancelled (shutdown) or failed: leave routing now, not after the TTL.
            if registration is not None:
                await registration.revoke()


async def _accept(
    scope: trio.CancelScope,
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    listeners: list[trio.SocketListener],
    handlers: trio.Nursery,
) -> None:
    with scope:
        await trio.serve_listeners(handler, listeners, handler_nursery=handlers)


def _bound_url(listener: trio.SocketListener, scheme: str) -> str:
    return f"{scheme}://{address_text(listener.socket.getsockname())}"


async def _serve_until_signalled(
    config: NodeConfig, ready_file: Path | None, faults: FaultPoints
) -> None:
    drain, requests = Drain(), RequestTracker()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _drain_on_signal, signals, drain, requests, config.drain_timeout, nursery
            )
            if faults.active:
                await nursery.start(faults.release_on_signal)
            runtime: NodeRuntime = await nursery.start(
                partial(run_node, config, faults, drain=drain, requests=requests)
            )
            if ready_file is not None:
                write_ready_file(ready_file, runtime.ready_info())
            log.info("node %s ready", runtime.node_id)


async def _drain_on_signal(
    signals: AsyncIterator[int],
    drain: Drain,
    requests: RequestTracker,
    timeout: float,
    nursery: trio.Nursery,
) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if signum == signal.SIGHUP:
            # Not the default (exit): edges pin the node's certificate from its
            # registration, so a new one takes a restart, which re-registers it.
            log.info("SIGHUP ignored: restart the node to change its config or certificate")
            continue
        if drain.begun:
            log.info("%s while draining: stopping now", name)
            break
        log.info(
            "%s: draining, %d request(s) in flight, for up to %.0fs",
            name,
            requests.active,
            timeout,
        )
        drain.begin()
        nursery.start_soon(_finish_drain, requests, timeout, nursery.cancel_scope)
    nursery.cancel_scope.cancel()


async def _finish_drain(requests: RequestTracker, timeout: float, stop: trio.CancelScope) -> None:
    with trio.move_on_after(timeout) as waited:
        await requests.wait_idle()
    if waited.cancelled_caught:
        log.warning("drain: %d request(s) still running after %.0fs", requests.active, timeout)
    else:
        log.info("drain: no request in flight; leaving etcd and stopping")
    stop.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gitedge node", description="a regional git node")
    parser.add_argument("--config", required=True, type=Path, help="node TOML config")
    parser.add_argument("--ready-file", type=Path, help="JSON written once ready")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_node_config(args.config)
        setup_logging(args.log_level, config.observe.log_format)
        faults = FaultPoints(os.environ.get(PAUSE_ENV, ""))
    except (ConfigError, FaultPointError) as exc:
        print(f"gitedge node: {exc}", file=sys.stderr)
        return 2
    status = 0
    try:
        trio.run(_serve_until_signalled, config, args.ready_file, faults)
    except* (VolumeError, CertFileError, OSError, EtcdAccessDenied, EtcdSetupError) as group:
        # A volume of another region, a port in use, an unreadable certificate:
        # say so in one line, no traceback.
        for error in _leaves(group):
            print(f"gitedge node: {error}", file=sys.stderr)
        status = 1
    return status


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return leaves
