"""bench.ssh_clone's summary (clones, ls-remote, edge counters) and its markdown table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bench import results
from bench.clones import BASELINE, CloneSample, clone_summary, compare_trees, ratio_rows
from bench.common import MiB, median, verdict
from bench.profiling import render_profile
from bench.results import metric_row, target_row
from bench.runner import Metric, compare, timed

TARGET_RATIO = 1.0
TARGET_ADDED_LS_REMOTE_MS = 5.0
# For scale (issue 3, measured on this kind of machine, not in this run).
JUMP_HOST_CLONE_RATIO = 1.28
JUMP_HOST_LS_REMOTE_RATIO = 2.1
DIRECT_LS_REMOTE_MS_ANCHOR = 214.0
# Edge counters of new edge->node connections: the SSH pool's, and the HTTP
# pool's (which carries SSH sessions once they ride on the node HTTP pool).
CONNECT_COUNTERS = ("ssh_node_connects", "node_connects")

# The SSH rows of the side-by-side table (after clones.CLONE_METRICS).
SIDE_BY_SIDE = (
    Metric("median ls-remote, edge, ms", "ls_remote_median_edge_ms", ".1f"),
    Metric("ls-remote added latency (edge - direct medians), ms", "ls_remote_added_ms", "+.1f"),
    Metric("edge's own time per ls-remote session, ms", "ls_remote_edge_session_ms", ".1f"),
    Metric("edge CPU per ls-remote, ms", "ls_remote_edge_cpu_ms", ".1f"),
    Metric("server CPU per clone (edge + node + git), s", "server_cpu_s_edge", ".2f"),
    Metric("new edge->node connections in the timed runs", "node_connects_during_timed", "d"),
)


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


def stats_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: after[k] - before[k]
        for k in after
        if isinstance(after[k], int | float)
        and not isinstance(after[k], bool)
        and isinstance(before.get(k), int | float)
    }


def tree_summary(
    clones: list[CloneSample],
    ls: list[LsRemoteSample],
    stats: Mapping[str, Mapping[str, Any]],
    edge_sessions: list[float],
    edge: str,
) -> dict[str, Any]:
    """One tree's edge (variant `edge`) against the OpenSSH sshd (`direct`)."""
    out = clone_summary(clones, edge, "direct")
    e, d = timed(clones, edge), timed(clones, "direct")
    main_ls = [s for s in ls if s.series == "default"]
    ls_c = compare(main_ls, edge, "direct")
    ls_direct, ls_edge = ls_c.median_reference_s * 1000, ls_c.median_variant_s * 1000
    added_ms = ls_edge - ls_direct
    pairs = zip(timed(main_ls, "direct"), timed(main_ls, edge), strict=True)
    delta = stats_delta(stats["before_timed"], stats["after_timed"])
    connects = [delta[k] for k in CONNECT_COUNTERS if k in delta]
    out.update(
        ls_remote_median_direct_ms=ls_direct,
        ls_remote_median_edge_ms=ls_edge,
        ls_remote_min_direct_ms=1000 * min(s.wall_s for s in timed(main_ls, "direct")),
        ls_remote_min_edge_ms=1000 * min(s.wall_s for s in timed(main_ls, edge)),
        ls_remote_added_ms=added_ms,
        ls_remote_median_pair_added_ms=median([1000 * (b.wall_s - a.wall_s) for a, b in pairs]),
        ls_remote_ratio_edge_direct=ls_c.ratio,
        ls_remote_edge_session_ms=1000 * median(edge_sessions),
        ls_remote_edge_cpu_ms=1000 * median([s.edge_cpu_s for s in timed(main_ls, edge)]),
        sshd_cpu_s_direct=median([s.other_cpu_s["sshd"] for s in d]),
        server_cpu_s_direct=median([s.other_cpu_s["sshd"] for s in d]),
        server_cpu_s_edge=median([s.edge_cpu_s + s.node_cpu_s + s.node_children_cpu_s for s in e]),
        edge_stats_delta_timed=delta,
        ssh_node_connects_during_timed=delta.get("ssh_node_connects"),
        ssh_node_reuses_during_timed=delta.get("ssh_node_reuses"),
        node_connects_during_timed=sum(connects) if connects else None,
        node_reuses_during_timed=delta.get("node_reuses"),
    )
    same = [s for s in ls if s.series == "same-kex"]
    if timed(same, edge):
        c = compare(same, edge, "direct")
        out["same_kex_ls_remote"] = {
            "median_direct_ms": 1000 * c.median_reference_s,
            "median_edge_ms": 1000 * c.median_variant_s,
            "added_ms": 1000 * (c.median_variant_s - c.median_reference_s),
            "ratio_edge_direct": c.ratio,
        }
    ratio, connected = out["ratio_edge_direct"], out["node_connects_during_timed"]
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
            "target": " + ".join(f"{k} += 0" for k in CONNECT_COUNTERS),
            "value": connected,
            "pass": None if connected is None else connected == 0,
        },
    }
    return out


def summarise(result: dict[str, Any], clones: list[CloneSample], ls: list[LsRemoteSample]) -> None:
    """Fill in `summary` (and, with a baseline tree, its summary and `side_by_side`)."""
    sessions = result["edge_ls_remote_session_s"]
    result["summary"] = tree_summary(clones, ls, result["edge_stats"], sessions, "edge")
    if BASELINE in result:
        base, name = result[BASELINE], f"{BASELINE}-edge"
        sessions = base["edge_ls_remote_session_s"]
        base["summary"] = tree_summary(clones, ls, base["edge_stats"], sessions, name)
        compare_trees(result, clones, SIDE_BY_SIDE)
        default = [x for x in ls if x.series == "default"]
        result["side_by_side"]["ls_remote_edge_vs_baseline_edge"] = compare(
            default, "edge", name
        ).as_dict()


def _header(result: dict[str, Any]) -> list[str]:
    a = result["args"]
    proto = result.get("protocol_v2", {})
    options = " ".join(a.get("ssh_option") or [])
    return results.header(
        result,
        repo_more=[f"{a['ls_remotes']} interleaved ls-remotes + 1 warm-up per path"],
        about=[
            "edge: client -SSH-> edge (asyncssh on trio-asyncio) -> node fra-1; direct: client "
            "-SSH-> OpenSSH sshd (ForceCommand git-shell, login shell reads no rc file) on the "
            "same bare repo directory",
            *([f"client ssh options on both paths: {options}"] if options else []),
        ],
        software=[result["openssh"]],
        packs_more="; protocol v2 seen: " + ", ".join(f"{k} {v}" for k, v in proto.items()),
        after=[
            f"{path} negotiated: {n.get('server', '?')}; kex {n.get('kex', '?')}, "
            f"host key {n.get('host_key', '?')}, cipher {n.get('cipher_s2c', '?')}"
            for path, n in result.get("negotiated", {}).items()
        ],
    )


def _metrics(result: dict[str, Any]) -> list[str]:
    s = result["summary"]
    lines = [
        *results.METRIC_HEAD,
        *ratio_rows(s, TARGET_RATIO, "OpenSSH sshd", "SSH -> edge -> node"),
        metric_row(
            "for scale: `ssh -J` via an OpenSSH jump host (issue 3, not this run)",
            f"{JUMP_HOST_CLONE_RATIO:.2f}",
        ),
        metric_row("median ls-remote, direct", f"{s['ls_remote_median_direct_ms']:.1f} ms"),
        metric_row("median ls-remote, edge", f"{s['ls_remote_median_edge_ms']:.1f} ms"),
        target_row(
            s,
            "ls_remote_added_ms",
            "ls-remote added latency (edge - direct medians)",
            f"{s['ls_remote_added_ms']:+.1f} ms",
            f"<= {TARGET_ADDED_LS_REMOTE_MS:.0f} ms",
        ),
        metric_row(
            "median of per-pair ls-remote differences",
            f"{s['ls_remote_median_pair_added_ms']:+.1f} ms",
        ),
        metric_row("ls-remote ratio edge/direct", f"{s['ls_remote_ratio_edge_direct']:.3f}"),
        metric_row(
            "edge's own time per ls-remote session (access log: auth done -> exit sent, "
            "incl. channel open and git on the node; median)",
            f"{s['ls_remote_edge_session_ms']:.1f} ms",
        ),
    ]
    if same := s.get("same_kex_ls_remote"):
        kex = result["negotiated"]["edge"].get("kex", "?")
        lines += [
            metric_row(
                f"ls-remote, client forcing `{kex}` on both paths: direct / edge",
                f"{same['median_direct_ms']:.1f} / {same['median_edge_ms']:.1f} ms",
            ),
            metric_row(
                "ls-remote added latency, same kex",
                f"{same['added_ms']:+.1f} ms",
                f"(<= {TARGET_ADDED_LS_REMOTE_MS:.0f} ms)",
                verdict(same["added_ms"] <= TARGET_ADDED_LS_REMOTE_MS),
            ),
        ]
    push = result["push"]
    lines += [
        metric_row(
            "for scale: `ssh -J` ls-remote ratio; direct OpenSSH ls-remote (issue 3)",
            f"{JUMP_HOST_LS_REMOTE_RATIO}; ~{DIRECT_LS_REMOTE_MS_ANCHOR:.0f} ms",
        ),
        target_row(
            s,
            "no_new_node_connection_when_warm",
            "new edge->node connections during timed runs (SSH pool / HTTP pool)",
            f"{s['ssh_node_connects_during_timed']} / {s.get('node_connects_during_timed')}"
            f" (SSH reuses +{s['ssh_node_reuses_during_timed']}, HTTP reuses "
            f"+{s.get('node_reuses_during_timed')})",
            "0",
        ),
        metric_row(
            "edge CPU per clone (median; of it in the kernel)",
            f"{s['edge_cpu_s_per_clone']:.3f} s ({s['edge_system_cpu_s_per_clone']:.2f} s)",
        ),
        metric_row(
            "edge CPU per ls-remote (median, no settle)", f"{s['ls_remote_edge_cpu_ms']:.1f} ms"
        ),
        metric_row(
            "server CPU per clone: direct sshd+git / edge+node(+git)",
            f"{s['server_cpu_s_direct']:.2f} / {s['server_cpu_s_edge']:.2f} s",
        ),
        metric_row(
            "node CPU per clone (own + git children), edge path",
            f"{s['node_cpu_s_edge']:.2f} s (own {s['node_own_cpu_s_edge']:.2f}, of it in the "
            f"kernel {s['node_own_system_cpu_s_edge']:.2f})",
        ),
        metric_row(
            "client git+ssh CPU per clone, direct / edge",
            f"{s['client_cpu_s_direct']:.2f} / {s['client_cpu_s_edge']:.2f} s",
        ),
        metric_row(
            "throughput, direct / edge",
            f"{s['direct_mb_per_s']:.0f} / {s['edge_mb_per_s']:.0f} MiB/s",
        ),
        metric_row(
            f"edge peak RSS during clones (at start {result['edge_rss_mb_at_start']:.1f}, "
            f"after the push {push['edge_rss_mb_after']:.1f}, before the first clone "
            f"{s['edge_rss_mb_before_first_clone']:.1f} MiB; most one clone added "
            f"{s['edge_rss_growth_mb_per_clone_max']:.1f} MiB)",
            f"{s['edge_peak_rss_mb_during_clones']:.1f} MiB",
        ),
        metric_row(
            "edge CPU during a direct clone (idle noise)",
            f"{s['edge_cpu_s_during_direct_clone']:.3f} s",
        ),
        metric_row(
            f"push {result['repo']['bytes'] / MiB:.0f} MiB through edge ({push['via']})",
            f"{push['wall_s']:.2f} s",
        ),
    ]
    return lines


def _server_cpu(x: CloneSample) -> float:
    if "sshd" in x.other_cpu_s:
        return x.other_cpu_s["sshd"]
    return x.edge_cpu_s + x.node_cpu_s + x.node_children_cpu_s


def render(result: dict[str, Any]) -> str:
    lines = [*_header(result), "", *_metrics(result)]
    if BASELINE in result:
        ls = result["side_by_side"]["ls_remote_edge_vs_baseline_edge"]
        title = (
            "side by side, the same run (each tree's edge and nodes, the same OpenSSH direct; "
            "this / baseline < 1 is better for times, CPU and RSS):"
        )
        more = f"ls-remote, this tree / baseline: {ls['ratio']:.3f} / {ls['median_pair_ratio']:.3f}"
        lines += ["", *results.side_by_side_section(result, title, more)]
    samples = [CloneSample(**x) for x in result["clone_samples"]]
    variants = list(dict.fromkeys(x.path for x in samples))
    edges = [v for v in variants if v != "direct"]
    lines += [
        "",
        "per clone round (wall s / edge CPU s / server CPU s; machine load when each ended; "
        "the edge's and node's voluntary context switches during the edge clone):",
        "",
        *results.round_table(
            samples,
            variants,
            lambda x: f"{x.wall_s:.3f} / {x.edge_cpu_s:.3f} / {_server_cpu(x):.2f}",
            [
                ("load 1m", lambda r: " / ".join(f"{r[v].loadavg_1m:.1f}" for v in variants)),
                (
                    "edge / node ctx switches",
                    lambda r: "; ".join(
                        f"{r[v].edge_voluntary_ctx} / {r[v].node_voluntary_ctx}" for v in edges
                    ),
                ),
            ],
        ),
        "",
    ]
    ls = [LsRemoteSample(**x) for x in result["ls_remote_samples"] if not x["warmup"]]
    for series in ("default", "same-kex"):
        picked = [x for x in ls if x.series == series]
        if picked:
            runs = (
                f"{v} " + " ".join(f"{1000 * x.wall_s:.0f}" for x in picked if x.path == v)
                for v in variants
            )
            lines.append(f"ls-remote ms ({series}), in run order: " + "; ".join(runs))
    for profile in result.get("profiles", []):
        lines += ["", render_profile(profile)]
    return "\n".join(lines)
