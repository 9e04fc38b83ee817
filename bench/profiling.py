"""py-spy profiles of a server during some runs, summarised into top frames."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import median
from bench.meters import ProcMeter


def profile_process(
    meter: ProcMeter,
    raw: Path,
    keep: Path,
    what: str,
    runs: int,
    run_one: Callable[[int], float],
    *,
    gil_only: bool = True,
    native: bool = False,
    log: Callable[[str], None],
    process: str = "edge",
) -> dict[str, Any]:
    """py-spy `meter`'s process (`process` names it in the report) during `runs` calls
    of `run_one`; top frames by own time.

    `--gil` keeps only samples holding the GIL, i.e. Python CPU: without it trio's
    and asyncio's idle epoll_wait counts as active time.
    """
    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        return {"error": f"{py_spy} not found (pip install py-spy)"}
    cmd = [str(py_spy), "record", "-p", str(meter.proc.pid), "--format", "raw"]
    cmd += ["-o", str(raw), "--rate", "250", "--nolineno"]
    if gil_only:
        cmd.append("--gil")
    if native:
        cmd.append("--native")
    cpu_before, _ = meter.cpu()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    walls = []
    try:
        time.sleep(1.0)  # py-spy attaches
        for i in range(runs):
            walls.append(run_one(i + 1))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    cpu_s = meter.cpu()[0] - cpu_before
    log(f"  profiled {runs} {what}s: median {median(walls):.3f}s, CPU {cpu_s:.2f}s")
    if not raw.exists():
        return {"error": "py-spy wrote no profile", "output": out.decode(errors="replace")[-2000:]}
    text = raw.read_text()
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text(text)
    return {
        "what": what,
        "process": process,
        "runs": runs,
        "wall_s": walls,
        "process_cpu_s_total_incl_py_spy_overhead": cpu_s,
        "gil_only": gil_only,
        "native": native,
        "raw_file": str(keep),
        **summarise_collapsed(text),
    }


def summarise_collapsed(text: str, top: int = 25) -> dict[str, Any]:
    """Own and inclusive sample counts per frame from py-spy's collapsed stacks."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [f for f in stack.split(";") if f]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = frames[1:]  # the thread, not a function
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count

    def rows(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": f, "samples": n, "pct": round(100.0 * n / total, 1) if total else 0.0}
            for f, n in c.most_common(top)
        ]

    return {"total_samples": total, "top_own": rows(own), "top_inclusive": rows(incl)}


def render_profile(profile: dict[str, Any]) -> str:
    if "error" in profile:
        return f"profile: {profile['error']}"
    kind = "GIL-holding" if profile["gil_only"] else "all (incl. idle)"
    lines = [
        f"py-spy on the {profile.get('process', 'edge')} during {profile['runs']} edge "
        f"{profile['what']}s "
        f"({profile['total_samples']} {kind} samples at 250 Hz, native={profile['native']}):"
        " top by own time",
        "",
        "| own % | samples | frame |",
        "| ---: | ---: | --- |",
    ]
    lines += [f"| {r['pct']} | {r['samples']} | `{r['frame']}` |" for r in profile["top_own"]]
    lines += ["", "top inclusive:", "", "| incl % | frame |", "| ---: | --- |"]
    lines += [f"| {r['pct']} | `{r['frame']}` |" for r in profile["top_inclusive"][:20]]
    return "\n".join(lines)
