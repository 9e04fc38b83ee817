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
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import MiB, machine_info, median, rmtree
from bench.meters import ProcMeter
from bench.repos import clean_git_env, make_random_repo, run_git, timed_git
from devnet.network import Devnet, start_devnet

RESULTS_DIR = Path(__file__).resolve().parent / "results"
USER = "bench"
SETTLE_S = 0.2  # after a clone, before reading CPU: lets both servers finish up
PATHS = {"plain": ("fra", "fra-1"), "tls": ("lax", "lax-1")}


@dataclass
class Sample:
    path: str
    round: int
    wall_s: float
    edge_cpu_s: float
    node_cpu_s: float


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


def _clone(
    net: Devnet, path: str, url: str, round_no: int, work: Path, env: dict[str, str], head: str
) -> Sample:
    edge = ProcMeter(net.edge.process.popen.pid)
    node = ProcMeter(net.nodes[PATHS[path][1]].process.popen.pid)
    dest = Path(tempfile.mkdtemp(prefix=f"clone-{path}-", dir=work)) / "repo"
    try:
        edge0, node0 = edge.cpu()[0], node.cpu()[0]
        timed = timed_git(["clone", "--quiet", "--no-checkout", url, str(dest)], env, timeout=900)
        time.sleep(SETTLE_S)
        edge1, node1 = edge.cpu()[0], node.cpu()[0]
        got = run_git(["-C", str(dest), "rev-parse", "HEAD"], env).strip()
        if got != head:
            raise RuntimeError(f"{path} clone has HEAD {got}, expected {head}")
        return Sample(path, round_no, timed.wall_s, edge1 - edge0, node1 - node0)
    finally:
        rmtree(dest.parent)


def run(size_mb: int, rounds: int) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    samples: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="gitedge-bench-") as tmp:
        work = Path(tmp)
        env = clean_git_env(work / "home")
        with start_devnet(work / "devnet", ("fra", "lax"), tls_regions=("lax",)) as net:
            env = clean_git_env(work / "home", GIT_SSL_CAINFO=str(net.ca_file))
            base = net.edge.https_url.replace("://", f"://{USER}:{net.user_token(USER)}@", 1)
            log(f"generating {size_mb} MiB repo ...")
            repo = make_random_repo(work / "src", size_mb * MiB, env)
            urls = {}
            for path, (region, _) in PATHS.items():
                _create(net, f"bench/{path}", region)
                urls[path] = f"{base}/bench/{path}.git"
                log(f"pushing to {path} ({net.nodes[PATHS[path][1]].http_url}) ...")
                timed_git(["push", "--quiet", urls[path], "main:main"], env, cwd=repo.path)
            for round_no in range(rounds + 1):  # round 0: warm-up, not counted
                for path in PATHS:
                    sample = _clone(net, path, urls[path], round_no, work, env, repo.commit)
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
