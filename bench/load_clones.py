"""bench.load's bursts: N `git clone`s of one path started at once, waited for together."""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import clones
from bench.clones import Variant
from bench.common import MiB, log, rmtree
from bench.load_probes import HealthzSampler, HttpsTarget
from bench.meters import RssSampler
from bench.repos import run_git
from bench.runner import interleave

WARMUP_CLONES = 3
CLONE_TIMEOUT_S = 600.0


@dataclass
class BurstSample:
    round: int
    path: str
    warmup: bool
    clones: int
    wall_s: float
    """First clone started to last one ended."""
    ok: int
    failures: int
    clone_s: list[float]
    edge_cpu_s: float
    node_cpu_s: float
    """The node's own CPU and its reaped git children's."""
    client_cpu_s: float
    """Every reaped client process of the burst: git, git-remote-https, index-pack, ssh."""
    edge_peak_rss_mb: float
    loadavg: tuple[float, float, float]
    edge_healthz: dict[str, Any] = field(default_factory=dict)
    """`GET /healthz` on a kept connection every 0.1 s during the burst (load_probes)."""
    errors: list[str] = field(default_factory=list)


def timed_clone(v: Variant, dest: Path, nice: int = 0) -> tuple[float, str]:
    """One `git clone` (under `nice -n NICE` when > 0): its seconds, and its error
    ('' if it exited 0)."""
    start = time.perf_counter()
    done = subprocess.run(
        [*(["nice", "-n", str(nice)] if nice else []), "git", "clone", "--quiet", v.url, str(dest)],
        env=v.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=CLONE_TIMEOUT_S,
        check=False,
    )
    error = "" if done.returncode == 0 else done.stderr.decode(errors="replace")[-300:].strip()
    return time.perf_counter() - start, error or ("" if done.returncode == 0 else "exit != 0")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _head(dest: Path, env: dict[str, str]) -> str:
    try:
        return run_git(["-C", str(dest), "rev-parse", "HEAD"], env).strip()
    except Exception as exc:  # a clone that exited 0 but left no HEAD: a failure too
        return f"rev-parse: {exc}"


def burst(
    v: Variant,
    n: int,
    round_no: int,
    warmup: bool,
    work: Path,
    commit: str,
    edge: HttpsTarget,
    nice: int = 0,
) -> BurstSample:
    """`n` clones of `v` started at once; each must exit 0 with HEAD at `commit`."""
    root = Path(tempfile.mkdtemp(prefix=f"burst-{v.name}-", dir=work))
    dests = [root / f"c{i}" for i in range(n)]
    try:
        edge0, (node0, node_ch0) = v.edge.cpu()[0], v.node.cpu()
        client0 = _children_cpu()
        with (
            RssSampler(v.edge) as rss,
            HealthzSampler(edge) as lag,
            ThreadPoolExecutor(max_workers=n) as pool,
        ):
            start = time.perf_counter()
            outcomes = list(pool.map(lambda d: timed_clone(v, d, nice), dests))
            wall = time.perf_counter() - start
        client_cpu = _children_cpu() - client0
        time.sleep(clones.SETTLE_S)  # let the node reap its git children before reading CPU
        node1, node_ch1 = v.node.cpu()
        errors = [e for _, e in outcomes if e]
        with ThreadPoolExecutor(max_workers=4) as pool:
            heads = list(
                pool.map(
                    lambda d: _head(d, v.env),
                    [d for d, (_, e) in zip(dests, outcomes, strict=True) if not e],
                )
            )
        errors += [f"HEAD {h}" for h in heads if h != commit]
        return BurstSample(
            round=round_no,
            path=v.name,
            warmup=warmup,
            clones=n,
            wall_s=wall,
            ok=n - len(errors),
            failures=len(errors),
            clone_s=[s for s, _ in outcomes],
            edge_cpu_s=v.edge.cpu()[0] - edge0,
            node_cpu_s=(node1 - node0) + (node_ch1 - node_ch0),
            client_cpu_s=client_cpu,
            edge_peak_rss_mb=rss.peak / MiB,
            loadavg=os.getloadavg(),
            edge_healthz=lag.summary(),
            errors=sorted(set(errors))[:5],
        )
    finally:
        rmtree(root)


def bursts(
    variants: Mapping[str, Variant],
    args: argparse.Namespace,
    work: Path,
    commit: str,
    edge: HttpsTarget,
) -> list[BurstSample]:
    def one(name: str, round_no: int, warmup: bool) -> BurstSample:
        n = min(args.clones, WARMUP_CLONES) if warmup else args.clones
        s = burst(variants[name], n, round_no, warmup, work, commit, edge, args.client_nice)
        log(
            f"{'warm-up' if warmup else f'round {round_no}'} {name:9s} {n} clones in "
            f"{s.wall_s:7.2f}s, {s.failures} failed, edge CPU {s.edge_cpu_s:.2f}s, node CPU "
            f"{s.node_cpu_s:.2f}s, client CPU {s.client_cpu_s:.2f}s, "
            f"edge peak RSS {s.edge_peak_rss_mb:.0f} MiB, edge /healthz max "
            f"{s.edge_healthz['max_ms']:.0f} ms, load {s.loadavg[0]:.1f}"
        )
        return s

    return interleave(list(variants), args.rounds, one)
