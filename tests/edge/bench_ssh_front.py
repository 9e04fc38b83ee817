"""The SSH front's own CPU per download, with and without asyncssh_gap's fast paths.

    .venv/bin/python -m tests.edge.bench_ssh_front [--mib 100] [--rounds 9] [--consumer index-pack]

A microbenchmark, not a test (pytest collects only test_*.py), kept beside the
module it measures because bench/ may not import edge. An asyncssh server on
trio-asyncio, set up as the edge sets up its connections and channels
(skip_empty_ignore_packets, skip_unlogged_packet_logs, use_sodium_chacha,
send_full_packets), sends `--mib` MiB in 256 KiB writes, as the relay writes,
to a real OpenSSH client writing to /dev/null. Each round runs one download
with the fast paths (`_seal_run`, `_take_window_adjusts`) and one with both
replaced by no-ops, in alternating order; the figure is this process's CPU
(user + system, getrusage) per download. The client is faster than git's
index-pack, so it opens its window less often than in a clone: a floor for
the front's work, not a clone's.

With `--consumer index-pack` the download is a real pack (`--mib` MiB of random
blobs, made by bench.repos) and the client pipes it into `git index-pack --stdin`
in a fresh bare repository, which reads it 4 KiB at a time: OpenSSH then opens
its window in small steps, one adjust packet each. A slow consumer, dearer for
the server than a clone's git (which reads side-band packets first).

With `--consumer clone` the client is a real `git clone` (protocol v2, as the
benchmarks clone), and the server replays what `git upload-pack` sent to the same
clone of the same repository, recorded once beforehand through a `tee`: the
capability advertisement, the ls-refs answer and the fetch answer with its
side-band pack, all written at once, since the client asks for exactly what it
asked for when they were recorded. That is the edge's client hop with nothing
behind it: the SSH front's floor for a clone.

Writes bench/results/ssh_front_fastpaths[-CONSUMER][-TAG].{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
import trio

from bench.repos import clean_git_env, make_random_repo
from edge.ssh import asyncssh_gap
from edge.ssh.aio import aio_as_trio, open_aio_loop
from tests.edge.open_ssh_server import AnyKeyServer

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
BLOCK = 256 * 1024


class _Server(AnyKeyServer):
    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        asyncssh_gap.skip_empty_ignore_packets(conn)
        asyncssh_gap.skip_unlogged_packet_logs(conn)
        assert asyncssh_gap.use_sodium_chacha(conn)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _pack(mib: int, work: Path) -> bytes:
    """A real pack of `mib` MiB of random blobs (one commit), as git sends it."""
    env = clean_git_env(work / "home")
    make_random_repo(work / "src", mib * 2**20, env)
    (pack,) = (work / "src" / ".git" / "objects" / "pack").glob("*.pack")
    return pack.read_bytes()


def _recorded_clone(mib: int, work: Path) -> tuple[bytes, str]:
    """What upload-pack sends a `git clone --no-checkout --quiet` of a repo of `mib`
    MiB of random blobs (protocol v2), recorded on a local clone; the repo's commit."""
    env = clean_git_env(work / "home")
    commit = make_random_repo(work / "src", mib * 2**20, env).commit
    record, wrapper = work / "upload-pack.out", work / "recording-upload-pack"
    wrapper.write_text(f'#!/bin/bash\nset -o pipefail\ngit upload-pack "$@" | tee {record}\n')
    wrapper.chmod(0o755)
    argv = ["git", "clone", "--quiet", "--no-checkout", "--upload-pack", str(wrapper)]
    argv += [f"file://{work / 'src'}", str(work / "recorded")]
    subprocess.run(argv, env=env, check=True)
    shutil.rmtree(work / "recorded")
    return record.read_bytes(), commit


async def _run(
    mib: int, rounds: int, work: Path, consumer: str
) -> dict[str, list[dict[str, float]]]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(work / "id")
    (work / "id").chmod(0o600)
    commit = ""  # what a replayed clone's HEAD must be
    if consumer == "devnull":
        blocks = [b"\x5a" * BLOCK] * (mib * 2**20 // BLOCK)
    else:
        data, commit = _recorded_clone(mib, work) if consumer == "clone" else (_pack(mib, work), "")
        blocks = [data[start : start + BLOCK] for start in range(0, len(data), BLOCK)]

    async def process(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        asyncssh_gap.send_full_packets(proc.channel)
        asyncssh_gap.skip_unlogged_packet_logs(proc.channel)
        for block in blocks:  # sliced before any round: no copy is measured
            proc.stdout.write(block)
            await proc.stdout.drain()
        proc.exit(0)

    real = asyncssh_gap._take_window_adjusts, asyncssh_gap._seal_run
    samples: dict[str, list[dict[str, float]]] = {"fast paths": [], "without": []}
    async with open_aio_loop():
        acceptor = await aio_as_trio(asyncssh.listen)(
            "127.0.0.1",
            0,
            server_host_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            server_factory=_Server,
            process_factory=process,
            encoding=None,
            line_editor=False,
            config=None,
        )
        port = acceptor.sockets[0].getsockname()[1]
        argv = ["ssh", "-F", "/dev/null", "-i", str(work / "id"), "-p", str(port)]
        argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
        argv += ["-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "u@127.0.0.1", "download"]
        env = clean_git_env(work / "home")
        try:
            for i in range(rounds + 1):  # round 0 warms up
                for fast in (True, False) if i % 2 else (False, True):
                    if fast:
                        asyncssh_gap._take_window_adjusts, asyncssh_gap._seal_run = real
                    else:
                        asyncssh_gap._take_window_adjusts = lambda conn, data: 0
                        asyncssh_gap._seal_run = lambda chan: None
                    into = Path(tempfile.mkdtemp(dir=work))
                    if consumer == "index-pack":
                        await trio.run_process(["git", "init", "-q", "--bare", str(into)], env=env)
                    cpu, wall = _cpu(), time.perf_counter()
                    if consumer == "clone":
                        ssh = shlex.join(argv[:-2])  # git adds the host and its command
                        url = f"ssh://u@127.0.0.1:{port}/replayed.git"
                        clone = ["git", "clone", "--quiet", "--no-checkout", url, str(into / "r")]
                        await trio.run_process(clone, env={**env, "GIT_SSH_COMMAND": ssh})
                    elif consumer == "index-pack":
                        line = f"set -o pipefail; {shlex.join(argv)} | git index-pack --stdin"
                        await trio.run_process(
                            ["bash", "-c", line], cwd=into, env=env, stdout=subprocess.DEVNULL
                        )
                    else:
                        with open(os.devnull, "wb") as sink:
                            await trio.run_process(argv, stdout=sink)
                    if i:
                        sample = {"cpu_s": _cpu() - cpu, "wall_s": time.perf_counter() - wall}
                        samples["fast paths" if fast else "without"].append(sample)
                    if consumer == "clone":  # a replay that git took as its clone
                        head = ["git", "-C", str(into / "r"), "rev-parse", "HEAD"]
                        done = await trio.run_process(head, env=env, capture_stdout=True)
                        assert done.stdout.decode().strip() == commit
                    shutil.rmtree(into)
        finally:
            asyncssh_gap._take_window_adjusts, asyncssh_gap._seal_run = real
            acceptor.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--consumer", choices=("devnull", "index-pack", "clone"), default="devnull")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        samples = trio.run(_run, args.mib, args.rounds, Path(work), args.consumer)
    med: dict[str, dict[str, float]] = {
        name: {k: statistics.median(s[k] for s in rows) for k in ("cpu_s", "wall_s")}
        for name, rows in samples.items()
    }
    sink = {
        "devnull": "> /dev/null",
        "index-pack": "| git index-pack --stdin (a real pack)",
        "clone": "in `git clone` (a recorded upload-pack stream replayed)",
    }[args.consumer]
    lines = [
        f"asyncssh {asyncssh.__version__} server on trio-asyncio -> OpenSSH client {sink},"
        f" {args.mib} MiB per download, {args.rounds} interleaved rounds; load avg at end"
        f" {os.getloadavg()[0]:.2f}",
        "",
        "| path | server CPU per download (median) | wall (median) | CPU of each round |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, rows in samples.items():
        each = " ".join(f"{s['cpu_s']:.3f}" for s in rows)
        lines.append(
            f"| {name} | {med[name]['cpu_s']:.3f} s | {med[name]['wall_s']:.3f} s | {each} |"
        )
    ratio = med["fast paths"]["cpu_s"] / med["without"]["cpu_s"]
    lines += ["", f"CPU with / without the fast paths: {ratio:.2f}"]
    text = "\n".join(lines)
    print(text)
    stem = "ssh_front_fastpaths" + (f"-{args.consumer}" if args.consumer != "devnull" else "")
    stem += f"-{args.tag}" if args.tag else ""
    command = f"python -m tests.edge.bench_ssh_front {' '.join(sys.argv[1:])}"
    result: dict[str, Any] = {"args": vars(args), "samples": samples, "medians": med}
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(f"# {stem}\n\n`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
