"""bench.http_clone's summary (medians, ratios, targets) and its markdown table."""

from __future__ import annotations

from typing import Any

from bench.clones import BASELINE, CloneSample, clone_summary
from bench.common import MiB, verdict
from bench.profiling import render_profile
from bench.results import (
    METRIC_HEAD,
    machine_line,
    metric_row,
    packs_line,
    repo_line,
    round_table,
    side_by_side_table,
    trees_line,
)
from bench.runner import Metric, compare, side_by_side

TARGET_RATIO = 1.05
TARGET_EDGE_CPU_PER_100MB = 0.10
TARGET_PEAK_RSS_MB = 80.0

SIDE_BY_SIDE = (
    Metric("median clone, edge (HTTPS), s", "median_edge_s"),
    Metric("median clone, direct (plain HTTP to the tree's own node), s", "median_direct_s"),
    Metric("ratio edge/direct (of medians)", "ratio_edge_direct"),
    Metric("median of per-round ratios", "median_pair_ratio"),
    Metric("edge CPU per 100 MiB cloned, s", "edge_cpu_s_per_100mb"),
    Metric("edge CPU per 100 MiB pushed (the big push), s", "edge_cpu_s_per_100mb_pushed"),
    Metric("edge peak RSS during the big push, MiB", "edge_peak_rss_push_mb", ".1f"),
    Metric("edge RSS before that push, MiB", "edge_rss_before_push_mb", ".1f"),
    Metric("edge peak RSS during clones, MiB", "edge_peak_rss_mb_during_clones", ".1f"),
    Metric("node CPU per edge clone (own + git children), s", "node_cpu_s_edge", ".2f"),
    Metric("throughput through the edge, MiB/s", "edge_mb_per_s", ".0f"),
)


def tree_summary(
    samples: list[CloneSample], push: dict[str, Any] | None, edge: str, direct: str
) -> dict[str, Any]:
    """One tree's figures: its edge against its own node, and its big push."""
    out = clone_summary(samples, edge, direct)
    out.update(
        edge_cpu_s_per_100mb_pushed=(
            push["edge_cpu_s"] / (push["bytes"] / (100 * MiB)) if push else None
        ),
        edge_rss_before_push_mb=push["edge_rss_before_mb"] if push else None,
        edge_peak_rss_push_mb=push["edge_rss_peak_mb"] if push else None,
        push_mb=push["bytes"] / MiB if push else None,
    )
    ratio, cpu, peak = (
        out["ratio_edge_direct"],
        out["edge_cpu_s_per_100mb"],
        out["edge_peak_rss_push_mb"],
    )
    out["targets"] = {
        "ratio_edge_direct": {
            "target": f"<= {TARGET_RATIO}",
            "value": ratio,
            "pass": ratio <= TARGET_RATIO,
        },
        "edge_cpu_s_per_100mb": {
            "target": f"<= {TARGET_EDGE_CPU_PER_100MB}",
            "value": cpu,
            "pass": cpu <= TARGET_EDGE_CPU_PER_100MB,
        },
        "edge_peak_rss_push_mb": {
            "target": f"<= {TARGET_PEAK_RSS_MB}",
            "value": peak,
            "pass": None if peak is None else peak <= TARGET_PEAK_RSS_MB,
        },
    }
    return out


def summarise(result: dict[str, Any], samples: list[CloneSample]) -> None:
    """Fill in `summary` (and, with a baseline tree, its summary and `side_by_side`)."""
    result["summary"] = tree_summary(samples, result["big_push"], "edge", "direct")
    if BASELINE in result:
        base = result[BASELINE]
        prefix = f"{BASELINE}-"
        base["summary"] = tree_summary(
            samples, base["big_push"], f"{prefix}edge", f"{prefix}direct"
        )
        result["side_by_side"] = {
            "rows": side_by_side(SIDE_BY_SIDE, result["summary"], base["summary"]),
            "edge_vs_baseline_edge": compare(samples, "edge", f"{prefix}edge").as_dict(),
        }


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    t = s["targets"]
    repo = result["repo"]
    push = result.get("big_push")
    push_mb = f"{push['bytes'] / MiB:.0f} MiB" if push else "no"
    lines = [
        repo_line(result),
        machine_line(result),
        packs_line(s),
        *([trees_line(result["trees"])] if BASELINE in result else []),
        "",
        *METRIC_HEAD,
        metric_row("median clone, direct (plain HTTP to node)", f"{s['median_direct_s']:.3f} s"),
        metric_row("median clone, edge (HTTPS)", f"{s['median_edge_s']:.3f} s"),
        metric_row(
            "ratio edge/direct (of medians)",
            f"{s['ratio_edge_direct']:.3f}",
            f"<= {TARGET_RATIO}",
            verdict(t["ratio_edge_direct"]["pass"]),
        ),
        metric_row("median of per-round ratios", f"{s['median_pair_ratio']:.3f}"),
        metric_row("edge CPU per clone (median)", f"{s['edge_cpu_s_per_clone']:.3f} s"),
        metric_row(
            "edge CPU per 100 MiB cloned",
            f"{s['edge_cpu_s_per_100mb']:.3f} s",
            f"<= {TARGET_EDGE_CPU_PER_100MB} s",
            verdict(t["edge_cpu_s_per_100mb"]["pass"]),
        ),
    ]
    if push:
        lines += [
            metric_row(
                f"edge peak RSS during {push_mb} push",
                f"{s['edge_peak_rss_push_mb']:.1f} MiB",
                f"<= {TARGET_PEAK_RSS_MB:.0f} MiB",
                verdict(t["edge_peak_rss_push_mb"]["pass"]),
            ),
            metric_row("edge RSS before that push", f"{s['edge_rss_before_push_mb']:.1f} MiB"),
            metric_row(
                "edge CPU per 100 MiB pushed (during that push)",
                f"{s['edge_cpu_s_per_100mb_pushed']:.3f} s",
            ),
        ]
    lines += [
        metric_row(
            "edge CPU during a direct clone (idle noise)",
            f"{s['edge_cpu_s_during_direct_clone']:.3f} s",
        ),
        metric_row(
            "node CPU per clone (own + git children), direct / edge",
            f"{s['node_cpu_s_direct']:.2f} / {s['node_cpu_s_edge']:.2f} s",
        ),
        metric_row(
            "client git CPU per clone, direct / edge",
            f"{s['client_cpu_s_direct']:.2f} / {s['client_cpu_s_edge']:.2f} s",
        ),
        metric_row(
            "throughput, direct / edge",
            f"{s['direct_mb_per_s']:.0f} / {s['edge_mb_per_s']:.0f} MiB/s",
        ),
        metric_row("edge peak RSS during clones", f"{s['edge_peak_rss_mb_during_clones']:.1f} MiB"),
        metric_row(
            f"push {repo['bytes'] / MiB:.0f} MiB through edge", f"{result['push']['wall_s']:.2f} s"
        ),
    ]
    if push:
        lines.append(
            metric_row(
                f"push {push_mb} through edge",
                f"{push['wall_s']:.2f} s "
                f"({push['mb_per_s']:.0f} MiB/s, edge CPU {push['edge_cpu_s']:.2f} s)",
            )
        )
    if BASELINE in result:
        lines += ["", *render_side_by_side(result)]
    samples = [CloneSample(**x) for x in result["samples"]]
    variants = list(dict.fromkeys(x.path for x in samples))
    lines += ["", "per round (wall s / edge CPU s / node CPU s):", ""]
    lines += round_table(
        samples,
        variants,
        lambda x: (
            f"{x.wall_s:.3f} / {x.edge_cpu_s:.3f} / {x.node_cpu_s + x.node_children_cpu_s:.2f}"
        ),
    )
    if "profile" in result:
        lines += ["", render_profile(result["profile"])]
    return "\n".join(lines)


def render_side_by_side(result: dict[str, Any]) -> list[str]:
    """The old and the new code in one run: each tree's edge against its own node."""
    sbs, trees = result["side_by_side"], result["trees"]
    e = sbs["edge_vs_baseline_edge"]
    return [
        "side by side, the same run (each tree's edge and its own nodes; this / baseline < 1 "
        "is better for times, CPU and RSS):",
        "",
        *side_by_side_table(
            sbs["rows"], trees[BASELINE]["commit"][:9], trees["this"]["commit"][:9]
        ),
        "",
        f"edge clone, this tree / baseline: {e['ratio']:.3f} (ratio of medians), "
        f"{e['median_pair_ratio']:.3f} (median of per-round ratios)",
    ]
