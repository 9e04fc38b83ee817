"""What bench.ssh_clone measures besides clones: ls-remote runs, what each SSH server
negotiated, whether protocol v2 got through, and the edge's own session times."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from bench.clones import Variant
from bench.repos import run_git, timed_git
from bench.ssh_report import LsRemoteSample


def ls_remote_once(
    v: Variant, index: int, warmup: bool, env: dict[str, str], series: str = "default"
) -> LsRemoteSample:
    edge_before, _ = v.edge.cpu()
    run = timed_git(["ls-remote", v.url, "refs/heads/main"], env, timeout=60)
    edge_after, _ = v.edge.cpu()
    cpu = edge_after - edge_before
    return LsRemoteSample(index, v.name, warmup, run.wall_s, run.client_cpu_s, cpu, series)


def check_ls_remote(variants: list[Variant], env: dict[str, str], commit: str) -> None:
    for v in variants:
        out = run_git(["ls-remote", v.url, "refs/heads/main"], env, timeout=60).split()
        if not out or out[0] != commit:
            raise RuntimeError(f"ls-remote {v.name} shows {out}, expected {commit}")


def _ls_remote_stderr(url: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        ["git", "ls-remote", url, "refs/heads/main"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.stderr.decode(errors="replace")


def protocol_check(variants: list[Variant], env: dict[str, str]) -> dict[str, bool]:
    """Whether each path really speaks protocol v2 (GIT_PROTOCOL reached git)."""
    traced = {**env, "GIT_TRACE_PACKET": "1"}
    return {v.name: "< version 2" in _ls_remote_stderr(v.url, traced) for v in variants}


_NEGOTIATED = {
    "kex": "debug1: kex: algorithm: ",
    "host_key": "debug1: kex: host key algorithm: ",
    "cipher_s2c": "debug1: kex: server->client cipher: ",
    "cipher_c2s": "debug1: kex: client->server cipher: ",
    "server": "debug1: Remote protocol version ",
}


def negotiated(variants: list[Variant], env: dict[str, str]) -> dict[str, dict[str, str]]:
    """Key exchange, host key and cipher the OpenSSH client agreed on with each server."""
    verbose = {**env, "GIT_SSH_COMMAND": env["GIT_SSH_COMMAND"] + " -v"}
    out: dict[str, dict[str, str]] = {}
    for v in variants:
        found: dict[str, str] = {}
        for line in _ls_remote_stderr(v.url, verbose).splitlines():
            for name, prefix in _NEGOTIATED.items():
                if line.startswith(prefix) and name not in found:
                    found[name] = line[len(prefix) :].strip()
        out[v.name] = found
    return out


_ACCESS = re.compile(
    r"edge\.access: ssh (?P<user>\S+) git-upload-pack (?P<repo>\S+) node=\S+ status=0 "
    r"(?P<secs>[0-9.]+)s up=(?P<up>\d+) down=(?P<down>\d+)"
)


def edge_session_seconds(log_path: Path, user: str, last: int) -> list[float]:
    """The edge's own time (auth done -> exit status sent) of its last `last` ls-remotes.

    From the edge's access log: sessions of `user` that sent less than 64 KiB
    down (ref advertisements, not packs).
    """
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    secs = [
        float(m["secs"])
        for m in _ACCESS.finditer(text)
        if m["user"] == user and int(m["down"]) < 64 * 1024
    ]
    return secs[-last:]
