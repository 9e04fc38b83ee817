"""The edge under load: concurrent clones, idle keep-alive connections, SSH handshakes.

    python -m bench.load          # 200 concurrent clones x3, 2,000 idle conns, 500 handshakes
    python -m bench.load --quick  # 20 concurrent clones x1, 200 idle conns, 50 handshakes

One run starts a devnet (etcd, nodes fra-1 and lax-1, one edge with HTTPS and
SSH fronts; the edge restarted on `EDGE_CONFIG`; node lax-2 serving HTTPS)
in a temp dir, and:

1. generates a small repo (--repo-kb of random blobs in >= 128 files, one
   pack) and pushes it through the edge as user `bench`, and straight to
   lax-2 (the same commit);
2. bursts: --clones `git clone`s started at once, all of one path, waited
   for together; per round direct (plain HTTP to the edge's node, the node's
   credential sent as the edge sends it), direct-tls (the same, HTTPS to
   lax-2: git's client TLS without the edge), edge (HTTPS) and edge-ssh (SSH
   through the edge, OpenSSH client), interleaved, after a warm-up burst of
   a few clones each. The figure is the burst's wall time (first start to
   last exit), the ratios edge / direct and edge / direct-tls of its
   medians, and the failures;
3. idle: --idle-conns TLS connections to the edge, each having answered one
   `GET /healthz` and then left idle (keep-alive); the edge's RSS (VmRSS,
   VmHWM from /proc) and file descriptors, and the latency of a new
   connection's `GET /healthz`, a `GET /healthz` on a kept connection,
   `git ls-remote` and a small clone through the edge, before, while and
   after they are held; then every held connection must answer again;
4. handshakes: --handshakes SSH logins (key exchange + public-key auth) to
   the edge with asyncssh, --handshake-concurrency at a time: rate, failures,
   the edge's RSS and CPU;
5. prints a table (with the machine's load average beside every figure) and
   writes bench/results/load.{json,md}.

The clients run on the same machine as the servers (2 cores here): every
figure includes the clients' own CPU, which competes with the edge's. The
load average printed with each phase says how busy the machine was.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench import clones, load_probes
from bench.clones import USER, Variant
from bench.common import log, rmtree, work_dir
from bench.load_clones import TLS_NODE, bursts, direct_tls_variant, timed_clone
from bench.load_probes import HttpsTarget, SshTarget, spread, timed_calls, vm_status
from bench.load_report import render, summarise
from bench.meters import ProcMeter
from bench.openssh import git_ssh_command, keygen
from bench.repos import clean_git_env, make_random_repo, run_git
from bench.results import RESULTS_DIR, new_result, run_main
from bench.trees import Tree, TreeNet, running_devnet

REPO = "bench/small"

# ---- LIMITS: the lead sets the edge's connection and git-operation limits here. ----------
# Merged into the devnet edge's TOML config ({table: {key: value}}), which then restarts
# on it. Every limit that could refuse this benchmark's own load (all of it comes from
# 127.0.0.1, as one user) must be set explicitly high here once it exists, e.g. per-address
# connection caps, the SSH MaxStartups-like cap on unauthenticated connections, per-user /
# per-repo / per-node concurrent git operations and their queues, and rate limits.
EDGE_CONFIG: dict[str, dict[str, Any]] = {
    "limits": {
        # The idle connections are held for the whole idle phase (minutes on a busy
        # machine); the default (60 s) would close them in the middle of it.
        "keepalive_timeout": 1800.0,
        # One user from one address brings all the load: its per-user, per-address,
        # per-repo and per-node budgets (10, 10, 20, 64 at once; 600/min) would refuse
        # most of it by design. 0 turns each off; this measures the edge's cost, not
        # its refusals (tests/e2e/test_limits.py tests those).
        "git_per_user": 0,
        "git_per_address": 0,
        "git_per_repo": 0,
        "git_per_node": 0,
        "git_rate_per_user": 0,
        "git_rate_per_address": 0,
        # Loopback is in trusted_proxies, so the per-address connection caps do not
        # apply; the per-front cap (4096) is above the 2,000 idle connections.
    },
    "ssh": {
        # The handshake phase keeps up to --handshake-concurrency unauthenticated at
        # once; the default 100:30:200 would start dropping above 100.
        "max_startups": "1000:30:2000",
    },
}
# --------------------------------------------------------------------------------------------

FULL = {"clones": 200, "rounds": 3, "idle_conns": 2000, "handshakes": 500, "probes": 10}
QUICK = {"clones": 20, "rounds": 1, "idle_conns": 200, "handshakes": 50, "probes": 3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.load", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="the smoke profile: " + str(QUICK))
    p.add_argument("--clones", type=int, help=f"concurrent clones per burst ({FULL['clones']})")
    p.add_argument("--rounds", type=int, help=f"timed bursts per path ({FULL['rounds']})")
    p.add_argument("--repo-kb", type=int, default=1024, help="repo size in KiB (1024)")
    p.add_argument(
        "--ssh-clones",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also burst clones over SSH through the edge (on)",
    )
    p.add_argument(
        "--client-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the bursts' git clients under `nice -n N` (0: not), so that on one machine "
        "the servers get the CPU first, as if the clients were elsewhere",
    )
    p.add_argument("--idle-conns", type=int, help=f"idle connections held ({FULL['idle_conns']})")
    p.add_argument("--open-workers", type=int, default=32, help="opening them, at a time (32)")
    p.add_argument(
        "--probes", type=int, help=f"each latency probe, times per state ({FULL['probes']})"
    )
    p.add_argument("--handshakes", type=int, help=f"SSH handshakes ({FULL['handshakes']})")
    p.add_argument("--handshake-concurrency", type=int, default=32, help="at a time (32)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--tag", default="", help="write load_TAG.{json,md} instead")
    p.add_argument("--keep-work", action="store_true", help="keep the temp work dir (debugging)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    counts = ("clones", "rounds", "repo_kb", "probes", "open_workers", "handshake_concurrency")
    if any(getattr(args, k) < 1 for k in counts):
        p.error("--clones, --rounds, --repo-kb, --probes and the concurrencies must be >= 1")
    if not 0 <= args.client_nice <= 19:
        p.error("--client-nice: 0 to 19")
    if args.idle_conns < 0 or args.handshakes < 0:
        p.error("--idle-conns and --handshakes must be >= 0")
    if args.tag and not args.tag.replace("-", "").replace("_", "").isalnum():
        p.error("--tag: letters, digits, - and _ only")
    return args


def raise_nofile(need: int) -> dict[str, int]:
    """Raise this process's RLIMIT_NOFILE soft limit to its hard limit (the devnet's
    servers inherit it); fail early if even that cannot hold `need` descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    new_soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if new_soft != resource.RLIM_INFINITY and new_soft < need:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} < {need}: raise it (ulimit -Hn)")
    return {"soft_before": soft, "hard": hard, "soft": new_soft}


# -- idle connections --------------------------------------------------------------------------


@dataclass
class Rig:
    net: TreeNet
    edge: ProcMeter
    variants: dict[str, Variant]
    target: HttpsTarget
    ssh: SshTarget
    work: Path
    commit: str


def probe_state(rig: Rig, label: str, probes: int) -> dict[str, Any]:
    """The latency of normal requests to the edge now: medians over `probes` runs each."""
    edge, direct = rig.variants["edge"], rig.variants["direct"]

    def ls_remote(v: Variant) -> float:
        start = time.perf_counter()
        run_git(["ls-remote", v.url, "refs/heads/main"], v.env, timeout=120)
        return time.perf_counter() - start

    def small_clone(v: Variant) -> float:
        dest = Path(tempfile.mkdtemp(prefix="probe-", dir=rig.work)) / "repo"
        try:
            seconds, error = timed_clone(v, dest)
            if error:
                raise RuntimeError(error)
            return seconds
        finally:
            rmtree(dest.parent)

    out: dict[str, Any] = {"state": label}
    kept = load_probes.open_keepalive(rig.target)
    try:
        calls = {
            "healthz_new_connection": lambda: load_probes.healthz_new_connection(rig.target),
            "healthz_kept_connection": lambda: load_probes.healthz_reused(kept),
            "ls_remote": lambda: ls_remote(edge),
            "clone": lambda: small_clone(edge),
            # The same two straight from the node: what the edge adds to one request.
            "ls_remote_direct": lambda: ls_remote(direct),
            "clone_direct": lambda: small_clone(direct),
        }
        for name, call in calls.items():
            seconds, errors = timed_calls(probes, call)
            out[name] = {**spread(seconds), "errors": errors[:5], "failures": len(errors)}
    finally:
        kept.close()
    out.update(
        edge_mem=vm_status(rig.edge.pid), edge_fds=rig.edge.proc.num_fds(), loadavg=os.getloadavg()
    )
    log(
        f"probes {label}: healthz new {out['healthz_new_connection']['median_ms']:.1f} ms, kept "
        f"{out['healthz_kept_connection']['median_ms']:.1f} ms, ls-remote "
        f"{out['ls_remote']['median_ms']:.0f} ms, clone {out['clone']['median_ms']:.0f} ms; "
        f"edge RSS {out['edge_mem']['VmRSS']:.0f} MiB, {out['edge_fds']} fds, "
        f"load {out['loadavg'][0]:.1f}"
    )
    return out


def idle_phase(rig: Rig, args: argparse.Namespace) -> dict[str, Any]:
    """Latencies before, while and after `--idle-conns` keep-alive connections are held."""
    pid = rig.edge.pid
    before = probe_state(rig, "no idle connections", args.probes)
    reset = load_probes.reset_peak(pid)
    log(f"opening {args.idle_conns} keep-alive connections, {args.open_workers} at a time ...")
    with load_probes.idle_connections(rig.target, args.idle_conns, args.open_workers) as held:
        mem_held = vm_status(pid)
        fds_held = rig.edge.proc.num_fds()
        log(
            f"held {len(held.conns)} of {args.idle_conns} in {held.open_s:.1f}s "
            f"({len(held.errors)} failed); edge RSS {mem_held['VmRSS']:.0f} MiB, {fds_held} fds"
        )
        during = probe_state(rig, f"{len(held.conns)} idle connections held", args.probes)
        still_open, check_errors = held.check(args.open_workers)
        log(f"{still_open} of {len(held.conns)} held connections answered again")
        peak = vm_status(pid)["VmHWM"] if reset else None
        opened = {
            "asked": args.idle_conns,
            "held": len(held.conns),
            "open_failures": len(held.errors),
            "open_errors": sorted(set(held.errors))[:10],
            "open_s": held.open_s,
            "opened_per_s": len(held.conns) / held.open_s if held.open_s else None,
            "answered_again": still_open,
            "check_errors": sorted(set(check_errors))[:10],
        }
    after = probe_state(rig, "after they closed", args.probes)
    return {
        **opened,
        "edge_mem_held": mem_held,
        "edge_fds_held": fds_held,
        "edge_vmhwm_mb": peak,
        "edge_rss_per_conn_kb": (
            1024 * (mem_held["VmRSS"] - before["edge_mem"]["VmRSS"]) / len(held.conns)
            if held.conns
            else None
        ),
        "states": [before, during, after],
    }


# -- the run -----------------------------------------------------------------------------------


def build_rig(net: TreeNet, work: Path, commit: str, client_key: Path) -> Rig:
    edge = ProcMeter(net.edge_pid)
    placed = clones.create_repo(net, REPO)
    node = net.node(str(placed["node"]))
    node_meter = ProcMeter(node.pid)
    home = work / "home"
    credential = f"authorization: Bearer {net.admin_secret}"
    direct_env = clean_git_env(
        home,
        GIT_CONFIG_COUNT="1",
        GIT_CONFIG_KEY_0="http.extraHeader",
        GIT_CONFIG_VALUE_0=credential,
    )
    # Debian's git (libcurl-gnutls) parses every certificate in /etc/ssl/certs on each
    # HTTPS connection, GIT_SSL_CAINFO or not: ~55 ms of client CPU per clone, measured
    # in bench/results/lsremote_latency.md. An empty CA path leaves the handshake and the
    # encryption and takes out only that, which is no server's cost.
    ca_path = work / "empty-ca-path"
    ca_path.mkdir(exist_ok=True)
    edge_env = clean_git_env(home, GIT_SSL_CAINFO=str(net.ca_file), GIT_SSL_CAPATH=str(ca_path))
    ssh_env = clean_git_env(home, GIT_SSH_COMMAND=git_ssh_command(client_key, net.known_hosts))
    edge_base = net.https_url.replace("://", f"://{USER}:{net.token(USER)}@", 1)
    variants = {
        "direct": Variant("direct", f"{node.http_url}/{REPO}.git", direct_env, edge, node_meter),
        "direct-tls": direct_tls_variant(net, REPO, home, edge, ca_path),
        "edge": Variant("edge", f"{edge_base}/{REPO}.git", edge_env, edge, node_meter),
    }
    if net.ssh_url:
        variants["edge-ssh"] = Variant(
            "edge-ssh", f"{net.ssh_url}/{REPO}.git", ssh_env, edge, node_meter
        )
    host, _, port = (net.ssh_address or ":0").rpartition(":")
    ssh = SshTarget(host, int(port), client_key, net.known_hosts)
    return Rig(net, edge, variants, HttpsTarget.of(net.https_url, net.ca_file), ssh, work, commit)


PROBLEM = re.compile(r" (WARNING|ERROR|CRITICAL) | [45]\d\d \d+\.\d+s | status=[1-9]")


def log_problems(path: Path, limit: int = 40) -> dict[str, Any]:
    """The edge's log lines that say why something failed (the client sees only a
    generic sentence): warnings, errors, 4xx/5xx and non-zero SSH exits, but not the
    401s every git client provokes before it sends its credentials."""
    lines = [
        line
        for line in path.read_text(errors="replace").splitlines()
        if PROBLEM.search(line) and " 401 " not in line
    ]
    return {"count": len(lines), "first": lines[:limit]}


def add_client_key(net: TreeNet, client_pub: Path) -> None:
    with httpx.Client(
        base_url=net.https_url, verify=str(net.ca_file), auth=(USER, net.token(USER)), timeout=30
    ) as api:
        added = api.post(
            "/api/user/keys", json={"title": "bench-load", "key": client_pub.read_text()}
        )
        if added.status_code != 201:
            raise RuntimeError(f"add key: HTTP {added.status_code} {added.text[:300]}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    nofile = raise_nofile(args.idle_conns + 4 * args.clones + 256)
    notes = [
        "Clients and servers share this machine: the clients' CPU (git, curl, OpenSSH, "
        "the bench's own TLS and asyncssh) competes with the edge's.",
        "Burst wall time: the first clone started to the last one ended; a burst's clones "
        "are one path's only, and the paths take turns round by round.",
        "Direct clones send the node's credential (`authorization: Bearer`, as the edge does).",
        "HTTPS clients (edge, direct-tls) run with an empty GIT_SSL_CAPATH: Debian's git "
        "otherwise parses all of /etc/ssl/certs per connection (~55 ms CPU, "
        "bench/results/lsremote_latency.md), a client cost no server can change.",
        "Two references: direct = plain HTTP straight from fra-1, the node behind the edge "
        "(git's client does no TLS: edge / direct includes the clients' TLS CPU); "
        f"direct-tls = HTTPS straight from {TLS_NODE[0]}, a node serving TLS itself "
        "(self-signed, git with http.sslVerify=false), holding the same commit (repo created "
        "on that node and pushed to it directly): the clients do the same TLS work as "
        "through the edge, so edge / direct-tls is what the edge itself adds.",
        "Edge config merged for this run (bench/load.py EDGE_CONFIG): " + repr(EDGE_CONFIG),
    ]
    result = new_result("load", args, notes, rlimit_nofile=nofile)
    result["trees"] = {"this": Tree.this().describe()}
    with work_dir("gitedge-bench-load-", args.keep_work) as work:
        client_key = keygen(work / "client_ed25519", "gitedge-bench-load")
        log(f"work dir {work}; starting the devnet ...")
        devnet = running_devnet(Tree.this(), work / "this", [USER], EDGE_CONFIG, [TLS_NODE])
        with devnet as net:
            edge_proc = psutil.Process(net.edge_pid)
            result["edge_rlimit_nofile"] = list(edge_proc.rlimit(psutil.RLIMIT_NOFILE))
            add_client_key(net, client_key.with_name(client_key.name + ".pub"))
            env = clean_git_env(work / "home")
            repo = make_random_repo(work / "src", args.repo_kb * 1024, env)
            result["repo"] = {
                "name": REPO,
                "bytes": repo.total_bytes,
                "files": repo.files,
                "commit": repo.commit,
            }
            rig = build_rig(net, work, repo.commit, client_key)
            if not args.ssh_clones:
                rig.variants.pop("edge-ssh", None)
            clones.push_through(rig.variants["edge"].url, repo, rig.variants["edge"].env, rig.edge)
            tls = rig.variants["direct-tls"]
            run_git(["push", "--quiet", tls.url, "main:main"], tls.env, cwd=repo.path, timeout=600)
            rmtree(repo.path)
            log(
                f"edge pid {rig.edge.pid} (RLIMIT_NOFILE {result['edge_rlimit_nofile']}); "
                "repo pushed"
            )
            result["edge_mem_start"] = vm_status(rig.edge.pid)
            samples = bursts(rig.variants, args, work, repo.commit, rig.target)
            result["burst_samples"] = [asdict(s) for s in samples]
            if args.idle_conns:
                result["idle"] = idle_phase(rig, args)
            if args.handshakes:
                log(f"{args.handshakes} SSH handshakes, {args.handshake_concurrency} at a time ...")
                hs = load_probes.ssh_handshakes(
                    rig.ssh, args.handshakes, args.handshake_concurrency, rig.edge
                )
                hs["loadavg"] = os.getloadavg()
                log(
                    f"handshakes: {hs['per_s']:.1f}/s, {hs['failures']} failed, edge RSS "
                    f"peak {hs['edge_rss_peak_sampled_mb']:.0f} MiB"
                )
                result["handshakes"] = hs
            result["edge_mem_end"] = vm_status(rig.edge.pid)
            result["edge_log_tail"] = net.edge_log_tail(20)
            result["edge_log_problems"] = log_problems(net.edge_log)
            result["loadavg_end"] = os.getloadavg()
    summarise(result, samples)
    return result


def _stem(args: argparse.Namespace) -> str:
    return f"load_{args.tag}" if args.tag else "load"


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, render, _stem)


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
