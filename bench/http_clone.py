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

from bench.clones import (
    BASELINE,
    BASELINE_NOTE,
    USER,
    CloneSample,
    Variant,
    add_clone_args,
    check_clone_args,
    clone_once,
    create_repo,
    generate_repo,
    log_clone,
    push_through,
    repo_notes,
    repo_record,
)
from bench.common import MiB, log, rmtree, work_dir
from bench.http_report import render, summarise
from bench.meters import ProcMeter, RssSampler
from bench.profiling import profile_process
from bench.repos import RandomRepo, clean_git_env, pack_stats, run_git
from bench.results import new_result, run_main
from bench.runner import interleave
from bench.trees import NodeView, Tree, TreeNet, running_devnets

REPO = "bench/big"
PUSH_REPO = "bench/push"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_clone", description=(__doc__ or "").split("\n")[0]
    )
    add_clone_args(p, "--size-mb 20 --push-mb 100 --rounds 3")
    p.add_argument("--push-mb", type=int, default=1024, help="push size for the RSS test (1024)")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.push_mb, args.rounds = 20, 100, 3
    check_clone_args(p, args)
    if args.push_mb < 0:
        p.error("--push-mb must be >= 0")
    return args


@dataclass
class Side:
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
        return [
            Variant(
                f"{self.prefix}direct",
                f"{self.node.http_url}/{REPO}.git",
                self.direct_env,
                self.edge,
                self.node_meter,
            ),
            Variant(
                f"{self.prefix}edge",
                f"{self.edge_base}/{REPO}.git",
                self.edge_env,
                self.edge,
                self.node_meter,
            ),
        ]


def open_side(net: TreeNet, prefix: str, home: Path) -> Side:
    placed = create_repo(net, REPO)
    node = net.node(str(placed["node"]))
    # The node's credential on direct clones too, as the edge sends it on
    # every request: a node that asks for it serves the direct path alike.
    credential = f"authorization: Bearer {net.admin_secret}"
    direct_env = clean_git_env(
        home,
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="http.extraHeader",
        GIT_CONFIG_VALUE_0=credential,
    )
    return Side(
        net=net,
        prefix=prefix,
        placed=placed,
        node=node,
        edge=ProcMeter(net.edge_pid),
        node_meter=ProcMeter(node.pid),
        # The bench user's token in the URL: git needs no prompt or helper.
        edge_base=net.https_url.replace("://", f"://{USER}:{net.token(USER)}@", 1),
        direct_env=direct_env,
        edge_env=clean_git_env(home, GIT_SSL_CAINFO=str(net.ca_file)),
    )


def big_push(side: Side, repo: RandomRepo) -> dict[str, Any]:
    """Push `repo` through the edge into a second repo, sampling the edge's RSS every 50 ms."""
    placed = create_repo(side.net, PUSH_REPO)
    rss_before = side.edge.rss()
    size, tree = repo.total_bytes / MiB, side.net.tree.label
    log(f"pushing {size:.0f} MiB through the edge of the {tree} tree ...")
    with RssSampler(side.edge, interval=0.05) as rss:
        pushed = push_through(f"{side.edge_base}/{PUSH_REPO}.git", repo, side.edge_env, side.edge)
    url = f"{side.node.http_url}/{PUSH_REPO}.git"
    remote = run_git(["ls-remote", url, "refs/heads/main"], side.direct_env).split()
    if not remote or remote[0] != repo.commit:
        raise RuntimeError(f"big push did not land on the node: {remote}")
    return {
        "repo": PUSH_REPO,
        "placed": placed,
        "bytes": repo.total_bytes,
        "files": repo.files,
        "objects": repo.objects,
        **pushed,
        "edge_rss_before_mb": rss_before / MiB,
        "edge_rss_peak_mb": rss.peak / MiB,
        "rss_interval_s": 0.05,
        "rss_samples": [(round(t, 3), b) for t, b in rss.samples],
    }


def first_push(side: Side, repo: RandomRepo) -> dict[str, Any]:
    log(f"pushing it through the edge of the {side.net.tree.label} tree ...")
    pushed = push_through(f"{side.edge_base}/{REPO}.git", repo, side.edge_env, side.edge)
    bare = side.node.volume_dir / f"{REPO}.git"
    return {**pushed, "node_repo_pack": pack_stats(bare) if bare.is_dir() else None}


def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = [Tree.this()]
    if args.baseline_tree:
        trees.append(Tree.other(BASELINE, args.baseline_tree, args.baseline_python))
    notes = [
        *repo_notes(),
        "CPU from psutil cpu_times (user+system), read before and 0.2 s after each clone; "
        "node children = reaped git processes.",
        "Direct clones send the node's credential (`authorization: Bearer`, as the edge does).",
        *([BASELINE_NOTE] if args.baseline_tree else []),
    ]
    result = new_result("http_clone", args, notes)
    result["trees"] = {t.label: t.describe() for t in trees}
    with work_dir("gitedge-bench-", args.keep_work) as work:
        home = work / "home"
        env = clean_git_env(home)
        log(f"work dir {work}; starting {len(trees)} devnet(s) ...")
        with running_devnets(trees, work, [USER]) as nets:
            sides = [
                open_side(net, f"{net.tree.label}-" if i else "", home)
                for i, net in enumerate(nets)
            ]
            for s in sides:
                log(
                    f"{s.net.tree.label}: edge {s.net.https_url} (pid {s.edge.pid}), node "
                    f"{s.node.node_id} {s.node.http_url} (pid {s.node.pid})"
                )
            repo, generate_s = generate_repo(work / "src", args.size_mb, env)
            result["repo"] = repo_record(REPO, repo, generate_s, placed=sides[0].placed)
            pushes = [first_push(s, repo) for s in sides]
            rmtree(repo.path)
            variants = {v.name: v for s in sides for v in s.variants()}

            def one_clone(name: str, round_no: int, warmup: bool) -> CloneSample:
                v = variants[name]
                sample = clone_once(v, round_no, warmup, work, repo.commit, args.no_checkout)
                log_clone(sample)
                return sample

            samples = interleave(list(variants), args.rounds, one_clone)
            big: list[dict[str, Any] | None] = [None] * len(sides)
            if args.push_mb:
                src, _ = generate_repo(work / "push-src", args.push_mb, env)
                big = [big_push(s, src) for s in sides]
                rmtree(src.path)
            for s, b in zip(sides, big, strict=True):
                if b:
                    log(
                        f"{s.net.tree.label} big push {b['wall_s']:.1f}s, edge RSS "
                        f"{b['edge_rss_before_mb']:.1f} -> peak {b['edge_rss_peak_mb']:.1f} MiB"
                    )
            result["push"], result["big_push"] = pushes[0], big[0]
            if len(sides) > 1:
                result[BASELINE] = {
                    "placed": sides[1].placed,
                    "push": pushes[1],
                    "big_push": big[1],
                }
            summarise(result, samples)
            if args.profile:
                log(f"profiling the edge during {args.profile} edge clones ...")

                def profiled(i: int) -> float:
                    s = clone_once(variants["edge"], i, False, work, repo.commit, args.no_checkout)
                    log(f"  profiled edge clone {i}: {s.wall_s:.2f}s, edge CPU {s.edge_cpu_s:.2f}s")
                    return s.wall_s

                native = "_native" if args.profile_native else ""
                result["profile"] = profile_process(
                    sides[0].edge,
                    work / "edge-profile.txt",
                    args.results_dir / f"http_clone_profile{native}.txt",
                    "clone",
                    args.profile,
                    profiled,
                    native=args.profile_native,
                    log=log,
                )
            result["samples"] = [asdict(x) for x in samples]
            result["edge_log_tail"] = nets[0].edge_log_tail(20)
            if len(nets) > 1:
                result[BASELINE]["edge_log_tail"] = nets[1].edge_log_tail(20)
            result["loadavg_end"] = os.getloadavg()
    return result


def _stem(args: argparse.Namespace) -> str:
    return "http_clone"


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, render, _stem)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
