"""Clone over SSH through the edge vs straight from OpenSSH sshd; ls-remote latency.

    python -m bench.ssh_clone               # 100 MiB clones x5 each, 20 ls-remotes each
    python -m bench.ssh_clone --quick       # 20 MiB, 3 rounds, 5 ls-remotes each
    python -m bench.ssh_clone --profile 5   # then py-spy the edge during 5 more edge clones
    python -m bench.ssh_clone --baseline-tree /work/baseline   # old and new edge side by side

One run starts a devnet (etcd, nodes fra-1 and lax-1, one edge with HTTPS and
SSH fronts) in a temp dir, and:

1. generates a repo of --size-mb MiB of random (incompressible) blobs in
   >= 128 files, so every pack has >= 100 objects and git keeps it as a pack
   instead of exploding it loose (`transfer.unpackLimit`, default 100, left
   as is); user `bench` creates `bench/big`, registers the bench client key
   (`POST /api/user/keys`) and pushes the repo over SSH through the edge;
2. starts Debian's OpenSSH `sshd` on a free loopback port (own host key,
   the bench key in a temp authorized_keys, login as the current user with
   `ForceCommand git-shell -c "$SSH_ORIGINAL_COMMAND"`, HOME set to an empty
   dir so the login shell reads no rc file) serving the same bare repo
   directory on the node's volume;
3. clones --rounds times through the edge (client -SSH-> edge -> node) and
   as often straight from that sshd, interleaved (direct, edge, ...) after
   one untimed warm-up clone of each, each into a fresh dir, reading the
   edge's, node's and sshd's CPU around every clone (psutil);
4. times --ls-remotes `git ls-remote` runs each way, interleaved, after one
   warm-up each (so the edge's connection to the node is warm);
5. reads the edge's counters (`GET /_gitedge/stats`) before and after the
   timed runs: its node connection counters must not move (no new
   edge->node connection or handshake);
6. prints a table and writes bench/results/ssh_clone.{json,md}.

With --baseline-tree DIR, a second devnet runs DIR's code (its own .venv),
gets the same repo pushed through its edge, and a `baseline-edge` variant
joins every clone round and ls-remote round, against the same OpenSSH sshd;
the table gains a side-by-side section (this tree / baseline). Timings vary
by about +-30 % between runs here: compare the interleaved medians and the
ratio within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench import clones
from bench.clones import BASELINE, USER, CloneSample, Variant
from bench.common import MiB, log, median, rmtree, work_dir
from bench.meters import ProcMeter
from bench.openssh import (
    DirectSshd,
    ensure_sshd,
    git_ssh_command,
    keygen,
    login_user,
    running_sshd,
)
from bench.profiling import profile_process
from bench.repos import RandomRepo, clean_git_env, pack_stats
from bench.results import new_result, run_main
from bench.runner import interleave
from bench.ssh_probes import (
    check_ls_remote,
    edge_session_seconds,
    ls_remote_once,
    negotiated,
    protocol_check,
)
from bench.ssh_report import LsRemoteSample, render, summarise
from bench.trees import NodeView, TreeNet, running_devnets

REPO = "bench/big"

SSH_NOTES = (
    "Direct: Debian OpenSSH sshd, login as the current user, ForceCommand "
    'git-shell -c "$SSH_ORIGINAL_COMMAND", SetEnv HOME=<empty dir> '
    "GIT_CONFIG_NOSYSTEM=1 LC_ALL=C (the login shell, bash, would otherwise "
    "source ~/.bashrc because sshd started it), PermitUserRC no.",
    "Both paths: OpenSSH client with -F /dev/null, the same ed25519 key, "
    "StrictHostKeyChecking=yes against one known_hosts file, HOME a temp dir, "
    "GIT_CONFIG_NOSYSTEM=1; git's default protocol (v2).",
    "CPU from psutil cpu_times (user+system), read before and 0.2 s after each "
    "clone; sshd = the listener's own CPU plus its reaped session processes (sshd "
    "session, git-shell, git upload-pack); node = own plus reaped git children.",
    "ls-remote timing is the wall time of `git ls-remote URL refs/heads/main`, "
    "each a new client SSH connection (handshake included) on both paths.",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ssh_clone", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--ls-remotes", type=int, default=20, help="timed ls-remotes per path (20)")
    p.add_argument(
        "--push-via",
        choices=("ssh", "https"),
        default="ssh",
        help="how the repo is pushed through the edge (ssh)",
    )
    ls_help = "after the timed runs, run N more edge ls-remotes under `py-spy record`"
    p.add_argument("--profile-ls-remote", type=int, default=0, metavar="N", help=ls_help)
    p.add_argument("--profile-idle", action="store_true", help="py-spy without --gil")
    p.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra `ssh -o` for the client on both paths (e.g. Ciphers=aes128-gcm@openssh.com)",
    )
    args = clones.parse_clone_args(p, argv, {"size_mb": 20, "rounds": 3, "ls_remotes": 5})
    if args.ls_remotes < 1:
        p.error("--ls-remotes must be >= 1")
    if any("=" not in o for o in args.ssh_option):
        p.error("--ssh-option takes NAME=VALUE")
    return args


# -- one tree's edge ------------------------------------------------------------------


@dataclass
class SshSide:
    """One tree's devnet as this benchmark uses it."""

    net: TreeNet
    name: str  # the variant: "edge" or "baseline-edge"
    placed: dict[str, Any]
    node: NodeView
    edge: ProcMeter
    node_meter: ProcMeter
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        if self.net.ssh_url is None:
            raise RuntimeError(f"the {self.net.tree.label} devnet's edge has no SSH front")
        return f"{self.net.ssh_url}/{REPO}.git"

    @property
    def bare(self) -> Path:
        return (self.node.volume_dir / f"{REPO}.git").resolve()

    def snapshot(self, label: str) -> None:
        """`GET /_gitedge/stats` (loopback is a trusted proxy in the devnet)."""
        url = f"{self.net.https_url}/_gitedge/stats"
        response = httpx.get(url, verify=str(self.net.ca_file), timeout=10)
        response.raise_for_status()
        self.stats[label] = response.json()


def open_side(net: TreeNet, name: str, client_pub: Path) -> SshSide:
    """User `bench` with the client key, and `bench/big` in fra."""
    with httpx.Client(
        base_url=net.https_url,
        verify=str(net.ca_file),
        auth=(USER, net.token(USER)),
        timeout=30,
    ) as api:
        key = {"title": "bench-client", "key": client_pub.read_text()}
        added = api.post("/api/user/keys", json=key)
        if added.status_code != 201:
            raise RuntimeError(f"add key: HTTP {added.status_code} {added.text[:300]}")
    placed = clones.create_repo(net, REPO)
    node = net.node(str(placed["node"]))
    return SshSide(net, name, placed, node, ProcMeter(net.edge_pid), ProcMeter(node.pid))


# -- the run -------------------------------------------------------------------------


@dataclass
class Rig:
    """What one run drives: each tree's side, the variants, the client's key and env."""

    args: argparse.Namespace
    work: Path
    sides: list[SshSide]
    variants: dict[str, Variant]
    client_key: Path
    known_hosts: Path

    def env(self, *ssh_options: str) -> dict[str, str]:
        """The client env of every variant, with `ssh_options` added to --ssh-option's."""
        options = [x for o in self.args.ssh_option for x in ("-o", o)]
        command = git_ssh_command(self.client_key, self.known_hosts, *options, *ssh_options)
        return clean_git_env(self.work / "home", GIT_SSH_COMMAND=command)

    def snapshot(self, label: str) -> None:
        for s in self.sides:
            s.snapshot(label)


def build_rig(
    args: argparse.Namespace, work: Path, nets: list[TreeNet], sshd: DirectSshd, client_key: Path
) -> Rig:
    client_pub = client_key.with_name(client_key.name + ".pub")
    sides = [
        open_side(net, f"{net.tree.label}-edge" if i else "edge", client_pub)
        for i, net in enumerate(nets)
    ]
    known_hosts = work / "known_hosts"
    pins = "".join(net.known_hosts.read_text() for net in nets) + sshd.known_hosts_line()
    known_hosts.write_text(pins + "\n")
    rig = Rig(args, work, sides, {}, client_key, known_hosts)
    env, own = rig.env(), sides[0]
    url = f"ssh://{login_user()}@127.0.0.1:{sshd.port}{own.bare}"
    others = {"sshd": ProcMeter(sshd.pid)}
    rig.variants["direct"] = Variant("direct", url, env, own.edge, own.node_meter, others)
    for s in sides:
        rig.variants[s.name] = Variant(s.name, s.url, env, s.edge, s.node_meter)
    for v in rig.variants.values():
        log(f"{v.name}: {v.url} (edge pid {v.edge.pid}, node pid {v.node.pid})")
    log(f"sshd pid {sshd.pid}")
    return rig


def push_everywhere(rig: Rig, repo: RandomRepo) -> list[dict[str, Any]]:
    """The generated repo through each tree's edge, over --push-via."""
    pushes = []
    for s in rig.sides:
        push_url, push_env = s.url, rig.env()
        if rig.args.push_via == "https":
            token = s.net.token(USER)
            push_url = s.net.https_url.replace("://", f"://{USER}:{token}@", 1) + f"/{REPO}.git"
            push_env["GIT_SSL_CAINFO"] = str(s.net.ca_file)
        log(f"pushing it through the {s.net.tree.label} tree's edge over {rig.args.push_via} ...")
        pushed = clones.push_through(push_url, repo, push_env, s.edge)
        after = {"node_repo_pack": pack_stats(s.bare), "edge_rss_mb_after": s.edge.rss() / MiB}
        pushes.append({"via": rig.args.push_via, **pushed, **after})
        s.snapshot("after_push")
    return pushes


def timed_runs(rig: Rig, commit: str) -> tuple[list[CloneSample], list[LsRemoteSample]]:
    """Clone rounds, then ls-remote rounds, every variant interleaved; counters around them."""
    names, env, args = list(rig.variants), rig.env(), rig.args
    ls: list[LsRemoteSample] = []

    def one_ls(name: str, index: int, warmup: bool) -> LsRemoteSample:
        return ls_remote_once(rig.variants[name], index, warmup, env)

    def after_warmup() -> None:
        ls.extend(interleave(names, 0, one_ls))  # one warm-up ls-remote each
        rig.snapshot("before_timed")

    samples = clones.clone_rounds(
        rig.variants, args.rounds, rig.work, commit, args.no_checkout, after_warmup
    )
    rig.snapshot("after_clones")
    ls += interleave(names, args.ls_remotes, one_ls, warmup=False)
    rig.snapshot("after_timed")
    return samples, ls


def same_kex_runs(rig: Rig, kex: str) -> list[LsRemoteSample]:
    """ls-remote rounds again, the client forcing the edge's key exchange on every path.

    The default series compares each server's own defaults; this one separates
    the key exchange's cost from the edge's.
    """
    log(f"ls-remote again with KexAlgorithms={kex} on every path ...")
    env = rig.env("-o", f"KexAlgorithms={kex}")

    def one_ls(name: str, index: int, warmup: bool) -> LsRemoteSample:
        return ls_remote_once(rig.variants[name], index, warmup, env, "same-kex")

    ls = interleave(list(rig.variants), rig.args.ls_remotes, one_ls)
    rig.snapshot("end")
    return ls


def log_ls_medians(ls: list[LsRemoteSample]) -> None:
    for series in ("default", "same-kex"):
        for name in dict.fromkeys(x.path for x in ls):
            picked = [x for x in ls if x.path == name and x.series == series and not x.warmup]
            if picked:
                ms = median([1000 * x.wall_s for x in picked])
                log(f"ls-remote {series} {name:15s} median {ms:.1f} ms")


def profiles(rig: Rig, commit: str) -> list[dict[str, Any]]:
    """py-spy on this tree's edge (or node, --profile-process) during --profile clones and
    --profile-ls-remote ls-remotes."""
    args, edge, out = rig.args, rig.variants["edge"], []
    target = args.profile_process
    meter, suffix = clones.profiled(edge, args)
    suffix += ("_native" if args.profile_native else "") + ("_idle" if args.profile_idle else "")

    def clone(i: int) -> float:
        return clones.clone_once(edge, i, False, rig.work, commit, args.no_checkout).wall_s

    def ls_remote(i: int) -> float:
        return ls_remote_once(edge, i, False, rig.env()).wall_s

    for what, runs, one in (
        ("clone", args.profile, clone),
        ("ls-remote", args.profile_ls_remote, ls_remote),
    ):
        if not runs:
            continue
        log(f"profiling the {target} during {runs} edge {what}s ...")
        out.append(
            profile_process(
                meter,
                rig.work / f"{target}-profile-{what}.txt",
                args.results_dir / f"{_stem(args)}_profile_{what}{suffix}.txt",
                what,
                runs,
                one,
                gil_only=not args.profile_idle,
                native=args.profile_native,
                log=log,
                process=target,
            )
        )
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    ensure_sshd(log)
    trees = clones.trees(args)
    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    notes = clones.notes(args, *SSH_NOTES)
    result = new_result("ssh_clone", args, notes, openssh=openssh.stderr.strip().split(",")[0])
    result["trees"] = {t.label: t.describe() for t in trees}
    with work_dir("gitedge-bench-ssh-", args.keep_work) as work:
        client_key = keygen(work / "client_ed25519", "gitedge-bench")
        client_pub = client_key.with_name(client_key.name + ".pub")
        log(f"work dir {work}; starting {len(trees)} devnet(s) and sshd ...")
        with (
            running_devnets(trees, work, [USER]) as nets,
            running_sshd(work, client_pub) as sshd,
        ):
            rig = build_rig(args, work, nets, sshd, client_key)
            own, variants, env = rig.sides[0], list(rig.variants.values()), rig.env()
            result["urls"] = {v.name: v.url for v in variants}
            rig.snapshot("start")
            result["edge_rss_mb_at_start"] = own.edge.rss() / MiB
            repo, result["repo"] = clones.generate_repo(
                work / "src", args.size_mb, env, REPO, placed=own.placed, bare_dir=str(own.bare)
            )
            pushes = push_everywhere(rig, repo)
            rmtree(repo.path)
            check_ls_remote(variants, env, repo.commit)
            result["protocol_v2"] = protocol_check(variants, env)
            result["negotiated"] = negotiated(variants, env)
            log(f"negotiated: {result['negotiated']}")
            samples, ls = timed_runs(rig, repo.commit)
            kex = result["negotiated"]["edge"].get("kex")
            if kex and kex != result["negotiated"]["direct"].get("kex"):
                ls += same_kex_runs(rig, kex)
            log_ls_medians(ls)
            sessions = [
                edge_session_seconds(s.net.edge_log, USER, args.ls_remotes) for s in rig.sides
            ]
            result.update(
                push=pushes[0], edge_ls_remote_session_s=sessions[0], edge_stats=own.stats
            )
            if len(rig.sides) > 1:
                base = rig.sides[1]
                result[BASELINE] = {
                    "placed": base.placed,
                    "push": pushes[1],
                    "edge_ls_remote_session_s": sessions[1],
                    "edge_stats": base.stats,
                }
            summarise(result, samples, ls)
            result["clone_samples"] = [asdict(c) for c in samples]
            result["ls_remote_samples"] = [asdict(x) for x in ls]
            if found := profiles(rig, repo.commit):
                result["profiles"] = found
            result["edge_log_tail"] = nets[0].edge_log_tail(20)
            if len(nets) > 1:
                result[BASELINE]["edge_log_tail"] = nets[1].edge_log_tail(20)
            result["sshd_log_tail"] = sshd.log_tail(10)
            result["loadavg_end"] = os.getloadavg()
    return result


def _stem(args: argparse.Namespace) -> str:
    return clones.stem("ssh_clone", args)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, render, _stem)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
