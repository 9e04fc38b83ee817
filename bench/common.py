"""Helpers shared by the benchmarks: a clean git, random repos, process meters.

Blocking code on purpose (like devnet/procs.py): benchmarks drive real `git`
and real child processes from a plain Python main thread.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

MiB = 1024 * 1024

# git keeps a fetched or pushed pack of fewer than `transfer.unpackLimit`
# (default 100) objects only after exploding it into loose objects, which is
# about 4x slower and would measure zlib, not the network path. Every
# generated repo therefore has at least this many blobs (plus a tree and a
# commit); the limit itself is left at git's default.
MIN_FILES = 128
MAX_FILE_BYTES = 8 * MiB


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


def clean_git_env(home: Path, **extra: str) -> dict[str, str]:
    """os.environ without GIT_*/XDG config, a throwaway HOME, no system config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("GIT_") and k not in ("XDG_CONFIG_HOME", "EMAIL")
    }
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_TERMINAL_PROMPT="0",
        GIT_AUTHOR_NAME="bench",
        GIT_AUTHOR_EMAIL="bench@example.invalid",
        GIT_COMMITTER_NAME="bench",
        GIT_COMMITTER_EMAIL="bench@example.invalid",
        LC_ALL="C",
    )
    env.update(extra)
    return env


class GitError(RuntimeError):
    pass


def run_git(
    args: Sequence[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 1800.0
) -> str:
    """Run git; return stdout; raise GitError with stderr on failure."""
    proc = subprocess.run(
        ["git", *args],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise GitError(
            f"git {' '.join(args)} exited {proc.returncode}: "
            + proc.stderr.decode(errors="replace")[-2000:]
        )
    return proc.stdout.decode(errors="replace")


@dataclass
class Timed:
    wall_s: float
    client_cpu_s: float


def timed_git(
    args: Sequence[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 1800.0
) -> Timed:
    """Wall time of one git command, and the CPU of its whole process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    run_git(args, env, cwd, timeout)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu)


@dataclass
class RandomRepo:
    path: Path
    commit: str
    files: int
    file_bytes: int
    total_bytes: int

    @property
    def objects(self) -> int:
        return self.files + 3  # blobs, the root and data/ trees, one commit


def files_for(total_bytes: int) -> int:
    return max(MIN_FILES, math.ceil(total_bytes / MAX_FILE_BYTES))


def make_random_repo(path: Path, total_bytes: int, env: dict[str, str]) -> RandomRepo:
    """A one-commit repo of incompressible blobs, written straight into a pack.

    `git fast-import` streams the blobs from os.urandom into a pack: no working
    tree, no loose objects, so a 1 GiB repo costs 1 GiB of disk once. The pack
    is written with compression level 0: zlib stores random data verbatim at
    any level, so only the time spent trying to compress it is saved.
    """
    files = files_for(total_bytes)
    file_bytes = max(1, total_bytes // files)
    run_git(["init", "--quiet", "--initial-branch=main", str(path)], env)
    for key, value in (("core.compression", "0"), ("pack.compression", "0")):
        run_git(["config", key, value], env, cwd=path)
    proc = subprocess.Popen(
        ["git", "fast-import", "--quiet", "--done"],
        cwd=path,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    try:
        out = proc.stdin
        for i in range(files):
            out.write(b"blob\nmark :%d\ndata %d\n" % (i + 1, file_bytes))
            left = file_bytes
            while left:
                n = min(left, MiB)
                out.write(os.urandom(n))
                left -= n
            out.write(b"\n")
        message = b"random blobs for benchmarks\n"
        out.write(
            b"commit refs/heads/main\n"
            b"committer bench <bench@example.invalid> 1700000000 +0000\n"
            b"data %d\n%s" % (len(message), message)
        )
        for i in range(files):
            out.write(b"M 100644 :%d data/blob-%04d.bin\n" % (i + 1, i))
        out.write(b"\ndone\n")
        _, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise GitError(f"git fast-import exited {proc.returncode}: {stderr.decode()[-2000:]}")
    commit = run_git(["rev-parse", "refs/heads/main"], env, cwd=path).strip()
    return RandomRepo(path, commit, files, file_bytes, files * file_bytes)


def pack_stats(git_dir: Path) -> dict[str, int]:
    """Bytes in packs, number of packs, and loose objects of a repository."""
    pack_dir = git_dir / "objects" / "pack"
    packs = list(pack_dir.glob("*.pack")) if pack_dir.is_dir() else []
    loose = sum(
        1
        for d in (git_dir / "objects").iterdir()
        if len(d.name) == 2 and d.is_dir()
        for _ in d.iterdir()
    )
    return {
        "pack_bytes": sum(p.stat().st_size for p in packs),
        "packs": len(packs),
        "loose_objects": loose,
    }


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class ProcMeter:
    """CPU seconds of one process (own, and of its reaped children)."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)

    def cpu(self) -> tuple[float, float]:
        t = self.proc.cpu_times()
        return float(t.user + t.system), float(t.children_user + t.children_system)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)


@dataclass
class RssSampler:
    """Samples a process's RSS every `interval` seconds in a thread."""

    meter: ProcMeter
    interval: float = 0.05
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        start = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter() - start, self.meter.rss()))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


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


@contextmanager
def elapsed() -> Iterator[list[float]]:
    """`with elapsed() as t: ...` then t[0] is the wall time in seconds."""
    box = [0.0]
    start = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - start


# -- py-spy profiles of a server during some runs --------------------------------------


def profile_process(
    meter: ProcMeter,
    raw: Path,
    keep: Path,
    what: str,
    runs: int,
    run_one: Callable[[int], float],
    *,
    gil_only: bool = True,
    native: bool = False,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """py-spy `meter`'s process during `runs` calls of `run_one`; top frames by own time.

    `--gil` keeps only samples holding the GIL, i.e. Python CPU: without it trio's
    and asyncio's idle epoll_wait counts as active time.
    """
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return {"error": f"{py_spy} not found (pip install py-spy)"}
    cmd = [str(py_spy), "record", "-p", str(meter.proc.pid), "--format", "raw"]
    cmd += ["-o", str(raw), "--rate", "250", "--nolineno"]
    if gil_only:
        cmd.append("--gil")
    if native:
        cmd.append("--native")
    cpu_before, _ = meter.cpu()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    walls = []
    try:
        time.sleep(1.0)  # py-spy attaches
        for i in range(runs):
            walls.append(run_one(i + 1))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    cpu_s = meter.cpu()[0] - cpu_before
    log(f"  profiled {runs} {what}s: median {median(walls):.3f}s, CPU {cpu_s:.2f}s")
    if not raw.exists():
        return {"error": "py-spy wrote no profile", "output": out.decode(errors="replace")[-2000:]}
    text = raw.read_text()
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(text)
    return {
        "what": what,
        "runs": runs,
        "wall_s": walls,
        "edge_cpu_s_total_incl_py_spy_overhead": cpu_s,
        "gil_only": gil_only,
        "native": native,
        "raw_file": str(keep),
        **summarise_collapsed(text),
    }


def summarise_collapsed(text: str, top: int = 25) -> dict[str, Any]:
    """Own and inclusive sample counts per frame from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]  # the thread, not a function
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count

    def rows(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": f, "samples": n, "pct": round(100.0 * n / total, 1) if total else 0.0}
            for f, n in c.most_common(top)
        ]

    return {"total_samples": total, "top_own": rows(own), "top_inclusive": rows(incl)}


def render_profile(profile: dict[str, Any]) -> str:
    if "error" in profile:
        return f"profile: {profile['error']}"
    kind = "GIL-holding" if profile["gil_only"] else "all (incl. idle)"
    lines = [
        f"py-spy on the edge during {profile['runs']} edge {profile['what']}s "
        f"({profile['total_samples']} {kind} samples at 250 Hz, native={profile['native']}):"
        " top by own time",
        "",
        "| own % | samples | frame |",
        "| ---: | ---: | --- |",
    ]
    lines += [f"| {r['pct']} | {r['samples']} | `{r['frame']}` |" for r in profile["top_own"]]
    lines += ["", "top inclusive:", "", "| incl % | frame |", "| ---: | --- |"]
    lines += [f"| {r['pct']} | `{r['frame']}` |" for r in profile["top_inclusive"][:20]]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "MISS")
