"""Small helpers every benchmark uses: units, signals, packages, logging, machine facts.

Blocking code on purpose (like devnet/procs.py): benchmarks drive real `git`
and real child processes from a plain Python main thread. The harness itself
is split by job: `bench.repos` (git and random repos), `bench.meters` (CPU and
RSS of processes), `bench.runner` (interleaved runs, medians, ratios),
`bench.results` (JSON + markdown), `bench.trees` (a devnet from any source
tree), `bench.clones` (one measured clone), `bench.profiling` (py-spy).
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

MiB = 1024 * 1024


def sigterm_as_interrupt() -> None:
    """Let SIGTERM unwind like Ctrl-C, so context managers stop every child."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def ensure_debian_package(binary: Path, package: str, log: Callable[[str], None]) -> None:
    """Install Debian's `package` with apt-get when `binary` is missing (needs root).

    A baseline server the benchmarks start themselves (their own config, port
    and lifetime): apt's own service for it is not used.
    """
    if binary.exists():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{binary} is missing: install Debian's {package} first")
    log(f"{binary} is missing: installing Debian's {package} with apt-get (once) ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", package]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not binary.exists():
        raise RuntimeError(f"apt-get install {package} failed: {done.stderr[-1500:]}")
    log(f"{package} installed")


def log(msg: str) -> None:
    """One timestamped progress line on stderr (stdout carries the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def machine_info() -> dict[str, Any]:
    git = subprocess.run(["git", "--version"], capture_output=True, text=True, check=False)
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "mem_total_mb": round(psutil.virtual_memory().total / MiB),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "git": git.stdout.strip(),
        "kernel": platform.release(),
        "platform": platform.platform(),
        "executable": sys.executable,
    }


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "MISS")


@contextmanager
def work_dir(prefix: str, keep: bool) -> Iterator[Path]:
    """A temp dir for one run (repos, devnets, clones); removed after unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
