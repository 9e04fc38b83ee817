"""git for benchmarks: a clean environment, timed commands, random repos, pack facts."""

from __future__ import annotations

import math
import os
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import MiB

# git keeps a fetched or pushed pack of fewer than `transfer.unpackLimit`
# (default 100) objects only after exploding it into loose objects, which is
# about 4x slower and would measure zlib, not the network path. Every
# generated repo therefore has at least this many blobs (plus a tree and a
# commit); the limit itself is left at git's default.
MIN_FILES = 128
MAX_FILE_BYTES = 8 * MiB


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
