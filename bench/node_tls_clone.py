"""What edge -> node TLS costs: HTTPS clones through the edge to a TLS node vs a plain one.

    python -m bench.node_tls_clone              # 100 MiB, 5 interleaved rounds
    python -m bench.node_tls_clone --quick      # 20 MiB, 3 rounds

One devnet: fra-1 serves plain HTTP, lax-1 HTTPS (its certificate pinned by
the edge from etcd), one edge in fra. The same random repository is pushed to
both through the edge; then clones through the edge alternate between them
(plain, tls, plain, ...) after one untimed warm-up each. Per clone: wall time,
the edge's own CPU and the serving node's own CPU (psutil, user + system).
The client leg (git -> edge) is HTTPS on both paths; only the edge -> node
leg differs. Writes bench/results/node_tls_clone.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import tempfile
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.clones import USER, CloneSample, Variant, clone_once
from bench.common import MiB, log, machine_info, median
from bench.meters import ProcMeter
from bench.repos import clean_git_env, make_random_repo, timed_git
from devnet.network import Devnet, start_devnet

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PATHS = {"plain": ("fra", "fra-1"), "tls": ("lax", "lax-1")}


def _create(net: Devnet, name: str, region: str) -> None:
    response = httpx.post(
        f"{net.edge.https_url}/api/repos",
        json={"name": name},
        headers={"Fly-Region": region},
        auth=(USER, net.user_token(USER)),
        verify=ssl.create_default_context(cafile=str(net.ca_file)),
        timeout=30.0,
    )
    if response.status_code != 201:
        raise RuntimeError(f"create {name}: HTTP {response.status_code} {response.text[:300]}")


def run(size_mb: int, rounds: int) -> dict[str, Any]:
    samples: list[CloneSample] = []
    with tempfile.TemporaryDirectory(prefix="gitedge-bench-") as tmp:
        work = Path(tmp)
        env = clean_git_env(work / "home")
        with start_devnet(work / "devnet", ("fra", "lax"), tls_regions=("lax",)) as net:
            env = clean_git_env(work / "home", GIT_SSL_CAINFO=str(net.ca_file))
            base = net.edge.https_url.replace("://", f"://{USER}:{net.user_token(USER)}@", 1)
            log(f"generating {size_mb} MiB repo ...")
            repo = make_random_repo(work / "src", size_mb * MiB, env)
            edge = ProcMeter(net.edge.process.popen.pid)
            variants = {}
            for path, (region, node_id) in PATHS.items():
                _create(net, f"bench/{path}", region)
                url = f"{base}/bench/{path}.git"
                log(f"pushing to {path} ({net.nodes[node_id].http_url}) ...")
                timed_git(["push", "--quiet", url, "main:main"], env, cwd=repo.path)
                node = ProcMeter(net.nodes[node_id].process.popen.pid)
                variants[path] = Variant(path, url, env, edge, node)
            for round_no in range(rounds + 1):  # round 0: warm-up, not counted
                for path, variant in variants.items():
                    sample = clone_once(variant, round_no, not round_no, work, repo.commit, True)
                    log(
                        f"round {round_no} {path}: {sample.wall_s:.2f}s, edge"
                        f" {sample.edge_cpu_s:.3f} CPU-s, node {sample.node_cpu_s:.3f} CPU-s"
                    )
                    if round_no:
                        samples.append(sample)
    per_100 = 100 * MiB / repo.total_bytes
    summary: dict[str, Any] = {}
    for path in PATHS:
        mine = [s for s in samples if s.path == path]
        summary[path] = {
            "wall_s": median([s.wall_s for s in mine]),
            "edge_cpu_s_per_100mib": median([s.edge_cpu_s for s in mine]) * per_100,
            # The node's own CPU, as this benchmark always counted it (git children apart).
            "node_cpu_s_per_100mib": median([s.node_cpu_s for s in mine]) * per_100,
        }
    summary["ratio_wall_tls_over_plain"] = summary["tls"]["wall_s"] / summary["plain"]["wall_s"]
    summary["ratio_edge_cpu_tls_over_plain"] = (
        summary["tls"]["edge_cpu_s_per_100mib"] / summary["plain"]["edge_cpu_s_per_100mib"]
    )
    return {
        "benchmark": "node_tls_clone",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "size_mb": size_mb,
        "rounds": rounds,
        "machine": machine_info(),
        "summary": summary,
        "samples": [asdict(s) for s in samples],
    }


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    rows = [
        "| edge -> node | clone wall (median) | edge CPU-s / 100 MiB | node CPU-s / 100 MiB |",
        "| --- | ---: | ---: | ---: |",
    ]
    for path in PATHS:
        p = s[path]
        rows.append(
            f"| {path} | {p['wall_s']:.2f} s | {p['edge_cpu_s_per_100mib']:.3f}"
            f" | {p['node_cpu_s_per_100mib']:.3f} |"
        )
    return (
        f"# Edge -> node TLS ({result['size_mb']} MiB clone, {result['rounds']} interleaved"
        " rounds, client leg HTTPS on both)\n\n" + "\n".join(rows) + "\n\n"
        f"TLS / plain: wall {s['ratio_wall_tls_over_plain']:.2f}x,"
        f" edge CPU {s['ratio_edge_cpu_tls_over_plain']:.2f}x\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.node_tls_clone")
    p.add_argument("--size-mb", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="--size-mb 20 --rounds 3")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.rounds = 20, 3
    result = run(args.size_mb, args.rounds)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "node_tls_clone.json").write_text(json.dumps(result, indent=2) + "\n")
    table = render(result)
    (args.results_dir / "node_tls_clone.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
