"""What a benchmark writes: one JSON document with every sample, and a markdown table.

Both go to bench/results/<stem>.{json,md}; the markdown starts with the
command that produced it. The line and table builders here are pure, so the
shapes the README quotes are tested without running a benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from bench.common import MiB, machine_info, sigterm_as_interrupt

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def new_result(
    benchmark: str, args: argparse.Namespace, notes: Sequence[str], **extra: Any
) -> dict[str, Any]:
    """The head of a result document; the run fills in the rest."""
    return {
        "benchmark": benchmark,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        **extra,
        "notes": list(notes),
        "loadavg_start": os.getloadavg(),
    }


def markdown_document(result: Mapping[str, Any], text: str, argv: Sequence[str]) -> str:
    name = result["benchmark"]
    command = f"python -m bench.{name} {' '.join(argv)}"
    return f"# bench.{name} ({result['started_at']})\n\n`{command}`\n\n{text}\n"


def write_results(
    result: Mapping[str, Any], text: str, results_dir: Path, stem: str, argv: Sequence[str]
) -> tuple[Path, Path]:
    """Write `<stem>.json` (every sample) and `<stem>.md` (the table); return both paths."""
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = results_dir / f"{stem}.json", results_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    md_path.write_text(markdown_document(result, text, argv))
    return json_path, md_path


# -- markdown pieces -----------------------------------------------------------------


def row(*cells: object) -> str:
    """`| a | b |`; an empty cell is `| |`, as the tables have always been written."""
    return "|" + "|".join(f" {c} " if str(c) else " " for c in cells) + "|"


def metric_row(metric: str, value: str, target: str = "", verdict: str = "") -> str:
    """A row of the `| metric | value | target | result |` table."""
    return row(metric, value, target, verdict)


METRIC_HEAD = ["| metric | value | target | result |", "| --- | ---: | ---: | --- |"]


def repo_line(result: Mapping[str, Any], *more: str) -> str:
    """What was cloned and how often: the first line of every clone benchmark's table."""
    repo, a = result["repo"], result["args"]
    parts = [
        f"gitedge {result['benchmark']}: {repo['bytes'] / MiB:.0f} MiB repo, {repo['files']} "
        f"files ({repo['objects']} objects, pack kept: >= 100 objects, transfer.unpackLimit "
        "at default)",
        f"{a['rounds']} interleaved clone rounds + 1 warm-up per path",
        f"clone{' --no-checkout' if a['no_checkout'] else ' with checkout'}",
        *more,
    ]
    return ", ".join(parts)


def machine_line(result: Mapping[str, Any], *software: str) -> str:
    m = result["machine"]
    tools = ", ".join([f"Python {m['python']}", m["git"], *software, f"Linux {m['kernel']}"])
    return (
        f"machine: nproc {m['nproc']} ({m['cpu_model']}), {m['mem_total_mb']} MiB RAM, {tools}; "
        f"load avg {result['loadavg_start'][0]:.2f} at start, "
        f"{result['loadavg_end'][0]:.2f} at end"
    )


def packs_line(summary: Mapping[str, Any]) -> str:
    return (
        f"every timed clone kept its pack: max {summary['clone_packs_max']} pack, "
        f"{summary['clone_loose_objects_max']} loose objects"
    )


def trees_line(trees: Mapping[str, Mapping[str, Any]]) -> str:
    """Which source tree each variant ran (only printed when a baseline tree ran too)."""
    parts = []
    for label, t in trees.items():
        dirty = " + uncommitted changes" if t.get("dirty") else ""
        parts.append(f"{label} = {t['root']} @ {t.get('commit', '?')[:9]}{dirty} ({t['python']})")
    return "source trees: " + "; ".join(parts)


class RoundSample(Protocol):
    @property
    def round(self) -> int: ...
    @property
    def path(self) -> str: ...
    @property
    def warmup(self) -> bool: ...


R = TypeVar("R", bound=RoundSample)


def round_table(
    samples: Sequence[R],
    variants: Sequence[str],
    cell: Callable[[R], str],
    extra: Sequence[tuple[str, Callable[[Mapping[str, R]], str]]] = (),
) -> list[str]:
    """One row per timed round: a cell per variant, then `extra` columns from the whole round."""
    heads = ["round", *variants, *(name for name, _ in extra)]
    lines = [row(*heads), row(*(["---"] * len(heads)))]
    for r in sorted({s.round for s in samples if not s.warmup}):
        by_variant = {s.path: s for s in samples if s.round == r and not s.warmup}
        cells = [cell(by_variant[v]) if v in by_variant else "" for v in variants]
        lines.append(row(r, *cells, *(column(by_variant) for _, column in extra)))
    return lines


def _fmt(value: Any, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format(value, fmt)
    return str(value)


def side_by_side_table(rows: Sequence[Mapping[str, Any]], baseline: str, this: str) -> list[str]:
    """`| metric | baseline | this tree | this / baseline |` from `runner.side_by_side` rows."""
    lines = [
        row("metric", f"baseline ({baseline})", f"this tree ({this})", "this / baseline"),
        "| --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            row(
                r["metric"],
                _fmt(r["baseline"], r["fmt"]),
                _fmt(r["this"], r["fmt"]),
                _fmt(r["ratio"], ".3f"),
            )
        )
    return lines


def run_main(
    argv: list[str] | None,
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    stem: Callable[[argparse.Namespace], str],
) -> int:
    """A benchmark's main: run, print the table, write results; 130 on Ctrl-C or SIGTERM."""
    sigterm_as_interrupt()
    args = parse_args(argv)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("interrupted; servers stopped and work dir removed", file=sys.stderr)
        return 130
    text = render(result)
    print(text)
    written = write_results(
        result, text, args.results_dir, stem(args), sys.argv[1:] if argv is None else argv
    )
    print(f"\nwrote {written[0]} and {written[1]}", file=sys.stderr)
    return 0
