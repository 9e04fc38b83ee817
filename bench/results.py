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

from bench.common import MiB, machine_info, sigterm_as_interrupt, verdict
from bench.runner import Timing

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


def metric_row(metric: str, value: str, target: str = "", result: str = "") -> str:
    """A row of the `| metric | value | target | result |` table."""
    return row(metric, value, target, result)


def target_row(summary: Mapping[str, Any], key: str, metric: str, value: str, target: str) -> str:
    """A metric with a target: its verdict is `summary["targets"][key]["pass"]`."""
    return metric_row(metric, value, target, verdict(summary["targets"][key]["pass"]))


METRIC_HEAD = ["| metric | value | target | result |", "| --- | ---: | ---: | --- |"]


def header(
    result: Mapping[str, Any],
    *,
    repo_more: Sequence[str] = (),
    about: Sequence[str] = (),
    software: Sequence[str] = (),
    packs_more: str = "",
    after: Sequence[str] = (),
) -> list[str]:
    """The lines above a clone benchmark's table: what was cloned how often, `about` the
    paths, the machine (and `software`), the packs kept, `after`, the source trees."""
    repo, a, m, s = result["repo"], result["args"], result["machine"], result["summary"]
    what = [
        f"gitedge {result['benchmark']}: {repo['bytes'] / MiB:.0f} MiB repo, {repo['files']} "
        f"files ({repo['objects']} objects, pack kept: >= 100 objects, transfer.unpackLimit "
        "at default)",
        f"{a['rounds']} interleaved clone rounds + 1 warm-up per path",
        f"clone{' --no-checkout' if a['no_checkout'] else ' with checkout'}",
        *repo_more,
    ]
    tools = ", ".join([f"Python {m['python']}", m["git"], *software, f"Linux {m['kernel']}"])
    machine = (
        f"machine: nproc {m['nproc']} ({m['cpu_model']}), {m['mem_total_mb']} MiB RAM, {tools}; "
        f"load avg {result['loadavg_start'][0]:.2f} at start, "
        f"{result['loadavg_end'][0]:.2f} at end"
    )
    packs = (
        f"every timed clone kept its pack: max {s['clone_packs_max']} pack, "
        f"{s['clone_loose_objects_max']} loose objects{packs_more}"
    )
    trees = [trees_line(result["trees"])] if len(result.get("trees", {})) > 1 else []
    return [", ".join(what), *about, machine, packs, *after, *trees]


def trees_line(trees: Mapping[str, Mapping[str, Any]]) -> str:
    """Which source tree each variant ran (only printed when a baseline tree ran too)."""
    parts = []
    for label, t in trees.items():
        dirty = " + uncommitted changes" if t.get("dirty") else ""
        parts.append(f"{label} = {t['root']} @ {t.get('commit', '?')[:9]}{dirty} ({t['python']})")
    return "source trees: " + "; ".join(parts)


class RoundSample(Timing, Protocol):
    @property
    def round(self) -> int: ...


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


def side_by_side_section(result: Mapping[str, Any], title: str, *more: str) -> list[str]:
    """`result["side_by_side"]` as a table under `title`, then this tree's edge clone
    against the baseline's, and `more` lines."""
    sbs = result["side_by_side"]
    commits = {label: t["commit"][:9] for label, t in result["trees"].items()}
    this = commits.pop("this")
    baseline = ", ".join(commits.values())
    e = sbs["edge_vs_baseline_edge"]
    lines = [
        title,
        "",
        row("metric", f"baseline ({baseline})", f"this tree ({this})", "this / baseline"),
        "| --- | ---: | ---: | ---: |",
    ]
    for r in sbs["rows"]:
        cells = (_fmt(r["baseline"], r["fmt"]), _fmt(r["this"], r["fmt"]), _fmt(r["ratio"], ".3f"))
        lines.append(row(r["metric"], *cells))
    edge = (
        f"edge clone, this tree / baseline: {e['ratio']:.3f} (ratio of medians), "
        f"{e['median_pair_ratio']:.3f} (median of per-round ratios)"
    )
    return [*lines, "", edge, *more]


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
