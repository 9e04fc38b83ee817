"""Clone cost of a repository after 200 small pushes, before and after optimizing it.

    python -m bench.housekeeping [--pushes 200] [--files 2000] [--rounds 3]

A bare repository made the node's way (node/repos.py), seeded with one push of
`--files` files (kept as a pack), then `--pushes` pushes of one changed file each
(kept loose: fewer than receive.unpackLimit objects). Clones are `git clone
--bare --no-local file://` (upload-pack and pack-objects, what a node runs for a
clone, without the HTTP in between); CPU is user+system of all git children.
Then the node's on-demand optimization (node/housekeeper.py) runs, and the same
clones again, side by side in one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

import trio

from bench.common import log, median, rmtree, work_dir
from bench.results import RESULTS_DIR, new_result, row, run_main
from node.housekeeper import Housekeeper
from node.housekeeping import HousekeepingConfig
from node.repos import RepoStore
from routing.model import RepoName

NAME = RepoName.parse("bench/housekeeping")
ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Bench",
    "GIT_AUTHOR_EMAIL": "bench@example.com",
    "GIT_COMMITTER_NAME": "Bench",
    "GIT_COMMITTER_EMAIL": "bench@example.com",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=200)
    parser.add_argument("--files", type=int, default=2000, help="files of the seed push")
    parser.add_argument("--rounds", type=int, default=3, help="clones measured each side")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def git(*args: str, cwd: Path, home: Path) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env={**ENV, "HOME": str(home)}, capture_output=True, check=True
    )
    return done.stdout.decode().strip()


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def count_objects(git_dir: Path, home: Path) -> dict[str, int]:
    text = git("count-objects", "-v", cwd=git_dir, home=home)
    return {k: int(v) for k, _, v in (line.partition(": ") for line in text.splitlines())}


def measure_clones(
    url: str, tmp: Path, home: Path, rounds: int, tag: str
) -> list[dict[str, float]]:
    samples = []
    for i in range(rounds):
        dest = tmp / f"clone-{tag}-{i}"
        cpu, wall = children_cpu(), time.monotonic()
        git("clone", "-q", "--bare", "--no-local", url, str(dest), cwd=tmp, home=home)
        samples.append({"wall_s": time.monotonic() - wall, "cpu_s": children_cpu() - cpu})
        rmtree(dest)
    return samples


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = new_result("housekeeping", args, notes=[__doc__.strip().splitlines()[0]])
    with work_dir("gitedge-housekeeping-", args.keep) as tmp:
        home = tmp / "home"
        home.mkdir()
        store = RepoStore(tmp / "volume")
        store.prepare()
        trio.run(store.create, NAME)
        git_dir, url = store.path(NAME), f"file://{store.path(NAME)}"
        work = tmp / "work"
        git("init", "-q", "-b", "main", str(work), cwd=tmp, home=home)
        for i in range(args.files):
            (work / f"f{i:05}.txt").write_text(f"file {i}\n" + f"line of file {i}\n" * 40)
        git("add", "-A", cwd=work, home=home)
        git("commit", "-q", "-m", "seed", cwd=work, home=home)
        git("push", "-q", url, "main", cwd=work, home=home)
        log(f"seeded {args.files} files; {args.pushes} small pushes")
        for i in range(args.pushes):
            path = work / f"f{i % args.files:05}.txt"
            path.write_text(path.read_text() + f"push {i}\n")
            git("commit", "-q", "-am", f"push {i}", cwd=work, home=home)
            git("push", "-q", url, "main", cwd=work, home=home)
        result["before_objects"] = count_objects(git_dir, home)
        log(f"before: {result['before_objects']}; cloning")
        result["before"] = measure_clones(url, tmp, home, args.rounds, "before")
        keeper = Housekeeper(store, HousekeepingConfig())
        cpu, wall = children_cpu(), time.monotonic()
        report = trio.run(keeper.optimize, NAME)
        assert report is not None
        result["optimize"] = {
            **report.to_json(),
            "wall_s": time.monotonic() - wall,
            "cpu_s": children_cpu() - cpu,
        }
        result["after_objects"] = count_objects(git_dir, home)
        log(f"optimized ({report.plan.describe()}); after: {result['after_objects']}; cloning")
        result["after"] = measure_clones(url, tmp, home, args.rounds, "after")
        git("fsck", "--strict", "--no-progress", cwd=git_dir, home=home)
    result["loadavg_end"] = os.getloadavg()
    return result


def render(result: dict[str, Any]) -> str:
    before, after = result["before"], result["after"]
    b_wall, a_wall = median([s["wall_s"] for s in before]), median([s["wall_s"] for s in after])
    b_cpu, a_cpu = median([s["cpu_s"] for s in before]), median([s["cpu_s"] for s in after])
    bo, ao, opt = result["before_objects"], result["after_objects"], result["optimize"]
    lines = [
        f"Clone (median of {len(before)}) of a repo after {result['args']['pushes']} small"
        f" pushes, before and after `gitedge repo optimize` ({opt['ran']}), same run.",
        "",
        row("", "before", "after", "after/before"),
        row("---", "---:", "---:", "---:"),
        row("clone wall (s)", f"{b_wall:.3f}", f"{a_wall:.3f}", f"{a_wall / b_wall:.2f}"),
        row("clone CPU (s)", f"{b_cpu:.3f}", f"{a_cpu:.3f}", f"{a_cpu / b_cpu:.2f}"),
        row("loose objects", bo["count"], ao["count"], ""),
        row("packs", bo["packs"], ao["packs"], ""),
        "",
        f"The optimization itself: {opt['wall_s']:.2f} s wall, {opt['cpu_s']:.2f} s CPU."
        f" Load average {result['loadavg_start'][0]:.2f} at start,"
        f" {result['loadavg_end'][0]:.2f} at end (2 cores shared with other sessions).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, render, lambda _args: "housekeeping")


if __name__ == "__main__":
    raise SystemExit(main())
