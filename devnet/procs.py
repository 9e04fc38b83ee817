"""Child processes for the demo, the tests and the benchmarks.

Blocking code on purpose: it runs in the demo's main thread, in pytest
fixtures and in bench scripts, never inside the edge's event loop.

Every child gets PR_SET_PDEATHSIG, so a parent killed with SIGKILL (a test
runner timing out, a demo killed hard) takes its children with it: no
process may outlive the session that started it.
"""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_FIXED_PORTS_LOW = 10_000
_handed_out: set[int] = set()
_rng = random.SystemRandom()  # not the global one: tests seed that


def _fixed_port_range() -> range | None:
    """Ports below the kernel's ephemeral range, or None if it leaves too few."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(_FIXED_PORTS_LOW, low) if low - _FIXED_PORTS_LOW >= 4096 else None


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, for programs that need a fixed one (etcd, sshd).

    Taken from below the kernel's ephemeral range: a port from `bind(0)` is
    ephemeral, and between this check and the program's own bind any outgoing
    connection on the machine may take it as its source port (CI lost a run to
    `etcd: bind: address already in use` that way). Outside that range only
    another listener can collide, and no port is handed out twice here."""
    fixed = _fixed_port_range()
    for _ in range(64 if fixed else 0):
        port = _rng.choice(fixed)  # type: ignore[arg-type]
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def lost_port_race(error: StartupError) -> bool:
    """Whether a start failed only because a chosen port was taken meanwhile."""
    return "address already in use" in str(error)


def has_ipv6_loopback() -> bool:
    """Whether `::1` can be bound here (tests of IPv6 clients skip without it)."""
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


class StartupError(RuntimeError):
    """A child process did not become ready; the message quotes its log."""


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; always reaps."""
        self.terminate()
        self.reap(timeout)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def reap(self, timeout: float = 10.0) -> None:
        """Wait for it to exit (after `terminate`), SIGKILL after `timeout`."""
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def stop_all(procs: Sequence[ManagedProcess], timeout: float = 10.0) -> None:
    """`stop` each, with the SIGTERMs sent together: their shutdowns overlap."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.reap(timeout)


def spawn(
    name: str, argv: Sequence[str], log_dir: Path, env: dict[str, str] | None = None
) -> ManagedProcess:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=_die_with_parent,
        )
    return ManagedProcess(name, popen, log_path)


def wait_until(proc: ManagedProcess, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `ready` until true; fail early, with the log, if the process dies."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if not proc.alive():
            raise StartupError(
                f"{proc.name} exited with {proc.popen.returncode} before {what}:\n"
                + proc.log_tail()
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise StartupError(f"{proc.name}: no {what} after {timeout}s:\n" + proc.log_tail())
        time.sleep(delay)
        # A start-up takes 1-2 s; a check costs a stat or one local request. A
        # longer cap made every start wait up to 0.25 s after it was ready.
        delay = min(delay * 1.5, 0.05)


def http_ok(url: str, verify: str | bool = True) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=1.0, verify=verify).status_code == 200
        except httpx.HTTPError:
            return False

    return check


@dataclass
class EtcdServer:
    process: ManagedProcess
    url: str
    data_dir: Path

    def stop(self) -> None:
        self.process.stop()


def start_etcd(work_dir: Path, name: str = "etcd", timeout: float = 30.0) -> EtcdServer:
    """A single-member etcd on free loopback ports with its data in `work_dir`."""
    etcd = shutil.which("etcd")
    if etcd is None:
        raise StartupError("etcd not found on PATH (Debian: apt-get install etcd-server)")
    for attempt in range(PORT_RACE_ATTEMPTS):
        try:
            return _start_etcd_once(etcd, work_dir, name, timeout)
        except StartupError as error:
            if not lost_port_race(error) or attempt == PORT_RACE_ATTEMPTS - 1:
                raise
            shutil.rmtree(work_dir / f"{name}-data", ignore_errors=True)
    raise AssertionError("unreachable")


PORT_RACE_ATTEMPTS = 3


def _start_etcd_once(etcd: str, work_dir: Path, name: str, timeout: float) -> EtcdServer:
    client_port, peer_port = free_port(), free_port()
    url = f"http://127.0.0.1:{client_port}"
    peer = f"http://127.0.0.1:{peer_port}"
    data_dir = work_dir / f"{name}-data"
    proc = spawn(
        name,
        [
            etcd,
            "--name",
            name,
            "--data-dir",
            str(data_dir),
            "--listen-client-urls",
            url,
            "--advertise-client-urls",
            url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"{name}={peer}",
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
        ],
        work_dir,
    )
    wait_until(proc, http_ok(url + "/health"), timeout, "etcd health")
    return EtcdServer(proc, url, data_dir)
