"""Clone over SSH through the edge vs straight from OpenSSH sshd; ls-remote latency.

    python -m bench.ssh_clone               # 100 MiB clones x5 each, 20 ls-remotes each
    python -m bench.ssh_clone --quick       # 20 MiB, 3 rounds, 5 ls-remotes each
    python -m bench.ssh_clone --profile 5   # then py-spy the edge during 5 more edge clones

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
3. clones --rounds times through the edge (client -SSH-> edge -pooled HTTP->
   node) and as often straight from that sshd, interleaved (direct, edge,
   ...) after one untimed warm-up clone of each, each into a fresh dir,
   reading the edge's, node's and sshd's CPU around every clone (psutil);
4. times --ls-remotes `git ls-remote` runs each way, interleaved, after one
   warm-up each (so the edge's connection to the node is warm);
5. reads the edge's counters (`GET /_gitedge/stats`) before and after the
   timed runs: `ssh_pool_connects` must not move (no new edge->node handshake);
6. prints a table and writes bench/results/ssh_clone.{json,md}.

Timings vary by about +-30 % between runs here: compare the interleaved
medians and the ratio within one run, not across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.common import (
    MIN_FILES,
    MiB,
    ProcMeter,
    RandomRepo,
    RssSampler,
    clean_git_env,
    ensure_debian_package,
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
from devnet.procs import free_port

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SSHD = Path("/usr/sbin/sshd")
GIT_SHELL = Path("/usr/bin/git-shell")
TARGET_RATIO = 1.0
TARGET_ADDED_LS_REMOTE_MS = 5.0
# For scale (issue 3, measured on this kind of machine, not in this run).
JUMP_HOST_CLONE_RATIO = 1.28
JUMP_HOST_LS_REMOTE_RATIO = 2.1
DIRECT_LS_REMOTE_MS_ANCHOR = 214.0
SETTLE_S = 0.2  # after a clone, before reading CPU: lets servers reap their children
REPO = "bench/big"
USER = "bench"


@dataclass
class CloneSample:
    round: int
    path: str  # "direct" (OpenSSH sshd) or "edge"
    warmup: bool
    wall_s: float
    client_cpu_s: float
    edge_cpu_s: float
    node_cpu_s: float
    node_children_cpu_s: float
    sshd_cpu_s: float
    """The sshd master's own CPU plus its reaped children (session sshd, git-shell, git)."""
    edge_rss_before_mb: float
    edge_peak_rss_mb: float
    pack_bytes: int
    packs: int
    loose_objects: int
    loadavg_1m: float = 0.0
    """The machine's 1-minute load average when the clone ended (others share it)."""
    edge_voluntary_ctx: int = 0
    node_voluntary_ctx: int = 0
    """Voluntary context switches during the clone (times the process blocked in
    epoll with nothing to do): a proxy for how many pieces the data moved in."""


@dataclass
class LsRemoteSample:
    index: int
    path: str
    warmup: bool
    wall_s: float
    client_cpu_s: float
    edge_cpu_s: float
    """Read right after git exits (no settle): the edge may still be closing the session."""
    series: str = "default"
    """"default" (each side's own SSH defaults) or "same-kex" (the client forces the
    edge's key exchange on both paths)."""


@dataclass
class Servers:
    net: Devnet
    edge: ProcMeter
    node: ProcMeter
    sshd: ProcMeter
    node_id: str
    urls: dict[str, str]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ssh_clone", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--size-mb", type=int, default=100, help="clone repo size in MiB (100)")
    p.add_argument("--rounds", type=int, default=5, help="timed clones per path (5)")
    p.add_argument("--ls-remotes", type=int, default=20, help="timed ls-remotes per path (20)")
    p.add_argument("--quick", action="store_true", help="--size-mb 20 --rounds 3 --ls-remotes 5")
    p.add_argument(
        "--no-checkout",
        action="store_true",
        help="clone with --no-checkout (transport and index-pack only, no working tree)",
    )
    p.add_argument(
        "--push-via",
        choices=("ssh", "https"),
        default="ssh",
        help="how the repo is pushed through the edge (ssh)",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after the timed runs, run N more edge clones under `py-spy record --gil`",
    )
    p.add_argument(
        "--profile-ls-remote",
        type=int,
        default=0,
        metavar="N",
        help="after the timed runs, run N more edge ls-remotes under `py-spy record`",
    )
    p.add_argument("--profile-native", action="store_true", help="py-spy --native")
    p.add_argument("--profile-idle", action="store_true", help="py-spy without --gil")
    p.add_argument(
        "--ssh-option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an extra `ssh -o` for the client on both paths (e.g. Ciphers=aes128-gcm@openssh.com)",
    )
    p.add_argument("--tag", default="", help="write ssh_clone_TAG.{json,md} (and profiles) instead")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--keep-work", action="store_true", help="keep the temp work dir (debugging)")
    args = p.parse_args(argv)
    if args.quick:
        args.size_mb, args.rounds, args.ls_remotes = 20, 3, 5
    if args.rounds < 1 or args.size_mb < 1 or args.ls_remotes < 1:
        p.error("--rounds, --size-mb and --ls-remotes must be >= 1")
    if args.tag and not args.tag.replace("-", "").replace("_", "").isalnum():
        p.error("--tag: letters, digits, - and _ only")
    if any("=" not in o for o in args.ssh_option):
        p.error("--ssh-option takes NAME=VALUE")
    return args


# -- OpenSSH: the client key and the direct sshd ---------------------------------------


def keygen(path: Path, comment: str) -> Path:
    """A new passphrase-less ed25519 key at `path` (and `path.pub`)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def ensure_sshd(log: Callable[[str], None]) -> None:
    ensure_debian_package(SSHD, "openssh-server", log)


@dataclass
class DirectSshd:
    """OpenSSH sshd on a free loopback port, serving git only, in its own temp dir."""

    dir: Path
    port: int
    host_key_line: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_line}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the listener and any session sshd still running; always reaps."""
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for child in children:  # the listener's SIGTERM does not end open sessions
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(children, timeout=5)


def sshd_config(d: Path, port: int, authorized_keys: Path, home: Path) -> str:
    # ForceCommand runs through the login user's shell (`$SHELL -c ...`). Debian's
    # bash sources ~/.bashrc when started by sshd (SSH_SOURCE_BASHRC), and root's
    # may run `pyenv init` etc. SetEnv overrides HOME after sshd sets it, so the
    # shell finds no rc file and git no ~/.gitconfig, like the node's empty HOME.
    force = f'{GIT_SHELL} -c "$SSH_ORIGINAL_COMMAND"'
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {d / 'ssh_host_ed25519_key'}",
            f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            "StrictModes no",  # temp dirs are world-writable up the tree
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AcceptEnv GIT_PROTOCOL",
            "PermitUserEnvironment no",
            "PermitUserRC no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "PermitTTY no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "MaxStartups 100",
            "LogLevel INFO",
            f"SetEnv HOME={home} GIT_CONFIG_NOSYSTEM=1 LC_ALL=C",
            f"ForceCommand {force}",
            "",
        ]
    )


def start_sshd(work: Path, client_pub: Path) -> DirectSshd:
    d = work / "sshd"
    home = d / "home"  # empty: no .bashrc, no .gitconfig
    home.mkdir(parents=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
    host_key = keygen(d / "ssh_host_ed25519_key", "bench-sshd")
    authorized_keys = d / "authorized_keys"
    shutil.copyfile(client_pub, authorized_keys)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(sshd_config(d, port, authorized_keys, home))
    test = subprocess.run(
        [str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if test.returncode != 0:
        raise RuntimeError(f"sshd -t rejected {config}: {test.stderr.strip()}")
    log_path = d / "sshd.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    host_line = " ".join(host_key.with_name(host_key.name + ".pub").read_text().split()[:2])
    server = DirectSshd(d, port, host_line, popen, log_path)
    try:
        deadline = time.monotonic() + 10
        while not _ssh_banner(port):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {server.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    return server


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def git_ssh_command(key: Path, known_hosts: Path, *extra: str) -> str:
    # -F /dev/null: no system ssh_config (Debian's sends LANG/LC_* and tries
    # GSSAPI), the same client settings on both paths. git adds -p PORT and
    # -o SendEnv=GIT_PROTOCOL itself (its "ssh" variant).
    return shlex.join(
        [
            "ssh",
            "-F", "/dev/null",
            "-i", str(key),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}",
            *extra,
        ]
    )  # fmt: skip


# -- the edge's API ------------------------------------------------------------------


def _tls(net: Devnet) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(net.ca_file))


def setup_user_and_repo(net: Devnet, client_pub: Path) -> tuple[str, dict[str, Any]]:
    """User `bench` with the client key, and `bench/big` in fra; returns (token, placement)."""
    token = net.user_token(USER)
    with httpx.Client(
        base_url=net.edge.https_url, verify=_tls(net), auth=(USER, token), timeout=30
    ) as api:
        added = api.post(
            "/api/user/keys", json={"title": "bench-client", "key": client_pub.read_text()}
        )
        if added.status_code != 201:
            raise RuntimeError(f"add key: HTTP {added.status_code} {added.text[:300]}")
        created = api.post("/api/repos", json={"name": REPO}, headers={"Fly-Region": "fra"})
        if created.status_code != 201:
            raise RuntimeError(f"create {REPO}: HTTP {created.status_code} {created.text[:300]}")
        info: dict[str, Any] = created.json()
    return token, info


def edge_stats(net: Devnet) -> dict[str, Any]:
    """`GET /_gitedge/stats` (loopback is a trusted proxy in the devnet)."""
    response = httpx.get(f"{net.edge.https_url}/_gitedge/stats", verify=_tls(net), timeout=10)
    response.raise_for_status()
    stats: dict[str, Any] = response.json()
    return stats


def stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        k: after[k] - before[k]
        for k in after
        if isinstance(after[k], int | float)
        and not isinstance(after[k], bool)
        and isinstance(before.get(k), int | float)
    }


# -- the measurements ----------------------------------------------------------------


def clone_once(
    srv: Servers,
    path: str,
    round_no: int,
    warmup: bool,
    work: Path,
    env: dict[str, str],
    expected_commit: str,
    no_checkout: bool,
) -> CloneSample:
    dest = Path(tempfile.mkdtemp(prefix=f"clone-{path}-", dir=work)) / "repo"
    try:
        edge_before, _ = srv.edge.cpu()
        node_before, node_ch_before = srv.node.cpu()
        sshd_before = sum(srv.sshd.cpu())
        rss_before = srv.edge.rss()
        edge_ctx, node_ctx = srv.edge.proc.num_ctx_switches(), srv.node.proc.num_ctx_switches()
        args = ["clone", "--quiet", *(["--no-checkout"] if no_checkout else [])]
        with RssSampler(srv.edge) as rss:
            timed = timed_git([*args, srv.urls[path], str(dest)], env, timeout=900)
            time.sleep(SETTLE_S)
        edge_after, _ = srv.edge.cpu()
        node_after, node_ch_after = srv.node.cpu()
        sshd_after = sum(srv.sshd.cpu())
        edge_ctx2 = srv.edge.proc.num_ctx_switches()
        node_ctx2 = srv.node.proc.num_ctx_switches()
        head = run_git(["-C", str(dest), "rev-parse", "HEAD"], env).strip()
        if head != expected_commit:
            raise RuntimeError(f"{path} clone has HEAD {head}, expected {expected_commit}")
        stats = pack_stats(dest / ".git")
        return CloneSample(
            round=round_no,
            path=path,
            warmup=warmup,
            wall_s=timed.wall_s,
            client_cpu_s=timed.client_cpu_s,
            edge_cpu_s=edge_after - edge_before,
            node_cpu_s=node_after - node_before,
            node_children_cpu_s=node_ch_after - node_ch_before,
            sshd_cpu_s=sshd_after - sshd_before,
            edge_rss_before_mb=rss_before / MiB,
            edge_peak_rss_mb=rss.peak / MiB,
            **stats,
            loadavg_1m=os.getloadavg()[0],
            edge_voluntary_ctx=edge_ctx2.voluntary - edge_ctx.voluntary,
            node_voluntary_ctx=node_ctx2.voluntary - node_ctx.voluntary,
        )
    finally:
        rmtree(dest.parent)


def ls_remote_once(
    srv: Servers, path: str, index: int, warmup: bool, env: dict[str, str]
) -> LsRemoteSample:
    edge_before, _ = srv.edge.cpu()
    timed = timed_git(["ls-remote", srv.urls[path], "refs/heads/main"], env, timeout=60)
    edge_after, _ = srv.edge.cpu()
    return LsRemoteSample(
        index=index,
        path=path,
        warmup=warmup,
        wall_s=timed.wall_s,
        client_cpu_s=timed.client_cpu_s,
        edge_cpu_s=edge_after - edge_before,
    )


def check_ls_remote(srv: Servers, env: dict[str, str], commit: str) -> None:
    for path in ("direct", "edge"):
        out = run_git(["ls-remote", srv.urls[path], "refs/heads/main"], env, timeout=60).split()
        if not out or out[0] != commit:
            raise RuntimeError(f"ls-remote {path} shows {out}, expected {commit}")


def protocol_check(srv: Servers, env: dict[str, str]) -> dict[str, bool]:
    """Whether each path really speaks protocol v2 (GIT_PROTOCOL reached git)."""
    seen = {}
    for path in ("direct", "edge"):
        done = subprocess.run(
            ["git", "ls-remote", srv.urls[path], "refs/heads/main"],
            env={**env, "GIT_TRACE_PACKET": "1"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        seen[path] = b"< version 2" in done.stderr
    return seen


_NEGOTIATED = {
    "kex": "debug1: kex: algorithm: ",
    "host_key": "debug1: kex: host key algorithm: ",
    "cipher_s2c": "debug1: kex: server->client cipher: ",
    "cipher_c2s": "debug1: kex: client->server cipher: ",
    "server": "debug1: Remote protocol version ",
}


def negotiated(srv: Servers, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Key exchange, host key and cipher the OpenSSH client agreed on with each server."""
    out: dict[str, dict[str, str]] = {}
    for path in ("direct", "edge"):
        done = subprocess.run(
            ["git", "ls-remote", srv.urls[path], "refs/heads/main"],
            env={**env, "GIT_SSH_COMMAND": env["GIT_SSH_COMMAND"] + " -v"},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
            check=False,
        )
        found = {}
        for line in done.stderr.decode(errors="replace").splitlines():
            for name, prefix in _NEGOTIATED.items():
                if line.startswith(prefix) and name not in found:
                    found[name] = line[len(prefix) :].strip()
        out[path] = found
    return out


_ACCESS = re.compile(
    r"edge\.access: ssh (?P<user>\S+) git-upload-pack (?P<repo>\S+) node=\S+ status=0 "
    r"(?P<secs>[0-9.]+)s up=(?P<up>\d+) down=(?P<down>\d+)"
)


def edge_session_seconds(log: Path, user: str, last: int) -> list[float]:
    """The edge's own time (auth done -> exit status sent) of its last `last` ls-remotes.

    From the edge's access log: sessions of `user` that sent less than 64 KiB
    down (ref advertisements, not packs).
    """
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    secs = [
        float(m["secs"])
        for m in _ACCESS.finditer(text)
        if m["user"] == user and int(m["down"]) < 64 * 1024
    ]
    return secs[-last:]


# -- profiling (same approach as bench.http_clone) -----------------------------------


def profile_edge(
    srv: Servers,
    work: Path,
    what: str,
    runs: int,
    run_one: Callable[[int], float],
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Any]:
    suffix = ("_native" if args.profile_native else "") + ("_idle" if args.profile_idle else "")
    return profile_process(
        srv.edge,
        work / f"edge-profile-{what}.txt",
        args.results_dir / f"{_stem(args)}_profile_{what}{suffix}.txt",
        what,
        runs,
        run_one,
        gil_only=not args.profile_idle,
        native=args.profile_native,
        log=log,
    )


# -- summary and output --------------------------------------------------------------


def summarise(
    clones: list[CloneSample],
    ls: list[LsRemoteSample],
    stats: dict[str, dict[str, Any]],
    edge_sessions: list[float],
) -> dict[str, Any]:
    timed = [s for s in clones if not s.warmup]
    direct = [s for s in timed if s.path == "direct"]
    edge = [s for s in timed if s.path == "edge"]
    med_direct = median([s.wall_s for s in direct])
    med_edge = median([s.wall_s for s in edge])
    ratio = med_edge / med_direct
    pair_ratios = [e.wall_s / d.wall_s for d, e in zip(direct, edge, strict=True)]
    main_ls = [s for s in ls if not s.warmup and s.series == "default"]
    ls_direct = [s.wall_s for s in main_ls if s.path == "direct"]
    ls_edge = [s.wall_s for s in main_ls if s.path == "edge"]
    ls_med_direct_ms = 1000 * median(ls_direct)
    ls_med_edge_ms = 1000 * median(ls_edge)
    added_ms = ls_med_edge_ms - ls_med_direct_ms
    ls_pairs_ms = [1000 * (e - d) for d, e in zip(ls_direct, ls_edge, strict=True)]
    timed_delta = stats_delta(stats["before_timed"], stats["after_timed"])
    out: dict[str, Any] = {
        "median_direct_s": med_direct,
        "median_edge_s": med_edge,
        "ratio_edge_direct": ratio,
        "median_pair_ratio": median(pair_ratios),
        "pair_ratios": pair_ratios,
        "ls_remote_median_direct_ms": ls_med_direct_ms,
        "ls_remote_median_edge_ms": ls_med_edge_ms,
        "ls_remote_min_direct_ms": 1000 * min(ls_direct),
        "ls_remote_min_edge_ms": 1000 * min(ls_edge),
        "ls_remote_added_ms": added_ms,
        "ls_remote_median_pair_added_ms": median(ls_pairs_ms),
        "ls_remote_ratio_edge_direct": ls_med_edge_ms / ls_med_direct_ms,
        "ls_remote_edge_session_ms": 1000 * median(edge_sessions),
        "ls_remote_edge_cpu_ms": 1000 * median([s.edge_cpu_s for s in main_ls if s.path == "edge"]),
        "edge_cpu_s_per_clone": median([s.edge_cpu_s for s in edge]),
        "edge_cpu_s_per_100mb": median([s.edge_cpu_s / (s.pack_bytes / (100 * MiB)) for s in edge]),
        "edge_cpu_s_during_direct_clone": median([s.edge_cpu_s for s in direct]),
        "node_cpu_s_edge": median([s.node_cpu_s + s.node_children_cpu_s for s in edge]),
        "node_own_cpu_s_edge": median([s.node_cpu_s for s in edge]),
        "sshd_cpu_s_direct": median([s.sshd_cpu_s for s in direct]),
        "server_cpu_s_direct": median([s.sshd_cpu_s for s in direct]),
        "server_cpu_s_edge": median(
            [s.edge_cpu_s + s.node_cpu_s + s.node_children_cpu_s for s in edge]
        ),
        "client_cpu_s_direct": median([s.client_cpu_s for s in direct]),
        "client_cpu_s_edge": median([s.client_cpu_s for s in edge]),
        "edge_peak_rss_mb_during_clones": max(s.edge_peak_rss_mb for s in edge),
        "edge_rss_mb_before_first_clone": clones[0].edge_rss_before_mb,
        "edge_rss_growth_mb_per_clone_max": max(
            s.edge_peak_rss_mb - s.edge_rss_before_mb for s in edge
        ),
        "clone_pack_mb": median([s.pack_bytes / MiB for s in timed]),
        "edge_mb_per_s": median([s.pack_bytes / MiB / s.wall_s for s in edge]),
        "direct_mb_per_s": median([s.pack_bytes / MiB / s.wall_s for s in direct]),
        "clone_packs_max": max(s.packs for s in timed),
        "clone_loose_objects_max": max(s.loose_objects for s in timed),
        "edge_stats_delta_timed": timed_delta,
        "ssh_pool_connects_during_timed": timed_delta.get("ssh_pool_connects"),
        "ssh_pool_reuses_during_timed": timed_delta.get("ssh_pool_reuses"),
    }
    same = [s for s in ls if not s.warmup and s.series == "same-kex"]
    if same:
        same_direct = 1000 * median([s.wall_s for s in same if s.path == "direct"])
        same_edge = 1000 * median([s.wall_s for s in same if s.path == "edge"])
        out["same_kex_ls_remote"] = {
            "median_direct_ms": same_direct,
            "median_edge_ms": same_edge,
            "added_ms": same_edge - same_direct,
            "ratio_edge_direct": same_edge / same_direct,
        }
    out["targets"] = {
        "ratio_edge_direct": {
            "target": f"<= {TARGET_RATIO}",
            "value": ratio,
            "pass": ratio <= TARGET_RATIO,
        },
        "ls_remote_added_ms": {
            "target": f"<= {TARGET_ADDED_LS_REMOTE_MS}",
            "value": added_ms,
            "pass": added_ms <= TARGET_ADDED_LS_REMOTE_MS,
        },
        "no_new_node_connection_when_warm": {
            "target": "ssh_pool_connects += 0",
            "value": out["ssh_pool_connects_during_timed"],
            "pass": None
            if out["ssh_pool_connects_during_timed"] is None
            else out["ssh_pool_connects_during_timed"] == 0,
        },
    }
    return out


def render_table(result: dict[str, Any]) -> str:
    s = result["summary"]
    t = s["targets"]
    m = result["machine"]
    a = result["args"]
    repo = result["repo"]
    proto = result.get("protocol_v2", {})
    lines = [
        f"gitedge ssh_clone: {repo['bytes'] / MiB:.0f} MiB repo, {repo['files']} files "
        f"({repo['objects']} objects, pack kept: >= 100 objects, transfer.unpackLimit "
        f"at default), {a['rounds']} interleaved clone rounds + 1 warm-up per path, "
        f"clone{' --no-checkout' if a['no_checkout'] else ' with checkout'}, "
        f"{a['ls_remotes']} interleaved ls-remotes + 1 warm-up per path",
        "edge: client -SSH-> edge (asyncssh on trio-asyncio) -pooled HTTP-> node fra-1 "
        "(one request per session); direct: client -SSH-> OpenSSH sshd (ForceCommand git-shell, "
        "login shell reads no rc file) on the same bare repo directory",
        *(
            [f"client ssh options on both paths: {' '.join(a['ssh_option'])}"]
            if a.get("ssh_option")
            else []
        ),
        f"machine: nproc {m['nproc']} ({m['cpu_model']}), {m['mem_total_mb']} MiB RAM, "
        f"Python {m['python']}, {m['git']}, {result['openssh']}, Linux {m['kernel']}; "
        f"load avg {result['loadavg_start'][0]:.2f} at start, "
        f"{result['loadavg_end'][0]:.2f} at end",
        f"every timed clone kept its pack: max {s['clone_packs_max']} pack, "
        f"{s['clone_loose_objects_max']} loose objects; protocol v2 seen: "
        f"direct {proto.get('direct')}, edge {proto.get('edge')}",
        *(
            f"{path} negotiated: {n.get('server', '?')}; kex {n.get('kex', '?')}, "
            f"host key {n.get('host_key', '?')}, cipher {n.get('cipher_s2c', '?')}"
            for path, n in result.get("negotiated", {}).items()
        ),
        "",
        "| metric | value | target | result |",
        "| --- | ---: | ---: | --- |",
        f"| median clone, direct (OpenSSH sshd) | {s['median_direct_s']:.3f} s | | |",
        f"| median clone, edge (SSH -> edge -> HTTP -> node) | {s['median_edge_s']:.3f} s | | |",
        f"| ratio edge/direct (of medians) | {s['ratio_edge_direct']:.3f} | "
        f"<= {TARGET_RATIO} | {verdict(t['ratio_edge_direct']['pass'])} |",
        f"| median of per-round ratios | {s['median_pair_ratio']:.3f} | | |",
        f"| for scale: `ssh -J` via an OpenSSH jump host (issue 3, not this run) | "
        f"{JUMP_HOST_CLONE_RATIO:.2f} | | |",
        f"| median ls-remote, direct | {s['ls_remote_median_direct_ms']:.1f} ms | | |",
        f"| median ls-remote, edge | {s['ls_remote_median_edge_ms']:.1f} ms | | |",
        f"| ls-remote added latency (edge - direct medians) | "
        f"{s['ls_remote_added_ms']:+.1f} ms | <= {TARGET_ADDED_LS_REMOTE_MS:.0f} ms | "
        f"{verdict(t['ls_remote_added_ms']['pass'])} |",
        f"| median of per-pair ls-remote differences | "
        f"{s['ls_remote_median_pair_added_ms']:+.1f} ms | | |",
        f"| ls-remote ratio edge/direct | {s['ls_remote_ratio_edge_direct']:.3f} | | |",
        f"| edge's own time per ls-remote session (access log: auth done -> exit sent, "
        f"incl. channel open and git on the node; median) | "
        f"{s['ls_remote_edge_session_ms']:.1f} ms | | |",
    ]
    if same := s.get("same_kex_ls_remote"):
        kex = result["negotiated"]["edge"].get("kex", "?")
        lines += [
            f"| ls-remote, client forcing `{kex}` on both paths: direct / edge | "
            f"{same['median_direct_ms']:.1f} / {same['median_edge_ms']:.1f} ms | | |",
            f"| ls-remote added latency, same kex | {same['added_ms']:+.1f} ms | "
            f"(<= {TARGET_ADDED_LS_REMOTE_MS:.0f} ms) | "
            f"{verdict(same['added_ms'] <= TARGET_ADDED_LS_REMOTE_MS)} |",
        ]
    lines += [
        f"| for scale: `ssh -J` ls-remote ratio; direct OpenSSH ls-remote (issue 3) | "
        f"{JUMP_HOST_LS_REMOTE_RATIO}; ~{DIRECT_LS_REMOTE_MS_ANCHOR:.0f} ms | | |",
        f"| new edge->node connections for SSH sessions during timed runs | "
        f"{s['ssh_pool_connects_during_timed']} (reuses +{s['ssh_pool_reuses_during_timed']}) "
        f"| 0 | {verdict(t['no_new_node_connection_when_warm']['pass'])} |",
        f"| edge CPU per clone (median) | {s['edge_cpu_s_per_clone']:.3f} s | | |",
        f"| edge CPU per ls-remote (median, no settle) | {s['ls_remote_edge_cpu_ms']:.1f} ms | | |",
        f"| server CPU per clone: direct sshd+git / edge+node(+git) | "
        f"{s['server_cpu_s_direct']:.2f} / {s['server_cpu_s_edge']:.2f} s | | |",
        f"| node CPU per clone (own + git children), edge path | {s['node_cpu_s_edge']:.2f} s "
        f"(own {s['node_own_cpu_s_edge']:.2f}) | | |",
        f"| client git+ssh CPU per clone, direct / edge | "
        f"{s['client_cpu_s_direct']:.2f} / {s['client_cpu_s_edge']:.2f} s | | |",
        f"| throughput, direct / edge | {s['direct_mb_per_s']:.0f} / "
        f"{s['edge_mb_per_s']:.0f} MiB/s | | |",
        f"| edge peak RSS during clones (at start {result['edge_rss_mb_at_start']:.1f}, "
        f"after the push {result['push']['edge_rss_mb_after']:.1f}, before the first clone "
        f"{s['edge_rss_mb_before_first_clone']:.1f} MiB; most one clone added "
        f"{s['edge_rss_growth_mb_per_clone_max']:.1f} MiB) | "
        f"{s['edge_peak_rss_mb_during_clones']:.1f} MiB | | |",
        f"| edge CPU during a direct clone (idle noise) | "
        f"{s['edge_cpu_s_during_direct_clone']:.3f} s | | |",
        f"| push {repo['bytes'] / MiB:.0f} MiB through edge ({result['push']['via']}) | "
        f"{result['push']['wall_s']:.2f} s | | |",
        "",
        "per clone round (wall s / edge CPU s / server CPU s; machine load when each ended; "
        "the edge's and node's voluntary context switches during the edge clone):",
        "",
        "| round | direct | edge | load 1m | edge / node ctx switches |",
        "| --- | --- | --- | --- | --- |",
    ]
    samples = [CloneSample(**x) for x in result["clone_samples"]]
    for r in sorted({x.round for x in samples if not x.warmup}):
        d = next(x for x in samples if x.round == r and x.path == "direct" and not x.warmup)
        e = next(x for x in samples if x.round == r and x.path == "edge" and not x.warmup)
        lines.append(
            f"| {r} | {d.wall_s:.3f} / {d.edge_cpu_s:.3f} / {d.sshd_cpu_s:.2f} | "
            f"{e.wall_s:.3f} / {e.edge_cpu_s:.3f} / "
            f"{e.edge_cpu_s + e.node_cpu_s + e.node_children_cpu_s:.2f} | "
            f"{d.loadavg_1m:.1f} / {e.loadavg_1m:.1f} | "
            f"{e.edge_voluntary_ctx} / {e.node_voluntary_ctx} |"
        )
    ls = [LsRemoteSample(**x) for x in result["ls_remote_samples"] if not x["warmup"]]
    lines.append("")
    for series in ("default", "same-kex"):
        picked = [x for x in ls if x.series == series]
        if picked:
            lines.append(
                f"ls-remote ms ({series}), in run order: direct "
                + " ".join(f"{1000 * x.wall_s:.0f}" for x in picked if x.path == "direct")
                + "; edge "
                + " ".join(f"{1000 * x.wall_s:.0f}" for x in picked if x.path == "edge")
            )
    return "\n".join(lines)


# -- the run -------------------------------------------------------------------------


@contextlib.contextmanager
def running_sshd(work: Path, client_pub: Path) -> Iterator[DirectSshd]:
    server = start_sshd(work, client_pub)
    try:
        yield server
    finally:
        server.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    ensure_sshd(log)
    openssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    result: dict[str, Any] = {
        "benchmark": "ssh_clone",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "openssh": openssh.stderr.strip().split(",")[0],
        "notes": [
            f"MB means MiB ({MiB} bytes).",
            f"Repos have >= {MIN_FILES} blobs so every pack has >= 100 objects and is kept "
            "as a pack (transfer.unpackLimit left at its default of 100).",
            "Blobs are os.urandom; the source pack is written with compression level 0.",
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
        ],
    }
    result["loadavg_start"] = os.getloadavg()
    work_ctx = tempfile.TemporaryDirectory(prefix="gitedge-bench-ssh-")
    work = Path(work_ctx.name).resolve()
    try:
        env_home = work / "home"
        client_key = keygen(work / "client_ed25519", "gitedge-bench")
        client_pub = client_key.with_name(client_key.name + ".pub")
        log(f"work dir {work}; starting devnet ...")
        with start_devnet(work / "devnet") as net, running_sshd(work, client_pub) as sshd:
            if net.edge.ready.get("ssh_address") is None:
                raise RuntimeError("the devnet's edge has no SSH front")
            token, info = setup_user_and_repo(net, client_pub)
            node_id = str(info["node"])
            node = net.nodes[node_id]
            bare = (node.volume_dir / "bench" / "big.git").resolve()
            client_options = [x for o in args.ssh_option for x in ("-o", o)]
            known_hosts = work / "known_hosts"
            known_hosts.write_text(net.known_hosts.read_text() + sshd.known_hosts_line() + "\n")
            env = clean_git_env(
                env_home,
                GIT_SSH_COMMAND=git_ssh_command(client_key, known_hosts, *client_options),
                GIT_SSL_CAINFO=str(net.ca_file),
            )
            srv = Servers(
                net=net,
                edge=ProcMeter(net.edge.process.popen.pid),
                node=ProcMeter(node.process.popen.pid),
                sshd=ProcMeter(sshd.pid),
                node_id=node_id,
                urls={
                    "direct": f"ssh://{_login_user()}@127.0.0.1:{sshd.port}{bare}",
                    "edge": f"{net.edge.ssh_url}/{REPO}.git",
                },
            )
            result["urls"] = srv.urls
            log(
                f"edge {srv.urls['edge']} (pid {srv.edge.proc.pid}), node {node_id} "
                f"(pid {srv.node.proc.pid}), sshd {srv.urls['direct']} (pid {sshd.pid})"
            )
            stats: dict[str, dict[str, Any]] = {"start": edge_stats(net)}
            result["edge_rss_mb_at_start"] = srv.edge.rss() / MiB

            log(f"generating {args.size_mb} MiB repo ...")
            t0 = time.perf_counter()
            repo: RandomRepo = make_random_repo(work / "src", args.size_mb * MiB, env)
            result["repo"] = {
                "name": REPO,
                "placed": info,
                "bytes": repo.total_bytes,
                "files": repo.files,
                "file_bytes": repo.file_bytes,
                "objects": repo.objects,
                "commit": repo.commit,
                "generate_s": time.perf_counter() - t0,
                "bare_dir": str(bare),
            }
            if args.push_via == "ssh":
                push_url = srv.urls["edge"]
            else:
                push_url = net.edge.https_url.replace("://", f"://{USER}:{token}@", 1)
                push_url = f"{push_url.rstrip('/')}/{REPO}.git"
            log(f"pushing it through the edge over {args.push_via} ...")
            edge_cpu0, _ = srv.edge.cpu()
            pushed = timed_git(
                ["push", "--quiet", push_url, "main:main"], env, cwd=repo.path, timeout=1800
            )
            time.sleep(SETTLE_S)
            result["push"] = {
                "via": args.push_via,
                **asdict(pushed),
                "edge_cpu_s": srv.edge.cpu()[0] - edge_cpu0,
                "mb_per_s": repo.total_bytes / MiB / pushed.wall_s,
                "node_repo_pack": pack_stats(bare),
                "edge_rss_mb_after": srv.edge.rss() / MiB,
            }
            rmtree(repo.path)
            check_ls_remote(srv, env, repo.commit)
            result["protocol_v2"] = protocol_check(srv, env)
            result["negotiated"] = negotiated(srv, env)
            log(f"negotiated: {result['negotiated']}")
            stats["after_push"] = edge_stats(net)

            clones: list[CloneSample] = []
            ls: list[LsRemoteSample] = []
            for round_no in range(args.rounds + 1):
                warmup = round_no == 0
                for path in ("direct", "edge"):
                    c = clone_once(
                        srv, path, round_no, warmup, work, env, repo.commit, args.no_checkout
                    )
                    clones.append(c)
                    log(
                        f"{'warm-up' if warmup else f'round {round_no}'} {path:6s} "
                        f"{c.wall_s:7.3f}s  edge CPU {c.edge_cpu_s:.3f}s  "
                        f"node CPU {c.node_cpu_s + c.node_children_cpu_s:.2f}s  "
                        f"sshd CPU {c.sshd_cpu_s:.2f}s  client CPU {c.client_cpu_s:.2f}s  "
                        f"edge/node ctx {c.edge_voluntary_ctx}/{c.node_voluntary_ctx}  "
                        f"pack {c.pack_bytes / MiB:.1f} MiB "
                        f"({c.packs} pack, {c.loose_objects} loose)"
                    )
                if warmup:
                    for path in ("direct", "edge"):
                        ls.append(ls_remote_once(srv, path, 0, True, env))
                    stats["before_timed"] = edge_stats(net)
            stats["after_clones"] = edge_stats(net)
            for i in range(1, args.ls_remotes + 1):
                for path in ("direct", "edge"):
                    ls.append(ls_remote_once(srv, path, i, False, env))
            stats["after_timed"] = edge_stats(net)
            result["edge_ls_remote_session_s"] = edge_session_seconds(
                net.edge.process.log_path, USER, args.ls_remotes
            )
            edge_kex = result["negotiated"]["edge"].get("kex")
            if edge_kex and edge_kex != result["negotiated"]["direct"].get("kex"):
                # The default series compares each server's own defaults; this one
                # separates the key exchange's cost from the edge's.
                log(f"ls-remote again with KexAlgorithms={edge_kex} on both paths ...")
                env_kex = {
                    **env,
                    "GIT_SSH_COMMAND": git_ssh_command(
                        client_key, known_hosts, *client_options, "-o", f"KexAlgorithms={edge_kex}"
                    ),
                }
                for i in range(args.ls_remotes + 1):
                    for path in ("direct", "edge"):
                        x = ls_remote_once(srv, path, i, i == 0, env_kex)
                        x.series = "same-kex"
                        ls.append(x)
                stats["end"] = edge_stats(net)
            timed_ls = [x for x in ls if not x.warmup]
            for series in ("default", "same-kex"):
                for path in ("direct", "edge"):
                    walls = [
                        1000 * x.wall_s for x in timed_ls if x.path == path and x.series == series
                    ]
                    if walls:
                        log(f"ls-remote {series} {path:6s} median {median(walls):.1f} ms")
            result["clone_samples"] = [asdict(c) for c in clones]
            result["ls_remote_samples"] = [asdict(x) for x in ls]
            result["edge_stats"] = stats
            result["summary"] = summarise(clones, ls, stats, result["edge_ls_remote_session_s"])

            profiles = []
            if args.profile:
                log(f"profiling the edge during {args.profile} edge clones ...")

                def one_clone(i: int) -> float:
                    c = clone_once(srv, "edge", i, False, work, env, repo.commit, args.no_checkout)
                    return c.wall_s

                profiles.append(
                    profile_edge(srv, work, "clone", args.profile, one_clone, args, log)
                )
            if args.profile_ls_remote:
                log(f"profiling the edge during {args.profile_ls_remote} edge ls-remotes ...")

                def one_ls(i: int) -> float:
                    return ls_remote_once(srv, "edge", i, False, env).wall_s

                profiles.append(
                    profile_edge(srv, work, "ls-remote", args.profile_ls_remote, one_ls, args, log)
                )
            if profiles:
                result["profiles"] = profiles
            result["edge_log_tail"] = net.edge.process.log_tail(20)
            result["sshd_log_tail"] = sshd.log_tail(10)
            result["loadavg_end"] = os.getloadavg()
    finally:
        if args.keep_work:
            print(f"kept {work}", file=sys.stderr)
        else:
            work_ctx.cleanup()
    return result


def _stem(args: argparse.Namespace) -> str:
    return f"ssh_clone_{args.tag}" if args.tag else "ssh_clone"


def _login_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def main(argv: list[str] | None = None) -> int:
    sigterm_as_interrupt()
    args = parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted; sshd and devnet stopped, work dir removed", file=sys.stderr)
        return 130
    text = render_table(result)
    for profile in result.get("profiles", []):
        text += "\n\n" + render_profile(profile)
    print(text)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.results_dir / f"{_stem(args)}.json"
    md_path = args.results_dir / f"{_stem(args)}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(
        f"# bench.ssh_clone ({result['started_at']})\n\n"
        f"`python -m bench.ssh_clone {' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
        + text
        + "\n"
    )
    print(f"\nwrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
