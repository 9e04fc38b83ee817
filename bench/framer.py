"""Micro-benchmark of `BodyFramer.feed`, the edge's per-byte work on every pack.

    python -m bench.framer [--baseline REF] [--repeat 9] [--mib 100]

A body of `--mib` MiB is fed in 256 KiB pieces (what the relay reads per
`receive_some`), once per framing: chunked with several chunk sizes, and
Content-Length as a control. Fast cases are framed several times per sample
so that each sample lasts about 50 ms. The framer at `--baseline` (a git ref; its
`edge/proto/body.py` is loaded as it was) and the working tree's run
interleaved in one process, as DESIGN.md asks of timings here (they vary by
±30 % between runs); the report quotes medians and new/old ratios of the time
per body. Writes bench/results/framer.json and framer.md.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import MiB, machine_info, median
from gitproto.protocol import CHUNK

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CHUNK_SIZES = (1 * MiB, 65520, 8 * 1024, 1024)  # 65520: git's LARGE_PACKET_MAX


def load_framer_module(ref: str | None) -> types.ModuleType:
    """`edge/proto/body.py` as it was at `ref` (None: as it is in this tree), as a
    module of its own: bench runs the edge's code, it does not import `edge`."""
    if ref is None:
        source = (ROOT / "edge" / "proto" / "body.py").read_text()
    else:
        source = subprocess.run(
            ["git", "show", f"{ref}:edge/proto/body.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    module = types.ModuleType(f"body_at_{ref or 'worktree'}")
    exec(compile(source, f"{ref or 'worktree'}:edge/proto/body.py", "exec"), module.__dict__)
    return module


def chunked_body(total: int, chunk: int) -> bytes:
    data = bytes(range(256)) * (chunk // 256 + 1)
    parts = []
    left = total
    while left:
        n = min(chunk, left)
        parts.append(b"%x\r\n%s\r\n" % (n, data[:n]))
        left -= n
    parts.append(b"0\r\n\r\n")
    return b"".join(parts)


def pieces_of(body: bytes) -> list[bytes]:
    return [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]


def time_feed(make: Callable[[], Any], pieces: list[bytes], rounds: int = 1) -> float:
    """Seconds per body: the body framed `rounds` times, so that one sample lasts long
    enough (tens of ms) for a scheduler hiccup on a shared machine not to dominate."""
    elapsed = 0.0
    for _ in range(rounds):
        framer = make()
        started = time.perf_counter()
        for piece in pieces:
            framer.feed(piece)
        elapsed += time.perf_counter() - started
        assert framer.done
    return elapsed / rounds


def rounds_for(make: Callable[[], Any], pieces: list[bytes], sample_s: float = 0.05) -> int:
    once = time_feed(make, pieces)
    return max(1, math.ceil(sample_s / max(once, 1e-6)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="92141ab", help="git ref of the old framer")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--mib", type=int, default=100)
    args = parser.parse_args()

    new = load_framer_module(None)
    old = load_framer_module(args.baseline)
    total = args.mib * MiB
    cases: list[tuple[str, list[bytes], Callable[[Any], Callable[[], Any]]]] = []
    for chunk in CHUNK_SIZES:
        body = chunked_body(total, chunk)
        cases.append((f"chunked {chunk} B", pieces_of(body), lambda m: m.BodyFramer.chunked))
    cases.append(
        ("content-length", pieces_of(b"x" * total), lambda m: lambda: m.BodyFramer.length(total))
    )

    rows = []
    for name, pieces, factory in cases:
        times: dict[str, list[float]] = {"old": [], "new": []}
        rounds = rounds_for(factory(old), pieces)
        for _ in range(args.repeat):
            for label, module in (("old", old), ("new", new)):
                times[label].append(time_feed(factory(module), pieces, rounds))
        old_s, new_s = median(times["old"]), median(times["new"])
        row = {
            "case": name,
            "old_ms": round(old_s * 1000, 2),
            "new_ms": round(new_s * 1000, 2),
            "old_mb_s": round(total / old_s / 1e6),
            "new_mb_s": round(total / new_s / 1e6),
            "new_over_old": round(new_s / old_s, 3),
            "rounds_per_sample": rounds,
            "samples": times,
        }
        rows.append(row)
        print(
            f"{name:>18}: old {row['old_ms']:8.2f} ms  new {row['new_ms']:8.2f} ms"
            f"  ({row['new_mb_s']} MB/s)  new/old {row['new_over_old']:.3f}",
            flush=True,
        )

    report = {
        "benchmark": "framer",
        "body_mib": args.mib,
        "piece_bytes": CHUNK,
        "repeat": args.repeat,
        "baseline": args.baseline,
        "machine": machine_info(),
        "python": sys.version.split()[0],
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "framer.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# BodyFramer.feed micro-benchmark",
        "",
        f"A {args.mib} MiB body fed in {CHUNK // 1024} KiB pieces; median of {args.repeat}"
        f" interleaved samples (each ~50 ms: fast cases framed several times);"
        f" old = `{args.baseline}:edge/proto/body.py`, new = working tree. ms per body.",
        "",
        "| case | old ms | new ms | new MB/s | new/old |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row['case']} | {row['old_ms']} | {row['new_ms']} | {row['new_mb_s']}"
            f" | {row['new_over_old']} |"
        )
    (RESULTS / "framer.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
