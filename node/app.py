"""`gitedge node`: the root nursery of a regional git node.

    gitedge node --config node.toml [--ready-file PATH]

Startup: volume identity -> listen (HTTP, or HTTPS with `[tls]`: smart HTTP and
the SSH sessions edges carry over it) -> register in etcd (waiting while etcd is
down) -> ready. SIGTERM/SIGINT: stop accepting, kill running git children (every
request's `finally`), revoke the lease, exit 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import trio

from node.config import ConfigError, NodeConfig, load_node_config
from node.faultpoints import PAUSE_ENV, FaultPointError, FaultPoints
from node.git_http import GitHttpServer
from node.refhook import SECRET_ENV, URL_ENV
from node.registry import Registration, VolumeError, load_or_create_volume
from node.repl_api import ReplApi
from node.repl_ops import ReplicaOps
from node.replication import Replicator
from node.repos import RepoStore
from node.tls import CertFileError, NodeTls, load_node_tls
from plumbing.runtime import setup_logging, write_ready_file
from routing.etcd import EtcdClient, EtcdError
from routing.model import NodeId, Region, VolumeId

log = logging.getLogger(__name__)

STARTUP_CATCH_UP_TIMEOUT = 30.0


@dataclass(frozen=True)
class NodeRuntime:
    """What a started node tells its caller (and writes to the ready file)."""

    node_id: NodeId
    region: Region
    volume_id: VolumeId
    http_url: str
    tls_cert_sha256: str | None = None

    def ready_info(self) -> dict[str, str]:
        return {key: value for key, value in asdict(self).items() if value is not None}


async def run_node(
    config: NodeConfig,
    faults: FaultPoints | None = None,
    *,
    task_status: trio.TaskStatus[NodeRuntime] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; `started(NodeRuntime)` once listening and registered."""
    volume = await trio.to_thread.run_sync(load_or_create_volume, config.volume_dir, config.region)
    store = RepoStore(config.volume_dir)
    await trio.to_thread.run_sync(store.prepare)
    tls: NodeTls | None = None
    if config.tls is not None:
        tls = await trio.to_thread.run_sync(load_node_tls, config.tls, config.node_id)
    listeners = await trio.open_tcp_listeners(config.listen_port, host=config.listen_host)
    http_url = config.advertise_url or _bound_url(listeners[0], "https" if tls else "http")
    async with EtcdClient(list(config.etcd_endpoints)) as etcd:
        replicator = Replicator(
            etcd,
            config.keys,
            store,
            volume.volume_id,
            config.admin_secret,
            snapshot_after=config.snapshot_after,
            faults=faults,
        )
        # The replication hooks run inside receive-pack and call back here.
        store.hook_env = {URL_ENV: http_url, SECRET_ENV: config.admin_secret}
        server = GitHttpServer(
            store,
            config.admin_secret,
            keepalive_timeout=config.keepalive_timeout,
            max_push_size=config.max_push_size,
            repl=ReplApi(
                replicator,
                ReplicaOps(replicator, store, config.keys, volume.volume_id),
                store.root,
            ),
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
                await nursery.start(partial(trio.serve_listeners, handler, listeners))
                log.info("node %s listening on %s", config.node_id, http_url)
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
                with trio.move_on_after(STARTUP_CATCH_UP_TIMEOUT):
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
                    )
                )
        finally:
            # Cancelled (shutdown) or failed: leave routing now, not after the TTL.
            if registration is not None:
                await registration.revoke()


def _bound_url(listener: trio.SocketListener, scheme: str) -> str:
    host, port = listener.socket.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


async def _serve_until_signalled(
    config: NodeConfig, ready_file: Path | None, faults: FaultPoints
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, signals, nursery.cancel_scope)
            runtime: NodeRuntime = await nursery.start(run_node, config, faults)
            if ready_file is not None:
                write_ready_file(ready_file, runtime.ready_info())
            log.info("node %s ready", runtime.node_id)


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        log.info("%s: shutting down", signal.Signals(signum).name)
        scope.cancel()
        return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gitedge node", description="a regional git node")
    parser.add_argument("--config", required=True, type=Path, help="node TOML config")
    parser.add_argument("--ready-file", type=Path, help="JSON written once ready")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_node_config(args.config)
        faults = FaultPoints(os.environ.get(PAUSE_ENV, ""))
    except (ConfigError, FaultPointError) as exc:
        print(f"gitedge node: {exc}", file=sys.stderr)
        return 2
    status = 0
    try:
        trio.run(_serve_until_signalled, config, args.ready_file, faults)
    except* (VolumeError, CertFileError, OSError) as group:
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
