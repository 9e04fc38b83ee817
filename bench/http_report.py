"""bench.http_clone's summary (medians, ratios, targets) and its markdown table."""

from __future__ import annotations

from typing import Any

from bench import results
from bench.clones import BASELINE, CloneSample, clone_summary, compare_trees, ratio_rows
from bench.common import MiB
from bench.profiling import render_profile
from bench.results import metric_row, target_row
from bench.runner import Metric

TARGET_RATIO = 1.05
TARGET_EDGE_CPU_PER_100MB = 0.10
TARGET_PEAK_RSS_MB = 80.0

# The big push's rows of the side-by-side table (after clones.CLONE_METRICS).
SIDE_BY_SIDE = (
    Metric("edge CPU per 100 MiB pushed (the big push), s", "edge_cpu_s_per_100mb_pushed"),
    Metric("edge peak RSS during the big push, MiB", "edge_peak_rss_push_mb", ".1f"),
    Metric("edge RSS before that push, MiB", "edge_rss_before_push_mb", ".1f"),
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
        base, edge, direct = result[BASELINE], f"{BASELINE}-edge", f"{BASELINE}-direct"
        base["summary"] = tree_summary(samples, base["big_push"], edge, direct)
        compare_trees(result, samples, SIDE_BY_SIDE)


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    repo = result["repo"]
    push = result.get("big_push")
    push_mb = f"{push['bytes'] / MiB:.0f} MiB" if push else "no"
    lines = [
        *results.header(result),
        "",
        *results.METRIC_HEAD,
        *ratio_rows(s, TARGET_RATIO, "plain HTTP to node", "HTTPS"),
        metric_row("edge CPU per clone (median)", f"{s['edge_cpu_s_per_clone']:.3f} s"),
        target_row(
            s,
            "edge_cpu_s_per_100mb",
            "edge CPU per 100 MiB cloned",
            f"{s['edge_cpu_s_per_100mb']:.3f} s",
            f"<= {TARGET_EDGE_CPU_PER_100MB} s",
        ),
    ]
    if push:
        lines += [
            target_row(
                s,
                "edge_peak_rss_push_mb",
                f"edge peak RSS during {push_mb} push",
                f"{s['edge_peak_rss_push_mb']:.1f} MiB",
                f"<= {TARGET_PEAK_RSS_MB:.0f} MiB",
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
        title = (
            "side by side, the same run (each tree's edge against its own node; this / baseline "
            "< 1 is better for times, CPU and RSS):"
        )
        lines += ["", *results.side_by_side_section(result, title)]
    samples = [CloneSample(**x) for x in result["samples"]]
    variants = list(dict.fromkeys(x.path for x in samples))
    lines += ["", "per round (wall s / edge CPU s / node CPU s):", ""]
    lines += results.round_table(
        samples,
        variants,
        lambda x: (
            f"{x.wall_s:.3f} / {x.edge_cpu_s:.3f} / {x.node_cpu_s + x.node_children_cpu_s:.2f}"
        ),
    )
    if "profile" in result:
        lines += ["", render_profile(result["profile"])]
    return "\n".join(lines)
