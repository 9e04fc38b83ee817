"""bench.load's bursts: N `git clone`s of one path started at once, waited for together;
and the direct-tls reference's repository on the devnet's HTTPS node."""

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

import httpx

from bench import clones
from bench.clones import Variant
from bench.common import MiB, log, rmtree
from bench.load_probes import HealthzSampler, HttpsTarget
from bench.meters import ProcMeter, RssSampler
from bench.repos import clean_git_env, run_git
from bench.runner import interleave
from bench.trees import TreeNet

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


TLS_NODE = ("lax-2", "lax")
"""The direct-tls reference: one more node, serving HTTPS with its own self-signed
certificate. In lax, not fra: a second fra node would be a candidate when the edge
places the repo in fra, and the edge's path must stay edge -> fra-1 (plain HTTP).
Regions are only labels here: every process is on this machine's loopback."""


def direct_tls_variant(
    net: TreeNet, repo: str, home: Path, edge: ProcMeter, ca_path: Path
) -> Variant:
    """`repo` created straight on the TLS node (its internal API, the node's credential,
    no etcd record: the edge never routes to it) and a variant that clones it from there
    as the direct variant does, over HTTPS. git (gnutls) cannot check the node's
    certificate (self-signed, no subjectAltName): http.sslVerify=false skips the chain
    check only; the handshake and the encryption are the same work. `ca_path`: an
    empty GIT_SSL_CAPATH, as the edge's clients get (bench/load.py build_rig says why)."""
    node = net.node(TLS_NODE[0])
    credential = f"Bearer {net.admin_secret}"
    created = httpx.post(
        f"{node.http_url}/_gitedge/repos",
        json={"name": repo},
        headers={"authorization": credential},
        verify=False,  # pinned by edges from etcd; nothing to pin against here
        timeout=30.0,
    )
    if created.status_code not in (200, 201):
        raise RuntimeError(f"create {repo} on {node.node_id}: HTTP {created.status_code}")
    env = clean_git_env(
        home,
        GIT_CONFIG_COUNT="2",
        GIT_CONFIG_KEY_0="http.extraHeader",
        GIT_CONFIG_VALUE_0=f"authorization: {credential}",
        GIT_CONFIG_KEY_1="http.sslVerify",
        GIT_CONFIG_VALUE_1="false",
        GIT_SSL_CAPATH=str(ca_path),
    )
    if not node.http_url.startswith("https://"):
        raise RuntimeError(f"{node.node_id} serves {node.http_url}, not HTTPS")
    return Variant("direct-tls", f"{node.http_url}/{repo}.git", env, edge, ProcMeter(node.pid))


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
