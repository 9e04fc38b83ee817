"""Clone through the HTTPS edge vs directly from the node; edge CPU and memory.

    python -m bench.http_clone              # 100 MiB clones x5 each, 1 GiB push
    python -m bench.http_clone --quick      # 20 MiB, 3 rounds, 100 MiB push
    python -m bench.http_clone --profile    # then py-spy the edge during extra clones

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

Timings vary by about +-30 % between runs here: compare the interleaved
medians and the ratio within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import ssl
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    MIN_FILES,
    MiB,
    ProcMeter,
    RandomRepo,
    RssSampler,
    clean_git_env,
    machine_info,
    make_random_repo,
    median,
    pack_stats,
    profile_process,
    render_profile,
    rmtree,
    run_git,
    sigterm_as_interrupt,
    timed_git,
    verdict,
)
from devnet.network import Devnet, start_devnet

RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.05
TARGET_EDGE_CPU_PER_100MB = 0.10
TARGET_PEAK_RSS_MB = 80.0
SETTLE_S = 0.2  # after a clone, before reading CPU: lets both servers finish up


@dataclass
class CloneSample:
    round: int
    path: str  # "direct" or "edge"
    warmup: bool
    wall_s: float
    client_cpu_s: float
    edge_cpu_s: float
    edge_children_cpu_s: float
    node_cpu_s: float
    node_children_cpu_s: float
    edge_peak_rss_mb: float
    pack_bytes: int
    packs: int
    loose_objects: int


@dataclass
class Servers:
    net: Devnet
    edge: ProcMeter
    node: ProcMeter
    node_id: str
    edge_base: str
    node_base: str


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.http_clone", description=__doc__.split("\n")[0]
    )
    p.add_argument("--size-mb", type=int, default=100, help="clone repo size in MiB (100)")
    p.add_argument("--rounds", type=int, default=5, help="timed clones per path (5)")
    p.add_argument("--push-mb", type=int, default=1024, help="push size for the RSS test (1024)")
    p.add_argument("--quick", action="store_true", help="--size-mb 20 --push-mb 100 --rounds 3")
    p.add_argument(
        "--no-checkout",
        action="store_true",
        help="clone with --no-checkout (transport and index-pack only, no working tree)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the timed rounds, run N more edge clones under `py-spy record`",
    )
    p.add_argument("--profile-native", action="store_true", help="py-spy --native")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--keep-work", action="store_true", help="keep the temp work dir (debugging)")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.push_mb, args.rounds = 20, 100, 3
    if args.rounds < 1 or args.size_mb < 1 or args.push_mb < 0:
        p.error("--rounds and --size-mb must be >= 1, --push-mb >= 0")
    return args


USER = "bench"


def create_repo(net: Devnet, name: str) -> dict[str, Any]:
    response = httpx.post(
        f"{net.edge.https_url}/api/repos",
        json={"name": name},
        headers={"Fly-Region": "fra"},
        auth=(USER, net.user_token(USER)),
        verify=ssl.create_default_context(cafile=str(net.ca_file)),
        timeout=30.0,
    )
    if response.status_code != 201:
        raise RuntimeError(f"create {name}: HTTP {response.status_code} {response.text[:300]}")
    info: dict[str, Any] = response.json()
    return info


def clone_once(
    srv: Servers,
    path: str,
    url: str,
    round_no: int,
    warmup: bool,
    work: Path,
    env: dict[str, str],
    expected_commit: str,
    no_checkout: bool,
) -> CloneSample:
    dest = Path(tempfile.mkdtemp(prefix=f"clone-{path}-", dir=work)) / "repo"
    try:
        edge_before, edge_ch_before = srv.edge.cpu()
        node_before, node_ch_before = srv.node.cpu()
        args = ["clone", "--quiet", *(["--no-checkout"] if no_checkout else []), url, str(dest)]
        with RssSampler(srv.edge) as rss:
            timed = timed_git(args, env, timeout=900)
            time.sleep(SETTLE_S)
        edge_after, edge_ch_after = srv.edge.cpu()
        node_after, node_ch_after = srv.node.cpu()
        git_dir = dest / ".git"
        head = run_git(["-C", str(dest), "rev-parse", "HEAD"], env).strip()
        if head != expected_commit:
            raise RuntimeError(f"{path} clone has HEAD {head}, expected {expected_commit}")
        stats = pack_stats(git_dir)
        return CloneSample(
            round=round_no,
            path=path,
            warmup=warmup,
            wall_s=timed.wall_s,
            client_cpu_s=timed.client_cpu_s,
            edge_cpu_s=edge_after - edge_before,
            edge_children_cpu_s=edge_ch_after - edge_ch_before,
            node_cpu_s=node_after - node_before,
            node_children_cpu_s=node_ch_after - node_ch_before,
            edge_peak_rss_mb=rss.peak / MiB,
            **stats,
        )
    finally:
        rmtree(dest.parent)


def big_push(
    srv: Servers, work: Path, env: dict[str, str], push_mb: int, log: Any
) -> dict[str, Any]:
    """Push --push-mb MiB through the edge into a second repo, sampling edge RSS."""
    name = "bench/push"
    info = create_repo(srv.net, name)
    src = work / "push-src"
    try:
        log(f"generating {push_mb} MiB push repo ...")
        t0 = time.perf_counter()
        repo = make_random_repo(src, push_mb * MiB, env)
        gen_s = time.perf_counter() - t0
        rss_before = srv.edge.rss()
        cpu_before, _ = srv.edge.cpu()
        log(f"pushing {push_mb} MiB through the edge ({repo.files} files) ...")
        with RssSampler(srv.edge, interval=0.05) as rss:
            timed = timed_git(
                ["push", "--quiet", f"{srv.edge_base}/{name}.git", "main:main"],
                env,
                cwd=src,
                timeout=3600,
            )
            time.sleep(SETTLE_S)
        cpu_after, _ = srv.edge.cpu()
        remote = run_git(
            ["ls-remote", f"{srv.node_base}/{name}.git", "refs/heads/main"], env
        ).split()
        if not remote or remote[0] != repo.commit:
            raise RuntimeError(f"big push did not land on the node: {remote}")
        return {
            "repo": name,
            "placed": info,
            "bytes": repo.total_bytes,
            "files": repo.files,
            "objects": repo.objects,
            "generate_s": gen_s,
            "wall_s": timed.wall_s,
            "client_cpu_s": timed.client_cpu_s,
            "edge_cpu_s": cpu_after - cpu_before,
            "mb_per_s": repo.total_bytes / MiB / timed.wall_s,
            "edge_rss_before_mb": rss_before / MiB,
            "edge_rss_peak_mb": rss.peak / MiB,
            "rss_interval_s": 0.05,
            "rss_samples": [(round(t, 3), b) for t, b in rss.samples],
        }
    finally:
        rmtree(src)


def profile_edge(
    srv: Servers,
    work: Path,
    env: dict[str, str],
    clones: int,
    commit: str,
    no_checkout: bool,
    native: bool,
    results_dir: Path,
    log: Any,
) -> dict[str, Any]:
    """py-spy the edge during `clones` extra edge clones; top frames by own time."""
    url = f"{srv.edge_base}/bench/big.git"

    def one_clone(i: int) -> float:
        s = clone_once(srv, "edge", url, i, False, work, env, commit, no_checkout)
        log(f"  profiled edge clone {i}: {s.wall_s:.2f}s, edge CPU {s.edge_cpu_s:.2f}s")
        return s.wall_s

    return profile_process(
        srv.edge,
        work / "edge-profile.txt",
        results_dir / f"http_clone_profile{'_native' if native else ''}.txt",
        "clone",
        clones,
        one_clone,
        native=native,
        log=log,
    )


def summarise(samples: list[CloneSample], push: dict[str, Any] | None) -> dict[str, Any]:
    timed = [s for s in samples if not s.warmup]
    direct = [s for s in timed if s.path == "direct"]
    edge = [s for s in timed if s.path == "edge"]
    med_direct = median([s.wall_s for s in direct])
    med_edge = median([s.wall_s for s in edge])
    ratio = med_edge / med_direct
    # Pairwise ratios (round i edge / round i direct) are less sensitive to drift.
    pair_ratios = [e.wall_s / d.wall_s for d, e in zip(direct, edge, strict=True)]
    edge_cpu = median([s.edge_cpu_s for s in edge])
    edge_cpu_100 = median([s.edge_cpu_s / (s.pack_bytes / (100 * MiB)) for s in edge])
    out: dict[str, Any] = {
        "median_direct_s": med_direct,
        "median_edge_s": med_edge,
        "ratio_edge_direct": ratio,
        "median_pair_ratio": median(pair_ratios),
        "pair_ratios": pair_ratios,
        "edge_cpu_s_per_clone": edge_cpu,
        "edge_cpu_s_per_100mb": edge_cpu_100,
        "edge_cpu_s_during_direct_clone": median([s.edge_cpu_s for s in direct]),
        "node_cpu_s_direct": median([s.node_cpu_s + s.node_children_cpu_s for s in direct]),
        "node_cpu_s_edge": median([s.node_cpu_s + s.node_children_cpu_s for s in edge]),
        "node_own_cpu_s_direct": median([s.node_cpu_s for s in direct]),
        "node_own_cpu_s_edge": median([s.node_cpu_s for s in edge]),
        "client_cpu_s_direct": median([s.client_cpu_s for s in direct]),
        "client_cpu_s_edge": median([s.client_cpu_s for s in edge]),
        "edge_peak_rss_mb_during_clones": max(s.edge_peak_rss_mb for s in edge),
        "clone_pack_mb": median([s.pack_bytes / MiB for s in timed]),
        "edge_mb_per_s": median([s.pack_bytes / MiB / s.wall_s for s in edge]),
        "direct_mb_per_s": median([s.pack_bytes / MiB / s.wall_s for s in direct]),
        "clone_packs_max": max(s.packs for s in timed),
        "clone_loose_objects_max": max(s.loose_objects for s in timed),
        "edge_cpu_s_per_100mb_pushed": (
            push["edge_cpu_s"] / (push["bytes"] / (100 * MiB)) if push else None
        ),
        "edge_rss_before_push_mb": push["edge_rss_before_mb"] if push else None,
        "edge_peak_rss_push_mb": push["edge_rss_peak_mb"] if push else None,
        "push_mb": push["bytes"] / MiB if push else None,
    }
    peak = out["edge_peak_rss_push_mb"]
    out["targets"] = {
        "ratio_edge_direct": {
            "target": f"<= {TARGET_RATIO}",
            "value": ratio,
            "pass": ratio <= TARGET_RATIO,
        },
        "edge_cpu_s_per_100mb": {
            "target": f"<= {TARGET_EDGE_CPU_PER_100MB}",
            "value": edge_cpu_100,
            "pass": edge_cpu_100 <= TARGET_EDGE_CPU_PER_100MB,
        },
        "edge_peak_rss_push_mb": {
            "target": f"<= {TARGET_PEAK_RSS_MB}",
            "value": peak,
            "pass": None if peak is None else peak <= TARGET_PEAK_RSS_MB,
        },
    }
    return out


def render_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    t = s["targets"]
    m = result["machine"]
    a = result["args"]
    repo = result["repo"]
    push = result.get("big_push")
    push_mb = f"{push['bytes'] / MiB:.0f} MiB" if push else "no"
    lines = [
        f"gitedge http_clone: {repo['bytes'] / MiB:.0f} MiB repo, {repo['files']} files "
        f"({repo['objects']} objects, pack kept: >= 100 objects, transfer.unpackLimit "
        f"at default), {a['rounds']} interleaved rounds + 1 warm-up per path, "
        f"clone{' --no-checkout' if a['no_checkout'] else ' with checkout'}",
        f"machine: nproc {m['nproc']} ({m['cpu_model']}), {m['mem_total_mb']} MiB RAM, "
        f"Python {m['python']}, {m['git']}, Linux {m['kernel']}; load avg "
        f"{result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
        f"every timed clone kept its pack: max {s['clone_packs_max']} pack, "
        f"{s['clone_loose_objects_max']} loose objects",
        "",
        "| metric | value | target | result |",
        "| --- | ---: | ---: | --- |",
        f"| median clone, direct (plain HTTP to node) | {s['median_direct_s']:.3f} s | | |",
        f"| median clone, edge (HTTPS) | {s['median_edge_s']:.3f} s | | |",
        f"| ratio edge/direct (of medians) | {s['ratio_edge_direct']:.3f} | "
        f"<= {TARGET_RATIO} | {verdict(t['ratio_edge_direct']['pass'])} |",
        f"| median of per-round ratios | {s['median_pair_ratio']:.3f} | | |",
        f"| edge CPU per clone (median) | {s['edge_cpu_s_per_clone']:.3f} s | | |",
        f"| edge CPU per 100 MiB cloned | {s['edge_cpu_s_per_100mb']:.3f} s | "
        f"<= {TARGET_EDGE_CPU_PER_100MB} s | {verdict(t['edge_cpu_s_per_100mb']['pass'])} |",
    ]
    if push:
        lines += [
            f"| edge peak RSS during {push_mb} push | {s['edge_peak_rss_push_mb']:.1f} MiB | "
            f"<= {TARGET_PEAK_RSS_MB:.0f} MiB | {verdict(t['edge_peak_rss_push_mb']['pass'])} |",
            f"| edge RSS before that push | {s['edge_rss_before_push_mb']:.1f} MiB | | |",
            f"| edge CPU per 100 MiB pushed (during that push) | "
            f"{s['edge_cpu_s_per_100mb_pushed']:.3f} s | | |",
        ]
    lines += [
        f"| edge CPU during a direct clone (idle noise) | "
        f"{s['edge_cpu_s_during_direct_clone']:.3f} s | | |",
        f"| node CPU per clone (own + git children), direct / edge | "
        f"{s['node_cpu_s_direct']:.2f} / {s['node_cpu_s_edge']:.2f} s | | |",
        f"| client git CPU per clone, direct / edge | "
        f"{s['client_cpu_s_direct']:.2f} / {s['client_cpu_s_edge']:.2f} s | | |",
        f"| throughput, direct / edge | {s['direct_mb_per_s']:.0f} / "
        f"{s['edge_mb_per_s']:.0f} MiB/s | | |",
        f"| edge peak RSS during clones | {s['edge_peak_rss_mb_during_clones']:.1f} MiB | | |",
        f"| push {repo['bytes'] / MiB:.0f} MiB through edge | {result['push']['wall_s']:.2f} s"
        " | | |",
    ]
    if push:
        lines.append(
            f"| push {push_mb} through edge | {push['wall_s']:.2f} s "
            f"({push['mb_per_s']:.0f} MiB/s, edge CPU {push['edge_cpu_s']:.2f} s) | | |"
        )
    lines += ["", "per round (wall s / edge CPU s / node CPU s):", ""]
    lines += ["| round | direct | edge |", "| --- | --- | --- |"]
    samples = [CloneSample(**x) for x in result["samples"]]
    for r in sorted({x.round for x in samples if not x.warmup}):
        cells = []
        for path in ("direct", "edge"):
            x = next(x for x in samples if x.round == r and x.path == path and not x.warmup)
            cells.append(
                f"{x.wall_s:.3f} / {x.edge_cpu_s:.3f} / {x.node_cpu_s + x.node_children_cpu_s:.2f}"
            )
        lines.append(f"| {r} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    result: dict[str, Any] = {
        "benchmark": "http_clone",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "notes": [
            f"MB means MiB ({MiB} bytes).",
            f"Repos have >= {MIN_FILES} blobs so every pack has >= 100 objects and is kept "
            "as a pack (transfer.unpackLimit left at its default of 100).",
            "Blobs are os.urandom; the source packs are written with compression level 0 "
            "(zlib stores random data verbatim at any level).",
            "CPU from psutil cpu_times (user+system), read before and 0.2 s after each clone; "
            "node children = reaped git processes.",
        ],
    }
    result["loadavg_start"] = os.getloadavg()
    work_ctx = tempfile.TemporaryDirectory(prefix="gitedge-bench-")
    work = Path(work_ctx.name)
    try:
        env_home = work / "home"
        env = clean_git_env(env_home)
        log(f"work dir {work}; starting devnet ...")
        with start_devnet(work / "devnet") as net:
            env_edge = clean_git_env(env_home, GIT_SSL_CAINFO=str(net.ca_file))
            info = create_repo(net, "bench/big")
            node_id = str(info["node"])
            node = net.nodes[node_id]
            srv = Servers(
                net=net,
                edge=ProcMeter(net.edge.process.popen.pid),
                node=ProcMeter(node.process.popen.pid),
                node_id=node_id,
                # The bench user's token in the URL: git needs no prompt or helper.
                edge_base=net.edge.https_url.rstrip("/").replace(
                    "://", f"://{USER}:{net.user_token(USER)}@", 1
                ),
                node_base=node.http_url.rstrip("/"),
            )
            log(
                f"edge {net.edge.https_url} (pid {srv.edge.proc.pid}), node {node_id} "
                f"{srv.node_base} (pid {srv.node.proc.pid})"
            )
            log(f"generating {args.size_mb} MiB repo ...")
            t0 = time.perf_counter()
            repo: RandomRepo = make_random_repo(work / "src", args.size_mb * MiB, env)
            result["repo"] = {
                "name": "bench/big",
                "placed": info,
                "bytes": repo.total_bytes,
                "files": repo.files,
                "file_bytes": repo.file_bytes,
                "objects": repo.objects,
                "commit": repo.commit,
                "generate_s": time.perf_counter() - t0,
            }
            log("pushing it through the edge ...")
            edge_cpu0, _ = srv.edge.cpu()
            pushed = timed_git(
                ["push", "--quiet", f"{srv.edge_base}/bench/big.git", "main:main"],
                env_edge,
                cwd=repo.path,
                timeout=1800,
            )
            time.sleep(SETTLE_S)
            result["push"] = {
                **asdict(pushed),
                "edge_cpu_s": srv.edge.cpu()[0] - edge_cpu0,
                "mb_per_s": repo.total_bytes / MiB / pushed.wall_s,
                "node_repo_pack": pack_stats(node.volume_dir / "bench" / "big.git")
                if (node.volume_dir / "bench" / "big.git").is_dir()
                else None,
            }
            rmtree(repo.path)
            urls = {
                "direct": f"{srv.node_base}/bench/big.git",
                "edge": f"{srv.edge_base}/bench/big.git",
            }
            envs = {"direct": env, "edge": env_edge}
            samples: list[CloneSample] = []
            for round_no in range(0, args.rounds + 1):
                warmup = round_no == 0
                for path in ("direct", "edge"):
                    s = clone_once(
                        srv,
                        path,
                        urls[path],
                        round_no,
                        warmup,
                        work,
                        envs[path],
                        repo.commit,
                        args.no_checkout,
                    )
                    samples.append(s)
                    log(
                        f"{'warm-up' if warmup else f'round {round_no}'} {path:6s} "
                        f"{s.wall_s:7.3f}s  edge CPU {s.edge_cpu_s:.3f}s  "
                        f"node CPU {s.node_cpu_s + s.node_children_cpu_s:.2f}s  "
                        f"client CPU {s.client_cpu_s:.2f}s  pack {s.pack_bytes / MiB:.1f} MiB "
                        f"({s.packs} pack, {s.loose_objects} loose)"
                    )
            result["samples"] = [asdict(s) for s in samples]
            push = big_push(srv, work, env_edge, args.push_mb, log) if args.push_mb else None
            if push:
                log(
                    f"big push {push['wall_s']:.1f}s, edge RSS {push['edge_rss_before_mb']:.1f} "
                    f"-> peak {push['edge_rss_peak_mb']:.1f} MiB"
                )
            result["big_push"] = push
            result["summary"] = summarise(samples, push)
            if args.profile:
                log(f"profiling the edge during {args.profile} edge clones ...")
                profile = profile_edge(
                    srv,
                    work,
                    env_edge,
                    args.profile,
                    repo.commit,
                    args.no_checkout,
                    args.profile_native,
                    args.results_dir,
                    log,
                )
                result["profile"] = profile
            result["edge_log_tail"] = net.edge.process.log_tail(20)
            result["loadavg_end"] = os.getloadavg()
    finally:
        if args.keep_work:
            print(f"kept {work}", file=sys.stderr)
        else:
            work_ctx.cleanup()
    return result


def main(argv: list[str] | None = None) -> int:
    sigterm_as_interrupt()
    args = parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted; devnet stopped and work dir removed", file=sys.stderr)
        return 130
    table = render_table(result)
    text = table
    if "profile" in result:
        text += "\n\n" + render_profile(result["profile"])
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / "http_clone.json"
    md_path = args.results_dir / "http_clone.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(
        f"# bench.http_clone ({result['started_at']})\n\n"
        f"`python -m bench.http_clone {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
        + text
        + "\n"
    )
    print(f"\nwrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
