"""The emulated wide-area network of the regions benchmark: its config, its
relays (bench/relay.py, run in one background trio thread) and the nginx TLS
baseline in front of each node.

Blocking API on purpose: the harness drives git from a plain main thread.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio

from bench.common import ensure_debian_package
from bench.relay import Address, Link, serve_relay
from devnet.procs import ManagedProcess, free_port, spawn

T = TypeVar("T")
NGINX = Path("/usr/sbin/nginx")


@dataclass(frozen=True)
class RegionsConfig:
    regions: tuple[str, ...]
    etcd_region: str
    client_edge_ms: float
    same_region_ms: float
    one_way_ms: dict[frozenset[str], float]
    samples: int
    small_mb: float
    big_mb: float
    cold: bool
    delay_scale: float = 1.0
    token_upfront: bool = True
    """HTTPS through the edge: send the token with the first request (git's
    http.extraHeader, as CI checkouts do) instead of waiting for a 401 challenge."""

    def wan_ms(self, a: str, b: str) -> float:
        """One-way delay between the servers of regions a and b."""
        ms = self.same_region_ms if a == b else self.one_way_ms[frozenset((a, b))]
        return ms * self.delay_scale

    def client_ms(self, client: str, server: str) -> float:
        """One-way delay from a client in `client` to any server in `server`."""
        return self.client_edge_ms * self.delay_scale + (
            self.wan_ms(client, server) if client != server else 0.0
        )

    def rtt_ms(self, client: str, home: str) -> float:
        """Round trip from a client to its repo's home, edge or not (same total delay)."""
        local = self.client_edge_ms * self.delay_scale
        return 2 * (local + self.wan_ms(client, home))

    def as_json(self) -> dict[str, Any]:
        return {
            "regions": list(self.regions),
            "etcd_region": self.etcd_region,
            "client_edge_ms": self.client_edge_ms,
            "same_region_ms": self.same_region_ms,
            "one_way_ms": {"-".join(sorted(k)): v for k, v in self.one_way_ms.items()},
            "delay_scale": self.delay_scale,
            "samples": self.samples,
            "small_mb": self.small_mb,
            "big_mb": self.big_mb,
            "cold": self.cold,
            "token_upfront": self.token_upfront,
        }


def load_regions_config(path: Path, quick: bool) -> RegionsConfig:
    """configs/regions.toml; with `quick`, its [quick] table overrides [run]."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SystemExit(f"{path}: {exc}") from None

    def need(table: dict[str, Any], key: str, where: str) -> Any:
        if key not in table:
            raise SystemExit(f"{path}: [{where}] {key}: is required")
        return table[key]

    regions = data.get("regions", {})
    run = dict(data.get("run", {}))
    if quick:
        run.update(data.get("quick", {}))
    names = tuple(str(n) for n in need(regions, "names", "regions"))
    pairs: dict[frozenset[str], float] = {}
    for key, ms in need(regions, "one_way_ms", "regions").items():
        a, sep, b = str(key).partition("-")
        if not sep or a not in names or b not in names or a == b:
            raise SystemExit(f"{path}: [regions.one_way_ms] {key}: not 'region-region'")
        pairs[frozenset((a, b))] = float(ms)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if frozenset((a, b)) not in pairs:
                raise SystemExit(f"{path}: [regions.one_way_ms] {a}-{b}: is required")
    etcd_region = str(regions.get("etcd_region", names[0]))
    if etcd_region not in names:
        raise SystemExit(f"{path}: [regions] etcd_region: {etcd_region!r} is not in names")
    return RegionsConfig(
        regions=names,
        etcd_region=etcd_region,
        client_edge_ms=float(regions.get("client_edge_ms", 5.0)),
        same_region_ms=float(regions.get("same_region_ms", 0.5)),
        one_way_ms=pairs,
        samples=int(run.get("samples", 3)),
        small_mb=float(run.get("small_mb", 1.0)),
        big_mb=float(run.get("big_mb", 100.0)),
        cold=bool(run.get("cold", True)),
        delay_scale=float(run.get("delay_scale", 1.0)),
        token_upfront=bool(run.get("token_upfront", True)),
    )


# -- relays in a background trio thread ----------------------------------------------


@dataclass
class _Running:
    address: Address
    scope: trio.CancelScope


@dataclass
class RelayHost:
    """All relays of one run, in one thread running its own `trio.run`.

    Each relay is named; `restart` points a relay at a new target while it keeps
    its listening port (clients and known_hosts entries stay valid).
    """

    relays: dict[str, _Running] = field(default_factory=dict)
    _token: trio.lowlevel.TrioToken | None = None
    _nursery: trio.Nursery | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _error: BaseException | None = None

    def __enter__(self) -> RelayHost:
        self._thread = threading.Thread(target=self._main, name="relays", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._token is None:
            raise RuntimeError(f"relay thread did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _main(self) -> None:
        async def main() -> None:
            async with trio.open_nursery() as nursery:
                self._token, self._nursery = trio.lowlevel.current_trio_token(), nursery
                self._ready.set()
                await trio.sleep_forever()

        try:
            trio.run(main)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        return trio.from_thread.run(fn, trio_token=self._token)

    def start(self, name: str, target: Address, one_way_s: float, port: int = 0) -> Address:
        """A relay to `target` delaying each direction by `one_way_s`; its address."""
        if name in self.relays:
            raise ValueError(f"duplicate relay {name!r}")
        link = Link(one_way_s)

        async def run_one(*, task_status: trio.TaskStatus[_Running]) -> None:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    address: Address = await inner.start(
                        serve_relay, ("127.0.0.1", port), target, link, link
                    )
                    task_status.started(_Running(address, scope))

        async def start() -> _Running:
            assert self._nursery is not None
            running: _Running = await self._nursery.start(run_one)
            return running

        self.relays[name] = self._call(start)
        return self.relays[name].address

    def restart(self, name: str, target: Address, one_way_s: float) -> Address:
        """Stop relay `name` and start it again on the same port towards `target`."""
        old = self.relays.pop(name)

        async def stop() -> None:
            old.scope.cancel()
            await trio.sleep(0)

        self._call(stop)
        # The port was just released; SO_REUSEADDR (trio's default) lets us rebind.
        return self.start(name, target, one_way_s, port=old.address[1])

    def close(self) -> None:
        if self._token is not None and self._nursery is not None:
            nursery = self._nursery

            async def cancel() -> None:
                nursery.cancel_scope.cancel()

            with contextlib.suppress(trio.RunFinishedError):
                self._call(cancel)
        if self._thread is not None:
            self._thread.join(10)
        self._token = self._nursery = None


# -- nginx: the HTTPS baseline ---------------------------------------------------------


def ensure_nginx(log: Callable[[str], None]) -> None:
    ensure_debian_package(NGINX, "nginx", log)


def nginx_config(
    prefix: Path, cert: Path, key: Path, backends: dict[str, tuple[int, str]], node_secret: str
) -> str:
    """One nginx, one TLS server per node: `backends` maps node id -> (port, node URL).

    Streams both ways (no request or response buffering, no body size limit) and
    keeps upstream connections alive, as a git HTTPS front should. Like the edge,
    it authenticates to the node with the node secret (nodes serve only edges).
    """
    servers = []
    for node_id, (port, node_url) in backends.items():
        upstream = node_url.removeprefix("http://").rstrip("/")
        servers.append(
            f"""
    upstream node_{node_id.replace("-", "_")} {{ server {upstream}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            proxy_pass http://node_{node_id.replace("-", "_")};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header Authorization "Bearer {node_secret}";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            client_max_body_size 0;
        }}
    }}"""
        )
    return f"""daemon off;
master_process on;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{"".join(servers)}
}}
"""


def start_nginx(
    work: Path, cert: Path, key: Path, node_urls: dict[str, str], node_secret: str
) -> tuple[ManagedProcess, dict[str, int]]:
    """nginx in front of every node; returns it and node id -> its TLS port."""
    prefix = work / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    ports = {node_id: free_port() for node_id in node_urls}
    conf = prefix / "nginx.conf"
    conf.write_text(
        nginx_config(
            prefix, cert, key, {n: (ports[n], u) for n, u in node_urls.items()}, node_secret
        )
    )
    test = subprocess.run(
        [str(NGINX), "-t", "-p", str(prefix), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    if test.returncode != 0:
        raise RuntimeError(f"nginx -t rejected {conf}: {test.stderr.strip()}")
    proc = spawn("nginx", [str(NGINX), "-p", str(prefix), "-c", str(conf)], work / "logs")
    deadline = time.monotonic() + 10
    while not all(_listening(p) for p in ports.values()):
        if not proc.alive() or time.monotonic() > deadline:
            proc.stop()
            raise RuntimeError(f"nginx did not start: {proc.log_tail()}")
        time.sleep(0.05)
    return proc, ports


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


__all__ = ["RegionsConfig", "RelayHost", "ensure_nginx", "load_regions_config", "start_nginx"]
