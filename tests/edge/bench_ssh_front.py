"""The SSH front's own CPU per download, with and without asyncssh_gap's fast paths.

    .venv/bin/python -m tests.edge.bench_ssh_front [--mib 100] [--rounds 9]

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

Writes bench/results/ssh_front_fastpaths.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncssh
import trio

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


async def _run(mib: int, rounds: int, work: Path) -> dict[str, list[dict[str, float]]]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(work / "id")
    (work / "id").chmod(0o600)

    async def process(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        asyncssh_gap.send_full_packets(proc.channel)
        asyncssh_gap.skip_unlogged_packet_logs(proc.channel)
        block = b"\x5a" * BLOCK
        for _ in range(mib * 2**20 // BLOCK):
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
        try:
            for i in range(rounds + 1):  # round 0 warms up
                for fast in (True, False) if i % 2 else (False, True):
                    if fast:
                        asyncssh_gap._take_window_adjusts, asyncssh_gap._seal_run = real
                    else:
                        asyncssh_gap._take_window_adjusts = lambda conn, data: 0
                        asyncssh_gap._seal_run = lambda chan: None
                    cpu, wall = _cpu(), time.perf_counter()
                    with open(os.devnull, "wb") as sink:
                        await trio.run_process(argv, stdout=sink)
                    if i:
                        sample = {"cpu_s": _cpu() - cpu, "wall_s": time.perf_counter() - wall}
                        samples["fast paths" if fast else "without"].append(sample)
        finally:
            asyncssh_gap._take_window_adjusts, asyncssh_gap._seal_run = real
            acceptor.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        samples = trio.run(_run, args.mib, args.rounds, Path(work))
    med: dict[str, dict[str, float]] = {
        name: {k: statistics.median(s[k] for s in rows) for k in ("cpu_s", "wall_s")}
        for name, rows in samples.items()
    }
    lines = [
        f"asyncssh {asyncssh.__version__} server on trio-asyncio -> OpenSSH client > /dev/null,"
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
    stem = "ssh_front_fastpaths" + (f"-{args.tag}" if args.tag else "")
    command = f"python -m tests.edge.bench_ssh_front {' '.join(sys.argv[1:])}"
    result: dict[str, Any] = {"args": vars(args), "samples": samples, "medians": med}
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(f"# {stem}\n\n`{command}`\n\n{text}\n")


if __name__ == "__main__":
    main()
