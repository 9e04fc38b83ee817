"""The clone benchmarks' shared part: options, the repo, one measured clone, the summary.

`bench.http_clone` and `bench.ssh_clone` differ only in their variants (which
URL, through which servers) and in what else they measure; a clone, its
meters and the medians that summarise it are the same for both.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import MiB, log, median, rmtree
from bench.meters import ProcMeter, RssSampler
from bench.repos import MIN_FILES, RandomRepo, make_random_repo, pack_stats, run_git, timed_git
from bench.results import RESULTS_DIR, metric_row, target_row
from bench.runner import Metric, compare, interleave, side_by_side, timed
from bench.trees import Tree, TreeNet

SETTLE_S = 0.2  # after a clone, before reading CPU: lets the servers reap their children
USER = "bench"
BASELINE = "baseline"


def add_tree_options(p: argparse.ArgumentParser) -> None:
    """The options of every side-by-side benchmark: the baseline tree, where results go."""
    p.add_argument(
        "--baseline-tree",
        type=Path,
        metavar="DIR",
        help="also run the edge and nodes of this source tree (e.g. a `git worktree` of an "
        "older commit, bootstrapped with its ./dev), interleaved with this tree's",
    )
    p.add_argument(
        "--baseline-python",
        type=Path,
        metavar="PATH",
        help="the baseline tree's interpreter (default DIR/.venv/bin/python)",
    )
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    name = p.prog.rpartition(".")[2]
    p.add_argument("--tag", default="", help=f"write {name}_TAG.{{json,md}} (and profiles) instead")
    p.add_argument("--keep-work", action="store_true", help="keep the temp work dir (debugging)")


def check_tree_options(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """`p.error` (exit 2) on a bad combination of `add_tree_options`' options."""
    if args.baseline_python and not args.baseline_tree:
        p.error("--baseline-python goes with --baseline-tree")
    if args.tag and not args.tag.replace("-", "").replace("_", "").isalnum():
        p.error("--tag: letters, digits, - and _ only")


def parse_clone_args(
    p: argparse.ArgumentParser, argv: list[str] | None, quick: dict[str, int]
) -> argparse.Namespace:
    """Add the options both clone benchmarks take to `p` (which has its own), and parse.

    `quick` is what --quick sets (`{"size_mb": 20, ...}`).
    """
    quick_help = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in quick.items())
    p.add_argument("--size-mb", type=int, default=100, help="clone repo size in MiB (100)")
    p.add_argument("--rounds", type=int, default=5, help="timed clones per path (5)")
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument(
        "--no-checkout",
        action="store_true",
        help="clone with --no-checkout (transport and index-pack only, no working tree)",
    )
    clones_help = "after the timed runs, run N more edge clones under `py-spy record --gil`"
    p.add_argument("--profile", type=int, default=0, metavar="N", help=clones_help)
    p.add_argument("--profile-native", action="store_true", help="py-spy --native")
    p.add_argument(
        "--profile-process",
        choices=("edge", "node"),
        default="edge",
        help="which server --profile records: this tree's edge, or the node it clones from",
    )
    add_tree_options(p)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    if args.rounds < 1 or args.size_mb < 1:
        p.error("--rounds and --size-mb must be >= 1")
    check_tree_options(p, args)
    return args


def stem(benchmark: str, args: argparse.Namespace) -> str:
    """The results files' name: `benchmark`, or `benchmark_TAG` with --tag."""
    return f"{benchmark}_{args.tag}" if args.tag else benchmark


def trees(args: argparse.Namespace) -> list[Tree]:
    """This tree, and --baseline-tree's if given: each variant runs one of them."""
    if not args.baseline_tree:
        return [Tree.this()]
    return [Tree.this(), Tree.other(BASELINE, args.baseline_tree, args.baseline_python)]


def notes(args: argparse.Namespace, *specific: str) -> list[str]:
    """What a reader of the results needs to know about how the run was made."""
    baseline = (
        "baseline-* variants ran the edge and nodes of --baseline-tree (its own interpreter "
        "and devnet, its own etcd), interleaved round by round with this tree's, on the same "
        "generated repo (same commit, pushed through each tree's edge)."
    )
    return [
        f"MB means MiB ({MiB} bytes).",
        f"Repos have >= {MIN_FILES} blobs so every pack has >= 100 objects and is kept "
        "as a pack (transfer.unpackLimit left at its default of 100).",
        "Blobs are os.urandom; the source packs are written with compression level 0 "
        "(zlib stores random data verbatim at any level).",
        *specific,
        *([baseline] if args.baseline_tree else []),
    ]


def create_repo(net: TreeNet, name: str, **fields: Any) -> dict[str, Any]:
    """`name` placed in fra by `net`'s edge (as user bench), with `fields` in the request
    (e.g. `replicas=2`); returns the placement."""
    response = httpx.post(
        f"{net.https_url}/api/repos",
        json={"name": name, **fields},
        headers={"Fly-Region": "fra"},
        auth=(USER, net.token(USER)),
        verify=str(net.ca_file),
        timeout=30.0,
    )
    if response.status_code != 201:
        raise RuntimeError(f"create {name}: HTTP {response.status_code} {response.text[:300]}")
    info: dict[str, Any] = response.json()
    return info


def wait_in_sync(
    api: httpx.Client,
    name: str,
    *,
    deadline_s: float,
    poll_s: float,
    replicas: int | None = None,
    generation: int | None = None,
) -> float:
    """Poll `GET /api/repos/<name>` until every replica says in-sync (and there are
    `replicas` of them, at `generation`, when given); the seconds it took. Raises
    RuntimeError at the deadline."""
    start = time.perf_counter()
    while True:
        got = api.get(f"/api/repos/{name}")
        if got.status_code != 200:
            raise RuntimeError(f"GET {name}: HTTP {got.status_code} {got.text[:300]}")
        info: dict[str, Any] = got.json()
        states = [r.get("state") for r in info.get("replicas", [])]
        synced = bool(states) and all(state == "in-sync" for state in states)
        if replicas is not None:
            synced = synced and len(states) == replicas
        if generation is not None:
            synced = synced and info.get("generation") == generation
        if synced:
            return time.perf_counter() - start
        if time.perf_counter() - start > deadline_s:
            want = "" if generation is None else f" at generation {generation}"
            raise RuntimeError(f"{name}: not in sync{want} after {deadline_s}s: {info}")
        time.sleep(poll_s)


def generate_repo(
    path: Path, size_mb: int, env: dict[str, str], name: str, **extra: Any
) -> tuple[RandomRepo, dict[str, Any]]:
    """A --size-mb repo of random blobs at `path`, and its record for the results."""
    log(f"generating {size_mb} MiB repo ...")
    t0 = time.perf_counter()
    repo = make_random_repo(path, size_mb * MiB, env)
    return repo, {
        "name": name,
        "bytes": repo.total_bytes,
        "files": repo.files,
        "file_bytes": repo.file_bytes,
        "objects": repo.objects,
        "commit": repo.commit,
        "generate_s": time.perf_counter() - t0,
        **extra,
    }


def push_through(
    url: str, repo: RandomRepo, env: dict[str, str], edge: ProcMeter
) -> dict[str, Any]:
    """Push `repo`'s main through an edge; wall, client CPU, the edge's CPU, MiB/s."""
    edge_cpu0, _ = edge.cpu()
    pushed = timed_git(["push", "--quiet", url, "main:main"], env, cwd=repo.path, timeout=1800)
    time.sleep(SETTLE_S)
    return {
        **asdict(pushed),
        "edge_cpu_s": edge.cpu()[0] - edge_cpu0,
        "mb_per_s": repo.total_bytes / MiB / pushed.wall_s,
    }


@dataclass
class CloneSample:
    round: int
    path: str  # the variant: "direct", "edge", "baseline-edge", ...
    warmup: bool
    wall_s: float
    client_cpu_s: float
    edge_cpu_s: float
    """The variant's edge (on a direct path: that tree's edge, idle)."""
    edge_children_cpu_s: float
    node_cpu_s: float
    node_children_cpu_s: float
    edge_rss_before_mb: float
    edge_peak_rss_mb: float
    pack_bytes: int
    packs: int
    loose_objects: int
    loadavg_1m: float = 0.0
    """The machine's 1-minute load average when the clone ended (others share it)."""
    edge_voluntary_ctx: int = 0
    node_voluntary_ctx: int = 0
    other_cpu_s: dict[str, float] = field(default_factory=dict)
    """Other servers on the path (e.g. the direct sshd): own CPU plus reaped children."""
    edge_system_cpu_s: float = 0.0
    """The kernel's part of edge_cpu_s."""
    node_system_cpu_s: float = 0.0
    """The kernel's part of node_cpu_s (the node's own)."""


@dataclass(frozen=True)
class Variant:
    """One way to clone: a URL, the client env, and the servers it is charged to."""

    name: str
    url: str
    env: dict[str, str]
    edge: ProcMeter
    node: ProcMeter
    others: dict[str, ProcMeter] = field(default_factory=dict)


def profiled(v: Variant, args: argparse.Namespace) -> tuple[ProcMeter, str]:
    """The server --profile-process names on `v`, and the suffix of its profile files
    ("" for the edge, as they always were named)."""
    if args.profile_process == "node":
        return v.node, "_node"
    return v.edge, ""


def clone_once(
    v: Variant, round_no: int, warmup: bool, work: Path, commit: str, no_checkout: bool
) -> CloneSample:
    """Clone `v.url` into a fresh dir, reading every server's CPU around it; check HEAD."""
    dest = Path(tempfile.mkdtemp(prefix=f"clone-{v.name}-", dir=work)) / "repo"
    try:
        edge0, edge_ch0 = v.edge.cpu()
        node0, node_ch0 = v.node.cpu()
        others0 = {k: sum(m.cpu()) for k, m in v.others.items()}
        rss0 = v.edge.rss()
        edge_ctx0, node_ctx0 = v.edge.voluntary_ctx(), v.node.voluntary_ctx()
        edge_sys0, node_sys0 = v.edge.system_cpu(), v.node.system_cpu()
        args = ["clone", "--quiet", *(["--no-checkout"] if no_checkout else [])]
        with RssSampler(v.edge) as rss:
            run = timed_git([*args, v.url, str(dest)], v.env, timeout=900)
            time.sleep(SETTLE_S)
        edge1, edge_ch1 = v.edge.cpu()
        node1, node_ch1 = v.node.cpu()
        others = {k: sum(m.cpu()) - others0[k] for k, m in v.others.items()}
        edge_ctx1, node_ctx1 = v.edge.voluntary_ctx(), v.node.voluntary_ctx()
        edge_sys1, node_sys1 = v.edge.system_cpu(), v.node.system_cpu()
        head = run_git(["-C", str(dest), "rev-parse", "HEAD"], v.env).strip()
        if head != commit:
            raise RuntimeError(f"{v.name} clone has HEAD {head}, expected {commit}")
        return CloneSample(
            round=round_no,
            path=v.name,
            warmup=warmup,
            wall_s=run.wall_s,
            client_cpu_s=run.client_cpu_s,
            edge_cpu_s=edge1 - edge0,
            edge_children_cpu_s=edge_ch1 - edge_ch0,
            node_cpu_s=node1 - node0,
            node_children_cpu_s=node_ch1 - node_ch0,
            edge_rss_before_mb=rss0 / MiB,
            edge_peak_rss_mb=rss.peak / MiB,
            **pack_stats(dest / ".git"),
            loadavg_1m=os.getloadavg()[0],
            edge_voluntary_ctx=edge_ctx1 - edge_ctx0,
            node_voluntary_ctx=node_ctx1 - node_ctx0,
            other_cpu_s=others,
            edge_system_cpu_s=edge_sys1 - edge_sys0,
            node_system_cpu_s=node_sys1 - node_sys0,
        )
    finally:
        rmtree(dest.parent)


def clone_rounds(
    variants: dict[str, Variant],
    rounds: int,
    work: Path,
    commit: str,
    no_checkout: bool,
    after_warmup: Callable[[], None] | None = None,
) -> list[CloneSample]:
    """A warm-up clone of every variant, then `rounds` timed rounds, interleaved."""

    def one(name: str, round_no: int, warmup: bool) -> CloneSample:
        s = clone_once(variants[name], round_no, warmup, work, commit, no_checkout)
        others = "".join(f"  {k} CPU {v:.2f}s" for k, v in s.other_cpu_s.items())
        log(
            f"{'warm-up' if s.warmup else f'round {s.round}'} {s.path:15s} {s.wall_s:7.3f}s  "
            f"edge CPU {s.edge_cpu_s:.3f}s (sys {s.edge_system_cpu_s:.2f})  "
            f"node own CPU {s.node_cpu_s:.2f}s (sys {s.node_system_cpu_s:.2f}) "
            f"with git {s.node_cpu_s + s.node_children_cpu_s:.2f}s"
            f"{others}  client CPU {s.client_cpu_s:.2f}s  "
            f"edge/node ctx {s.edge_voluntary_ctx}/{s.node_voluntary_ctx}  "
            f"pack {s.pack_bytes / MiB:.1f} MiB ({s.packs} pack, {s.loose_objects} loose)"
        )
        return s

    return interleave(list(variants), rounds, one, after_warmup=after_warmup)


def clone_summary(samples: list[CloneSample], edge: str, direct: str) -> dict[str, Any]:
    """Medians of `edge` against `direct` (variant names) over the timed clones."""
    c = compare(samples, edge, direct)
    e, d = timed(samples, edge), timed(samples, direct)
    both = e + d

    def node_cpu(s: CloneSample) -> float:
        return s.node_cpu_s + s.node_children_cpu_s

    return {
        "median_direct_s": c.median_reference_s,
        "median_edge_s": c.median_variant_s,
        "ratio_edge_direct": c.ratio,
        "median_pair_ratio": c.median_pair_ratio,
        "pair_ratios": c.pair_ratios,
        "edge_cpu_s_per_clone": median([s.edge_cpu_s for s in e]),
        "edge_cpu_s_per_100mb": median([s.edge_cpu_s / (s.pack_bytes / (100 * MiB)) for s in e]),
        "edge_cpu_s_during_direct_clone": median([s.edge_cpu_s for s in d]),
        "node_cpu_s_direct": median([node_cpu(s) for s in d]),
        "node_cpu_s_edge": median([node_cpu(s) for s in e]),
        "node_own_cpu_s_direct": median([s.node_cpu_s for s in d]),
        "node_own_cpu_s_edge": median([s.node_cpu_s for s in e]),
        "edge_system_cpu_s_per_clone": median([s.edge_system_cpu_s for s in e]),
        "node_own_system_cpu_s_edge": median([s.node_system_cpu_s for s in e]),
        "client_cpu_s_direct": median([s.client_cpu_s for s in d]),
        "client_cpu_s_edge": median([s.client_cpu_s for s in e]),
        "edge_peak_rss_mb_during_clones": max(s.edge_peak_rss_mb for s in e),
        "edge_rss_mb_before_first_clone": next(
            s.edge_rss_before_mb for s in samples if s.path == edge
        ),
        "edge_rss_growth_mb_per_clone_max": max(
            s.edge_peak_rss_mb - s.edge_rss_before_mb for s in e
        ),
        "clone_pack_mb": median([s.pack_bytes / MiB for s in both]),
        "edge_mb_per_s": median([s.pack_bytes / MiB / s.wall_s for s in e]),
        "direct_mb_per_s": median([s.pack_bytes / MiB / s.wall_s for s in d]),
        "clone_packs_max": max(s.packs for s in both),
        "clone_loose_objects_max": max(s.loose_objects for s in both),
    }


# The side-by-side rows every clone benchmark shows first (keys of clone_summary).
CLONE_METRICS = (
    Metric("median clone, edge, s", "median_edge_s"),
    Metric("median clone, direct, s", "median_direct_s"),
    Metric("ratio edge/direct (of medians)", "ratio_edge_direct"),
    Metric("median of per-round ratios", "median_pair_ratio"),
    Metric("edge CPU per 100 MiB cloned, s", "edge_cpu_s_per_100mb"),
    Metric("node CPU per edge clone (own + git children), s", "node_cpu_s_edge", ".2f"),
    Metric("node CPU per edge clone, own, s", "node_own_cpu_s_edge", ".2f"),
    Metric("of it in the kernel (system time), s", "node_own_system_cpu_s_edge", ".2f"),
    Metric("edge peak RSS during clones, MiB", "edge_peak_rss_mb_during_clones", ".1f"),
    Metric("throughput through the edge, MiB/s", "edge_mb_per_s", ".0f"),
)


def compare_trees(
    result: dict[str, Any], samples: list[CloneSample], metrics: Sequence[Metric]
) -> None:
    """`side_by_side`: both trees' summaries metric by metric, and this tree's edge
    clone against the baseline tree's (same run, same repo)."""
    result["side_by_side"] = {
        "rows": side_by_side(
            [*CLONE_METRICS, *metrics], result["summary"], result[BASELINE]["summary"]
        ),
        "edge_vs_baseline_edge": compare(samples, "edge", f"{BASELINE}-edge").as_dict(),
    }


def ratio_rows(s: dict[str, Any], target: float, direct: str, edge: str) -> list[str]:
    """The first rows of every clone table: both medians, their ratio against `target`."""
    return [
        metric_row(f"median clone, direct ({direct})", f"{s['median_direct_s']:.3f} s"),
        metric_row(f"median clone, edge ({edge})", f"{s['median_edge_s']:.3f} s"),
        target_row(s, "ratio_edge_direct", "ratio edge/direct (of medians)",
                   f"{s['ratio_edge_direct']:.3f}", f"<= {target}"),
        metric_row("median of per-round ratios", f"{s['median_pair_ratio']:.3f}"),
    ]  # fmt: skip
