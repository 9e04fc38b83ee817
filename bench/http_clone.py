"""Clone through the HTTPS edge vs directly from the node; edge CPU and memory.

    python -m bench.http_clone              # 100 MiB clones x5 each, 1 GiB push
    python -m bench.http_clone --quick      # 20 MiB, 3 rounds, 100 MiB push
    python -m bench.http_clone --profile 3  # then py-spy the edge during 3 extra clones
    python -m bench.http_clone --baseline-tree /work/baseline   # old and new code side by side

One run starts a devnet (etcd, nodes fra-1 and lax-1, one HTTPS edge) in a
temp dir, and:

1. generates a repo of --size-mb MiB of random (incompressible) blobs in
   >= 128 files, so every pack has >= 100 objects and git keeps it as a pack
   instead of exploding it loose (`transfer.unpackLimit`, default 100, left
   as is), and pushes it through the edge (timed);
2. clones it --rounds times directly from the node over plain HTTP and as
   often through the edge over HTTPS, interleaved (direct, edge, direct, ...)
   after one untimed warm-up clone of each, each into a fresh dir;
3. reads the edge's and the node's CPU time around every clone (psutil);
4. pushes a --push-mb MiB repo through the edge into a second repo while a
   thread samples the edge's RSS every 50 ms;
5. prints a table and writes bench/results/http_clone.{json,md}.

With --baseline-tree DIR, a second devnet runs DIR's code (its own .venv):
every round clones baseline-direct and baseline-edge too, the big push goes
through both edges, and the table gains a side-by-side section (this tree /
baseline). Timings vary by about +-30 % between runs here: compare the
interleaved medians and the ratio within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import clones
from bench.clones import BASELINE, USER, Variant
from bench.common import MiB, log, rmtree, work_dir
from bench.http_report import render, summarise
from bench.meters import ProcMeter, RssSampler
from bench.profiling import profile_process
from bench.repos import RandomRepo, clean_git_env, pack_stats, run_git
from bench.results import new_result, run_main
from bench.trees import NodeView, TreeNet, running_devnets

REPO = "bench/big"
PUSH_REPO = "bench/push"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_clone", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--push-mb", type=int, default=1024, help="push size for the RSS test (1024)")
    quick = {"size_mb": 20, "push_mb": 100, "rounds": 3}
    args = clones.parse_clone_args(p, argv, quick)
    if args.push_mb < 0:
        p.error("--push-mb must be >= 0")
    return args


@dataclass
class HttpsSide:
    """One tree's devnet as this benchmark uses it: its edge, the repo's node, the URLs."""

    net: TreeNet
    prefix: str  # "" for this tree, "baseline-" for the other
    placed: dict[str, Any]
    node: NodeView
    edge: ProcMeter
    node_meter: ProcMeter
    edge_base: str  # the edge's HTTPS URL with the bench user's token in it
    direct_env: dict[str, str]
    edge_env: dict[str, str]

    def variants(self) -> list[Variant]:
        direct, edge = f"{self.prefix}direct", f"{self.prefix}edge"
        return [
            Variant(
                direct, self.url(self.node.http_url), self.direct_env, self.edge, self.node_meter
            ),
            Variant(edge, self.url(self.edge_base), self.edge_env, self.edge, self.node_meter),
        ]

    @staticmethod
    def url(base: str, repo: str = REPO) -> str:
        return f"{base}/{repo}.git"


def open_side(net: TreeNet, prefix: str, home: Path) -> HttpsSide:
    placed = clones.create_repo(net, REPO)
    node = net.node(str(placed["node"]))
    # The node's credential on direct clones too, as the edge sends it on
    # every request: a node that asks for it serves the direct path alike.
    credential = f"authorization: Bearer {net.admin_secret}"
    extra_header = {"GIT_CONFIG_KEY_0": "http.extraHeader", "GIT_CONFIG_VALUE_0": credential}
    return HttpsSide(
        net=net,
        prefix=prefix,
        placed=placed,
        node=node,
        edge=ProcMeter(net.edge_pid),
        node_meter=ProcMeter(node.pid),
        # The bench user's token in the URL: git needs no prompt or helper.
        edge_base=net.https_url.replace("://", f"://{USER}:{net.token(USER)}@", 1),
        direct_env=clean_git_env(home, GIT_CONFIG_COUNT="1", **extra_header),
        edge_env=clean_git_env(home, GIT_SSL_CAINFO=str(net.ca_file)),
    )


def first_push(side: HttpsSide, repo: RandomRepo) -> dict[str, Any]:
    log(f"pushing it through the {side.net.tree.label} tree's edge ...")
    pushed = clones.push_through(side.url(side.edge_base), repo, side.edge_env, side.edge)
    bare = side.node.volume_dir / f"{REPO}.git"
    return {**pushed, "node_repo_pack": pack_stats(bare) if bare.is_dir() else None}


def big_push(side: HttpsSide, repo: RandomRepo, generate_s: float) -> dict[str, Any]:
    """Push `repo` through the edge into a second repo, sampling the edge's RSS every 50 ms."""
    placed = clones.create_repo(side.net, PUSH_REPO)
    rss_before = side.edge.rss()
    size, tree = repo.total_bytes / MiB, side.net.tree.label
    log(f"pushing {size:.0f} MiB through the {tree} tree's edge ...")
    with RssSampler(side.edge, interval=0.05) as rss:
        url = side.url(side.edge_base, PUSH_REPO)
        pushed = clones.push_through(url, repo, side.edge_env, side.edge)
    landed = side.url(side.node.http_url, PUSH_REPO)
    remote = run_git(["ls-remote", landed, "refs/heads/main"], side.direct_env).split()
    if not remote or remote[0] != repo.commit:
        raise RuntimeError(f"big push did not land on the node: {remote}")
    log(
        f"{tree} big push {pushed['wall_s']:.1f}s, edge RSS {rss_before / MiB:.1f} -> peak "
        f"{rss.peak / MiB:.1f} MiB"
    )
    return {
        "repo": PUSH_REPO,
        "placed": placed,
        "bytes": repo.total_bytes,
        "files": repo.files,
        "objects": repo.objects,
        "generate_s": generate_s,
        **pushed,
        "edge_rss_before_mb": rss_before / MiB,
        "edge_rss_peak_mb": rss.peak / MiB,
        "rss_interval_s": 0.05,
        "rss_samples": [(round(t, 3), b) for t, b in rss.samples],
    }


def profile_edge(
    side: HttpsSide, args: argparse.Namespace, work: Path, commit: str
) -> dict[str, Any]:
    """py-spy this tree's edge (or node) during --profile extra edge clones; top frames by
    own time."""
    edge = side.variants()[1]
    target = args.profile_process
    log(f"profiling the {target} during {args.profile} edge clones ...")

    def one_clone(i: int) -> float:
        s = clones.clone_once(edge, i, False, work, commit, args.no_checkout)
        log(f"  profiled edge clone {i}: {s.wall_s:.2f}s, edge CPU {s.edge_cpu_s:.2f}s")
        return s.wall_s

    meter, suffix = clones.profiled(edge, args)
    suffix += "_native" if args.profile_native else ""
    return profile_process(
        meter,
        work / f"{target}-profile.txt",
        args.results_dir / f"{clones.stem('http_clone', args)}_profile{suffix}.txt",
        "clone",
        args.profile,
        one_clone,
        native=args.profile_native,
        log=log,
        process=target,
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = clones.trees(args)
    notes = clones.notes(
        args,
        "CPU from psutil cpu_times (user+system), read before and 0.2 s after each clone; "
        "node children = reaped git processes.",
        "Direct clones send the node's credential (`authorization: Bearer`, as the edge does).",
    )
    result = new_result("http_clone", args, notes)
    result["trees"] = {t.label: t.describe() for t in trees}
    with work_dir("gitedge-bench-", args.keep_work) as work:
        home = work / "home"
        env = clean_git_env(home)
        log(f"work dir {work}; starting {len(trees)} devnet(s) ...")
        with running_devnets(trees, work, [USER]) as nets:
            sides = [
                open_side(n, f"{n.tree.label}-" if i else "", home) for i, n in enumerate(nets)
            ]
            for s in sides:
                log(
                    f"{s.net.tree.label}: edge {s.net.https_url} (pid {s.edge.pid}), node "
                    f"{s.node.node_id} {s.node.http_url} (pid {s.node.pid})"
                )
            repo, result["repo"] = clones.generate_repo(
                work / "src", args.size_mb, env, REPO, placed=sides[0].placed
            )
            pushes = [first_push(s, repo) for s in sides]
            rmtree(repo.path)
            variants = {v.name: v for s in sides for v in s.variants()}
            samples = clones.clone_rounds(
                variants, args.rounds, work, repo.commit, args.no_checkout
            )
            big: list[dict[str, Any] | None] = [None] * len(sides)
            if args.push_mb:
                src, record = clones.generate_repo(work / "push-src", args.push_mb, env, PUSH_REPO)
                big = [big_push(s, src, record["generate_s"]) for s in sides]
                rmtree(src.path)
            result["push"], result["big_push"] = pushes[0], big[0]
            if len(sides) > 1:
                result[BASELINE] = {
                    "placed": sides[1].placed,
                    "push": pushes[1],
                    "big_push": big[1],
                }
            summarise(result, samples)
            result["samples"] = [asdict(x) for x in samples]
            if args.profile:
                result["profile"] = profile_edge(sides[0], args, work, repo.commit)
            result["edge_log_tail"] = nets[0].edge_log_tail(20)
            if len(nets) > 1:
                result[BASELINE]["edge_log_tail"] = nets[1].edge_log_tail(20)
            result["loadavg_end"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, render, lambda args: clones.stem("http_clone", args))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
