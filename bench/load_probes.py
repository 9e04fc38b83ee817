"""bench.load's clients: idle keep-alive connections, request probes, SSH handshakes.

Blocking code (threads) for HTTPS, like the rest of the harness; asyncssh on
its own asyncio loop for the handshakes. Every socket has a timeout: a
refused or stalled connection is counted as a failure, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import h11

from bench.common import MiB, median
from bench.meters import ProcMeter, RssSampler

IO_TIMEOUT_S = 30.0
"""Per socket operation; well above what a loaded 2-core machine needs for a handshake."""
READ_CHUNK = 16 * 1024


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile (0..1) by nearest rank; nan when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def spread(values_s: list[float]) -> dict[str, float]:
    """Median, p90 and max of latencies, in milliseconds."""
    ms = [1000 * v for v in values_s]
    return {
        "n": len(ms),
        "median_ms": median(ms),
        "p90_ms": percentile(ms, 0.9),
        "max_ms": max(ms, default=float("nan")),
    }


# -- the edge's memory ------------------------------------------------------------------


def vm_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS since start or since `reset_peak`) of `pid`, in MiB."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0]) / 1024  # kB
    return out


def reset_peak(pid: int) -> bool:
    """Reset `pid`'s VmHWM to its current RSS (proc(5), clear_refs "5"); False if refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# -- HTTPS keep-alive connections ---------------------------------------------------------


@dataclass
class HttpsTarget:
    """Where the edge's HTTPS front is, and a client context that trusts it."""

    host: str
    port: int
    context: ssl.SSLContext

    @classmethod
    def of(cls, https_url: str, ca_file: Path) -> HttpsTarget:
        hostport = https_url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        return cls(host.strip("[]"), int(port), ssl.create_default_context(cafile=str(ca_file)))


class KeepAlive:
    """One TLS connection to the edge that has answered `GET /healthz` and stays open."""

    def __init__(self, target: HttpsTarget) -> None:
        raw = socket.create_connection((target.host, target.port), timeout=IO_TIMEOUT_S)
        try:
            self.sock = target.context.wrap_socket(raw, server_hostname=target.host)
        except BaseException:
            raw.close()
            raise
        self.conn = h11.Connection(h11.CLIENT)
        self.host = target.host

    def healthz(self) -> int:
        """One `GET /healthz` on this connection; its status (the body is read whole)."""
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        request = h11.Request(method="GET", target="/healthz", headers=[("Host", self.host)])
        self.sock.sendall(self.conn.send(request) + self.conn.send(h11.EndOfMessage()))
        status = 0
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(READ_CHUNK))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("the edge closed the connection")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def open_keepalive(target: HttpsTarget) -> KeepAlive:
    """A new connection that has answered one `GET /healthz` with 200 (and is kept)."""
    conn = KeepAlive(target)
    try:
        if (status := conn.healthz()) != 200:
            raise ConnectionError(f"GET /healthz: {status}")
    except BaseException:
        conn.close()
        raise
    return conn


def healthz_new_connection(target: HttpsTarget) -> float:
    """Seconds for connect + TLS handshake + `GET /healthz` on a new connection."""
    start = time.perf_counter()
    open_keepalive(target).close()
    return time.perf_counter() - start


def healthz_reused(conn: KeepAlive) -> float:
    """Seconds for one `GET /healthz` on an open keep-alive connection."""
    start = time.perf_counter()
    if (status := conn.healthz()) != 200:
        raise ConnectionError(f"GET /healthz: {status}")
    return time.perf_counter() - start


class HealthzSampler:
    """`GET /healthz` on one kept connection every `interval` s, in a thread: how long the
    edge takes to answer a trivial request while something else runs (its event loop's
    lag plus the machine's scheduling). Run during a direct burst too, it is the control:
    the edge idle, the machine just as loaded."""

    def __init__(self, target: HttpsTarget, interval: float = 0.1) -> None:
        self.target, self.interval = target, interval
        self.seconds: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-sampler", daemon=True)

    def _run(self) -> None:
        conn: KeepAlive | None = None
        while not self._stop.is_set():
            try:
                conn = conn or open_keepalive(self.target)
                self.seconds.append(healthz_reused(conn))
            except (OSError, h11.ProtocolError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    def __enter__(self) -> HealthzSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, Any]:
        ms = [1000 * v for v in self.seconds]
        return {
            **spread(self.seconds),
            "p99_ms": percentile(ms, 0.99),
            "failures": len(self.errors),
            "errors": sorted(set(self.errors))[:5],
        }


@dataclass
class IdlePool:
    """Connections held open to the edge, and how opening and re-checking them went."""

    conns: list[KeepAlive] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    open_s: float = 0.0

    def check(self, workers: int) -> tuple[int, list[str]]:
        """Another `GET /healthz` on every held connection: how many still answer 200."""

        def one(conn: KeepAlive) -> str:
            try:
                status = conn.healthz()
            except (OSError, h11.ProtocolError) as exc:
                return f"{type(exc).__name__}: {exc}"
            return "" if status == 200 else f"HTTP {status}"

        with ThreadPoolExecutor(max_workers=workers) as pool:
            outcomes = list(pool.map(one, self.conns))
        failed = [o for o in outcomes if o]
        return len(outcomes) - len(failed), failed


@contextlib.contextmanager
def idle_connections(target: HttpsTarget, count: int, workers: int) -> Iterator[IdlePool]:
    """`count` keep-alive connections opened `workers` at a time, held until exit."""
    held = IdlePool()

    def one(_: int) -> KeepAlive | str:
        try:
            return open_keepalive(target)
        except (OSError, h11.ProtocolError) as exc:
            return f"{type(exc).__name__}: {exc}"

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for outcome in pool.map(one, range(count)):
                if isinstance(outcome, str):
                    held.errors.append(outcome)
                else:
                    held.conns.append(outcome)
        held.open_s = time.perf_counter() - start
        yield held
    finally:
        for conn in held.conns:
            conn.close()


def timed_calls(calls: int, call: Callable[[], float]) -> tuple[list[float], list[str]]:
    """`call()` `calls` times in a row; its seconds, and the errors of those that failed."""
    seconds, errors = [], []
    for _ in range(calls):
        try:
            seconds.append(call())
        except (OSError, h11.ProtocolError, RuntimeError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
    return seconds, errors


# -- SSH handshakes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SshTarget:
    host: str
    port: int
    client_key: Path
    known_hosts: Path
    username: str = "git"


async def _handshake(target: SshTarget, key: asyncssh.SSHKey) -> float:
    """Seconds for TCP connect + key exchange + public-key auth, then a clean close."""
    start = time.perf_counter()
    async with asyncssh.connect(
        target.host,
        target.port,
        username=target.username,
        client_keys=[key],
        known_hosts=str(target.known_hosts),
        agent_path=None,
        config=None,
        connect_timeout=IO_TIMEOUT_S,
        login_timeout=IO_TIMEOUT_S,
    ):
        elapsed = time.perf_counter() - start
    return elapsed


async def _handshakes(target: SshTarget, count: int, concurrency: int) -> list[float | str]:
    key = asyncssh.read_private_key(str(target.client_key))
    gate = asyncio.Semaphore(concurrency)

    async def one() -> float | str:
        async with gate:
            try:
                return await asyncio.wait_for(_handshake(target, key), 2 * IO_TIMEOUT_S)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                return f"{type(exc).__name__}: {exc}"

    return list(await asyncio.gather(*(one() for _ in range(count))))


def ssh_handshakes(
    target: SshTarget, count: int, concurrency: int, edge: ProcMeter
) -> dict[str, Any]:
    """`count` SSH logins to the edge, `concurrency` at a time: rate, failures, edge RSS/CPU."""
    reset = reset_peak(edge.pid)
    before = vm_status(edge.pid)
    edge_cpu0 = edge.cpu()[0]
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    with RssSampler(edge, interval=0.05) as rss:
        start = time.perf_counter()
        outcomes = asyncio.run(_handshakes(target, count, concurrency))
        wall = time.perf_counter() - start
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    after = vm_status(edge.pid)
    seconds = [o for o in outcomes if isinstance(o, float)]
    errors = [o for o in outcomes if isinstance(o, str)]
    client_cpu = (client1.ru_utime - client0.ru_utime) + (client1.ru_stime - client0.ru_stime)
    return {
        "handshakes": count,
        "concurrency": concurrency,
        "ok": len(seconds),
        "failures": len(errors),
        "errors": sorted(set(errors))[:10],
        "wall_s": wall,
        "per_s": len(seconds) / wall,
        "latency": spread(seconds),
        "edge_cpu_s": edge.cpu()[0] - edge_cpu0,
        "client_cpu_s": client_cpu,
        "edge_rss_before_mb": before["VmRSS"],
        "edge_rss_after_mb": after["VmRSS"],
        "edge_rss_peak_sampled_mb": rss.peak / MiB,
        "edge_vmhwm_mb": after["VmHWM"] if reset else None,
    }
