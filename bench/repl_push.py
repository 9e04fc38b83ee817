"""Push latency to replicated repositories through the HTTPS edge, this tree vs a baseline.

    python -m bench.repl_push                # 15 rounds
    python -m bench.repl_push --quick        # 3 rounds
    python -m bench.repl_push --baseline-tree /work/baseline   # old and new code side by side

One run starts a devnet per tree (etcd, nodes fra-1 and lax-1, one edge in
fra) in a temp dir, and in each, as user `bench` through the edge's API:

1. creates three repos, all homed in fra: `bench/plain` (replicas 1),
   `bench/w1` (replicas 2, sync_replicas 1) and `bench/w2` (replicas 2,
   sync_replicas 2), the second replica in lax; pushes one small commit to
   each and clones each;
2. per round, for every tree and repo in turn (the runner's interleave, one
   untimed warm-up round first), commits a one-line change of one file and
   times one `git push` through the edge over HTTPS;
3. after every push, polls `GET /api/repos/bench/<repo>` until its
   generation is the push's and every replica says `in-sync` (deadline
   SYNC_DEADLINE_S), so the next push starts from a quiet state, and records
   how long that took; reads the edge's and both nodes' CPU around the push
   and the wait;
4. checks that every repo's `main` and generation count every push;
5. prints a table and writes bench/results/repl_push[_TAG].{json,md}.

Only what both trees have is used: `replicas` and `sync_replicas` on create,
`generation` and `replicas[].state` on read (not `replica_regions`; with two
regions and the home in fra, the second replica can only land in lax).
Timings vary by about +-30 % between runs here: compare the interleaved
medians and the ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import clones
from bench.clones import USER
from bench.common import log, work_dir
from bench.meters import ProcMeter
from bench.repl_push_report import PushSample, render, summarise
from bench.repos import clean_git_env, run_git, timed_git
from bench.results import new_result, run_main
from bench.runner import interleave
from bench.trees import TreeNet, running_devnets

SYNC_DEADLINE_S = 60.0
POLL_S = 0.02
SETTLE_S = 0.2  # after the wait, before reading CPU: lets the servers reap their children
PUSH_TIMEOUT_S = 120.0
REGIONS = ("fra", "lax")
NOTE = "note.txt"


@dataclass(frozen=True)
class RepoSpec:
    key: str  # plain, w1, w2
    replicas: int
    sync_replicas: int | None

    @property
    def name(self) -> str:
        return f"{USER}/{self.key}"

    @property
    def create_fields(self) -> dict[str, int]:
        fields = {"replicas": self.replicas}
        if self.sync_replicas is not None:
            fields["sync_replicas"] = self.sync_replicas
        return fields


REPOS = (RepoSpec("plain", 1, None), RepoSpec("w1", 2, 1), RepoSpec("w2", 2, 2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.repl_push", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--rounds", type=int, help="timed pushes per tree and repo (15; --quick 3)")
    p.add_argument("--quick", action="store_true", help="3 rounds (unless --rounds says)")
    clones.add_tree_options(p)
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 3 if args.quick else 15
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    clones.check_tree_options(p, args)
    return args


@dataclass
class PushSide:
    """One tree's devnet as this benchmark uses it: its API, git env, meters, checkouts."""

    net: TreeNet
    prefix: str  # "" for this tree, "baseline-" for the other
    api: httpx.Client
    env: dict[str, str]
    edge: ProcMeter
    nodes: dict[str, ProcMeter]
    placed: dict[str, Any] = field(default_factory=dict)
    checkouts: dict[str, Path] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    pushes: dict[str, int] = field(default_factory=dict)

    def url(self, spec: RepoSpec) -> str:
        # The bench user's token in the URL: git needs no prompt or helper.
        base = self.net.https_url.replace("://", f"://{USER}:{self.net.token(USER)}@", 1)
        return f"{base}/{spec.name}.git"

    def repo_info(self, spec: RepoSpec) -> dict[str, Any]:
        got = self.api.get(f"/api/repos/{spec.name}")
        if got.status_code != 200:
            raise RuntimeError(f"GET {spec.name}: HTTP {got.status_code} {got.text[:300]}")
        info: dict[str, Any] = got.json()
        return info

    def wait_in_sync(self, spec: RepoSpec) -> float:
        """Seconds until the edge shows generation `generations[spec.key]` with every
        replica in sync. The generation is checked too: until the edge's watch has seen
        the push's vote, the old generation would look in sync."""
        try:
            return clones.wait_in_sync(
                self.api,
                spec.name,
                deadline_s=SYNC_DEADLINE_S,
                poll_s=POLL_S,
                replicas=spec.replicas,
                generation=self.generations[spec.key],
            )
        except RuntimeError as exc:
            raise RuntimeError(f"{self.net.tree.label} {exc}") from None


def open_side(net: TreeNet, prefix: str, home: Path) -> PushSide:
    return PushSide(
        net=net,
        prefix=prefix,
        api=httpx.Client(
            base_url=net.https_url,
            auth=(USER, net.token(USER)),
            verify=str(net.ca_file),
            timeout=30.0,
        ),
        env=clean_git_env(home, GIT_SSL_CAINFO=str(net.ca_file)),
        edge=ProcMeter(net.edge_pid),
        nodes={n["node_id"]: ProcMeter(int(n["pid"])) for n in net.info["nodes"]},
    )


def initial_commit(path: Path, env: dict[str, str]) -> str:
    """A one-commit repo with NOTE in it: every timed push changes its one line."""
    run_git(["init", "--quiet", "--initial-branch=main", str(path)], env)
    (path / NOTE).write_text("initial\n")
    run_git(["add", NOTE], env, cwd=path)
    run_git(["commit", "--quiet", "-m", "initial"], env, cwd=path)
    return run_git(["rev-parse", "HEAD"], env, cwd=path).strip()


def set_up(side: PushSide, src: Path, work: Path) -> None:
    """Create the three repos, push `src` to each, wait for their replicas, clone each."""
    label = side.net.tree.label
    for spec in REPOS:
        side.placed[spec.key] = clones.create_repo(side.net, spec.name, **spec.create_fields)
        info = side.repo_info(spec)
        regions = sorted(r["region"] for r in info.get("replicas", []))
        if spec.replicas > 1 and regions != sorted(REGIONS):
            raise RuntimeError(f"{label} {spec.name}: replicas in {regions}, not {REGIONS}")
        if info["region"] != REGIONS[0]:
            raise RuntimeError(f"{label} {spec.name}: homed in {info['region']}, not fra")
        run_git(["push", "--quiet", side.url(spec), "main:main"], side.env, cwd=src)
        side.pushes[spec.key] = 1
        if spec.replicas > 1:
            side.generations[spec.key] = 1
            waited = side.wait_in_sync(spec)
            log(f"{label} {spec.name}: first push in sync after {waited:.2f}s")
        dest = work / f"co-{label}-{spec.key}"
        run_git(["clone", "--quiet", side.url(spec), str(dest)], side.env, timeout=PUSH_TIMEOUT_S)
        side.checkouts[spec.key] = dest


def node_cpu(side: PushSide) -> dict[str, float]:
    return {node: sum(m.cpu()) for node, m in side.nodes.items()}


def push_once(side: PushSide, spec: RepoSpec, round_no: int, warmup: bool) -> PushSample:
    """Commit a one-line change, time its push through the edge, wait for the replicas."""
    checkout = side.checkouts[spec.key]
    (checkout / NOTE).write_text(f"{side.prefix}{spec.key} round {round_no}\n")
    run_git(["commit", "--quiet", "-am", f"round {round_no}"], side.env, cwd=checkout)
    edge0, nodes0 = side.edge.cpu()[0], node_cpu(side)
    pushed = timed_git(["push", "--quiet", "origin", "HEAD:main"], side.env, cwd=checkout,
                       timeout=PUSH_TIMEOUT_S)  # fmt: skip
    side.pushes[spec.key] += 1
    wait: float | None = None
    if spec.replicas > 1:
        side.generations[spec.key] += 1
        wait = side.wait_in_sync(spec)
    time.sleep(SETTLE_S)
    nodes1 = node_cpu(side)
    return PushSample(
        round=round_no,
        path=f"{side.prefix}{spec.key}",
        tree=side.net.tree.label,
        repo=spec.key,
        warmup=warmup,
        wall_s=pushed.wall_s,
        client_cpu_s=pushed.client_cpu_s,
        sync_wait_s=wait,
        generation=side.generations.get(spec.key),
        edge_cpu_s=side.edge.cpu()[0] - edge0,
        node_cpu_s={node: nodes1[node] - nodes0[node] for node in nodes1},
        loadavg_1m=os.getloadavg()[0],
    )


def check_landed(side: PushSide) -> dict[str, dict[str, Any]]:
    """Every repo's main is its checkout's HEAD, and a replicated repo's generation
    counts every push (the first, the warm-up and the timed ones)."""
    final = {}
    for spec in REPOS:
        checkout = side.checkouts[spec.key]
        head = run_git(["rev-parse", "HEAD"], side.env, cwd=checkout).strip()
        remote = run_git(["ls-remote", "origin", "refs/heads/main"], side.env, cwd=checkout)
        info = side.repo_info(spec)
        if remote.split()[:1] != [head]:
            raise RuntimeError(f"{side.net.tree.label} {spec.name}: main is {remote}, not {head}")
        if spec.replicas > 1 and info.get("generation") != side.pushes[spec.key]:
            raise RuntimeError(
                f"{side.net.tree.label} {spec.name}: generation {info.get('generation')} "
                f"after {side.pushes[spec.key]} pushes"
            )
        final[spec.key] = {"head": head, "pushes": side.pushes[spec.key], **info}
    return final


def push_rounds(sides: list[PushSide], rounds: int) -> list[PushSample]:
    """A warm-up push of every (tree, repo), then `rounds` timed rounds, interleaved:
    plain, baseline-plain, w1, baseline-w1, w2, baseline-w2."""
    by_variant = {f"{s.prefix}{spec.key}": (s, spec) for spec in REPOS for s in sides}

    def one(variant: str, round_no: int, warmup: bool) -> PushSample:
        s = push_once(*by_variant[variant], round_no, warmup)
        wait = "" if s.sync_wait_s is None else f"  in sync after {s.sync_wait_s:.3f}s"
        cpu = "  ".join(f"{k} {v:.2f}s" for k, v in s.node_cpu_s.items())
        log(
            f"{'warm-up' if warmup else f'round {round_no}'} {variant:16s} {s.wall_s:7.3f}s"
            f"{wait}  edge CPU {s.edge_cpu_s:.3f}s  node CPU {cpu}"
        )
        return s

    return interleave(list(by_variant), rounds, one)


@contextlib.contextmanager
def closing_apis(sides: list[PushSide]) -> Iterator[None]:
    try:
        yield
    finally:
        for side in sides:
            side.api.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = clones.trees(args)
    notes = [
        "Every push is one commit changing the one line of note.txt (3 objects: git "
        "unpacks them loose, as it does any small push).",
        "Pushes go through the fra edge over HTTPS to the home (fra-1), the in-sync "
        "replica in the edge's region; the second replica of w1 and w2 is on lax-1.",
        f"sync wait: from the push's return, GET /api/repos/<repo> every {POLL_S * 1000:.0f} "
        "ms until its generation is the push's and every replica says in-sync (the edge's "
        "watch-fed view).",
        f"CPU (psutil, own + reaped children) from before the push to {SETTLE_S} s after "
        "the sync wait.",
    ]
    if args.baseline_tree:
        notes.append(
            "baseline-* variants ran the edge and nodes of --baseline-tree (its own "
            "interpreter, devnet and etcd), interleaved push by push with this tree's."
        )
    result = new_result("repl_push", args, notes, repos=[asdict(s) for s in REPOS])
    result["trees"] = {t.label: t.describe() for t in trees}
    with work_dir("gitedge-bench-", args.keep_work) as work:
        home = work / "home"
        log(f"work dir {work}; starting {len(trees)} devnet(s) ...")
        with running_devnets(trees, work, [USER]) as nets:
            sides = [
                open_side(n, f"{n.tree.label}-" if i else "", home) for i, n in enumerate(nets)
            ]
            with closing_apis(sides):
                src = work / "src"
                result["initial_commit"] = initial_commit(src, sides[0].env)
                for side in sides:
                    set_up(side, src, work)
                samples = push_rounds(sides, args.rounds)
                result["final"] = {s.net.tree.label: check_landed(s) for s in sides}
                result["placed"] = {s.net.tree.label: s.placed for s in sides}
            summarise(result, samples, [s.net.tree.label for s in sides])
            result["samples"] = [asdict(x) for x in samples]
            result["edge_log_tail"] = {n.tree.label: n.edge_log_tail(20) for n in nets}
            result["loadavg_end"] = os.getloadavg()
    return result


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, render, lambda args: clones.stem("repl_push", args))


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
