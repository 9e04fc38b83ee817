"""bench.load's summary (ratios, targets) and its markdown tables. Pure: no I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from bench.common import MiB, median, verdict
from bench.results import METRIC_HEAD, metric_row, row
from bench.runner import compare, timed

TARGET_RATIO = 1.25
TARGET_FAILURES = 0


class Burst(Protocol):
    """What the summary reads of a burst (bench.load.BurstSample)."""

    @property
    def path(self) -> str: ...
    @property
    def warmup(self) -> bool: ...
    @property
    def wall_s(self) -> float: ...
    @property
    def clones(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def clone_s(self) -> list[float]: ...
    @property
    def edge_cpu_s(self) -> float: ...
    @property
    def node_cpu_s(self) -> float: ...
    @property
    def client_cpu_s(self) -> float: ...
    @property
    def edge_peak_rss_mb(self) -> float: ...
    @property
    def loadavg(self) -> tuple[float, float, float]: ...
    @property
    def edge_healthz(self) -> dict[str, Any]: ...


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def path_summary(
    samples: Sequence[Burst], path: str, repo_bytes: int, nproc: int
) -> dict[str, Any]:
    """One path's timed bursts: median burst wall, clones/s, per-clone spread, failures."""
    mine = timed(samples, path)
    walls = [s.wall_s for s in mine]
    each = [c for s in mine for c in s.clone_s]
    per_burst = mine[0].clones if mine else 0
    wall = median(walls)
    return {
        "bursts": len(mine),
        "clones_per_burst": per_burst,
        "median_burst_s": wall,
        "burst_walls_s": walls,
        "clones_per_s": per_burst / wall if wall else math.nan,
        "mb_per_s": per_burst * repo_bytes / MiB / wall if wall else math.nan,
        "clone_median_s": median(each),
        "clone_p90_s": _quantile(each, 0.9),
        "clone_max_s": max(each, default=math.nan),
        "failures": sum(s.failures for s in mine),
        "edge_cpu_s_per_clone": median([s.edge_cpu_s / s.clones for s in mine]),
        "node_cpu_s_per_clone": median([s.node_cpu_s / s.clones for s in mine]),
        "client_cpu_s_per_clone": median([s.client_cpu_s / s.clones for s in mine]),
        # Of the machine's CPU seconds during the burst (nproc x wall), the share each
        # party used: the edge is one trio thread, so 1 / nproc is all of one core.
        "edge_cpu_share": median([s.edge_cpu_s / (s.wall_s * nproc) for s in mine]),
        "cpu_share_all": median(
            [(s.edge_cpu_s + s.node_cpu_s + s.client_cpu_s) / (s.wall_s * nproc) for s in mine]
        ),
        "edge_peak_rss_mb": max((s.edge_peak_rss_mb for s in mine), default=math.nan),
        "loadavg_1m": [s.loadavg[0] for s in mine],
        "edge_healthz_median_ms": median([s.edge_healthz["median_ms"] for s in mine]),
        "edge_healthz_max_ms": max((s.edge_healthz["max_ms"] for s in mine), default=math.nan),
        "edge_healthz_failures": sum(s.edge_healthz["failures"] for s in mine),
    }


def _target(target: str, value: float, ok: bool) -> dict[str, Any]:
    return {"target": target, "value": value, "pass": ok}


REFERENCES = {
    "direct": "plain HTTP straight from the edge's node: git's client does no TLS",
    "direct-tls": "HTTPS straight from a node serving TLS: git's client does the same TLS "
    "work as through the edge",
}
"""The references the edge's clones are compared with, and what each is."""


def summarise(result: dict[str, Any], samples: Sequence[Burst]) -> None:
    """`result["summary"]`: each path, edge / direct and edge / direct-tls (and the other
    paths / direct), the targets."""
    paths = list(dict.fromkeys(s.path for s in samples))
    repo_bytes, nproc = int(result["repo"]["bytes"]), int(result["machine"]["nproc"] or 1)
    each = {p: path_summary(samples, p, repo_bytes, nproc) for p in paths}
    summary: dict[str, Any] = {"paths": each}
    for path in paths:
        if path != "direct":
            summary[f"ratio_{path}_direct"] = compare(samples, path, "direct").as_dict()
    if "direct-tls" in paths:
        summary["ratio_edge_direct-tls"] = compare(samples, "edge", "direct-tls").as_dict()
    failures = summary["paths"]["edge"]["failures"]
    summary["targets"] = {
        f"ratio_edge_{ref}": _target(f"<= {TARGET_RATIO}", r, r <= TARGET_RATIO)
        for ref in REFERENCES
        if (r := summary.get(f"ratio_edge_{ref}", {}).get("ratio")) is not None
    }
    summary["targets"]["edge_failures"] = _target(
        f"== {TARGET_FAILURES}", failures, failures == TARGET_FAILURES
    )
    result["summary"] = summary


# -- markdown --------------------------------------------------------------------------------


def _load(avg: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in avg)


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def machine_line(result: dict[str, Any]) -> str:
    m = result["machine"]
    return (
        f"machine: nproc {m['nproc']} ({m['cpu_model']}), {m['mem_total_mb']} MiB RAM, "
        f"Python {m['python']}, {m['git']}, Linux {m['kernel']}; load avg (1/5/15 min) "
        f"{_load(result['loadavg_start'])} at start, {_load(result['loadavg_end'])} at end; "
        f"RLIMIT_NOFILE bench {result['rlimit_nofile']['soft']}, "
        f"edge {result['edge_rlimit_nofile'][0]}"
    )


def burst_section(result: dict[str, Any]) -> list[str]:
    s, a, repo = result["summary"], result["args"], result["repo"]
    t = s["targets"]
    lines = [
        f"## {a['clones']} concurrent clones, {a['rounds']} bursts per path",
        "",
        f"{repo['bytes'] / 1024:.0f} KiB repo ({repo['files']} files), clone with checkout"
        + (f" under `nice -n {a['client_nice']}`" if a.get("client_nice") else "")
        + "; "
        "direct = plain HTTP to the node, direct-tls = HTTPS to a node serving TLS itself, "
        "edge = HTTPS through the edge, edge-ssh = SSH "
        "through the edge (OpenSSH client); each burst after a warm-up burst of 3. "
        "`GET /healthz` meanwhile: one kept connection to the edge, every 0.1 s during the "
        "burst; during a direct burst the edge is idle and it measures the machine alone.",
        "",
        row("path", "median burst, s", "clones/s", "MiB/s", "clone median / p90 / max, s",
            "failures", "CPU per clone, s: edge / node / clients",
            "CPU used, edge / all (of nproc x wall)", "edge peak RSS, MiB",
            "edge GET /healthz meanwhile, median / max ms", "load 1m per burst"),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]  # fmt: skip
    for path, p in s["paths"].items():
        lines.append(
            row(
                path,
                f"{p['median_burst_s']:.2f}",
                f"{p['clones_per_s']:.1f}",
                f"{p['mb_per_s']:.1f}",
                f"{p['clone_median_s']:.2f} / {p['clone_p90_s']:.2f} / {p['clone_max_s']:.2f}",
                p["failures"],
                f"{p['edge_cpu_s_per_clone']:.3f} / {p['node_cpu_s_per_clone']:.3f} / "
                f"{p['client_cpu_s_per_clone']:.3f}",
                f"{p['edge_cpu_share']:.0%} / {p['cpu_share_all']:.0%}",
                f"{p['edge_peak_rss_mb']:.0f}",
                f"{_ms(p['edge_healthz_median_ms'])} / {_ms(p['edge_healthz_max_ms'])}"
                + (f" ({p['edge_healthz_failures']} failed)" if p["edge_healthz_failures"] else ""),
                ", ".join(f"{x:.1f}" for x in p["loadavg_1m"]),
            )
        )
    lines += ["", *reference_table(s), "", *METRIC_HEAD]
    r = s["ratio_edge_direct"]
    lines += [
        metric_row("burst wall, edge (HTTPS) / direct (ratio of medians)", f"{r['ratio']:.3f}",
                   t["ratio_edge_direct"]["target"], verdict(t["ratio_edge_direct"]["pass"])),
        metric_row("median of per-round ratios", f"{r['median_pair_ratio']:.3f}"),
    ]  # fmt: skip
    if "ratio_edge_direct-tls" in s:
        rt, tt = s["ratio_edge_direct-tls"], t["ratio_edge_direct-tls"]
        lines += [
            metric_row("burst wall, edge (HTTPS) / direct-tls (ratio of medians)",
                       f"{rt['ratio']:.3f}", tt["target"], verdict(tt["pass"])),
            metric_row("median of per-round ratios", f"{rt['median_pair_ratio']:.3f}"),
            metric_row("burst wall, direct-tls / direct: git's client TLS",
                       f"{s['ratio_direct-tls_direct']['ratio']:.3f}"),
        ]  # fmt: skip
    lines += [
        metric_row("failed edge clones (all timed bursts)", str(t["edge_failures"]["value"]),
                   t["edge_failures"]["target"], verdict(t["edge_failures"]["pass"])),
    ]  # fmt: skip
    if "ratio_edge-ssh_direct" in s:
        ssh = s["ratio_edge-ssh_direct"]
        lines.append(
            metric_row(
                "burst wall, edge-ssh / direct HTTP (ratio of medians)", f"{ssh['ratio']:.3f}"
            )
        )
        lines.append(metric_row("failed edge-ssh clones", str(s["paths"]["edge-ssh"]["failures"])))
    return lines


def reference_table(s: dict[str, Any]) -> list[str]:
    """edge / each reference side by side, with the machine's load during both paths'
    bursts and the clients' CPU per clone (what differs most between the references)."""
    lines = [
        row("edge (HTTPS) / reference", "ratio of median bursts", "median of per-round ratios",
            "target", "result", "load 1m per burst: edge; reference",
            "client CPU per clone, s: edge / reference", "the reference"),
        "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]  # fmt: skip
    edge = s["paths"]["edge"]
    for ref, what in REFERENCES.items():
        if f"ratio_edge_{ref}" not in s:
            continue
        r, t, p = s[f"ratio_edge_{ref}"], s["targets"][f"ratio_edge_{ref}"], s["paths"][ref]
        lines.append(
            row(
                f"edge / {ref}",
                f"{r['ratio']:.3f}",
                f"{r['median_pair_ratio']:.3f}",
                t["target"],
                verdict(t["pass"]),
                ", ".join(f"{x:.1f}" for x in edge["loadavg_1m"])
                + "; "
                + ", ".join(f"{x:.1f}" for x in p["loadavg_1m"]),
                f"{edge['client_cpu_s_per_clone']:.3f} / {p['client_cpu_s_per_clone']:.3f}",
                what,
            )
        )
    return lines


PROBES = (
    ("healthz_new_connection", "GET /healthz, new TLS connection"),
    ("healthz_kept_connection", "GET /healthz, kept connection"),
    ("ls_remote", "git ls-remote (HTTPS)"),
    ("clone", "git clone of the small repo (HTTPS)"),
    ("ls_remote_direct", "for reference: git ls-remote, direct"),
    ("clone_direct", "for reference: git clone, direct"),
)


def idle_section(idle: dict[str, Any]) -> list[str]:
    before, during, _ = idle["states"]
    peak, per_conn = idle["edge_vmhwm_mb"], idle["edge_rss_per_conn_kb"]
    states = [st["state"] for st in idle["states"]]
    lines = [
        f"## {idle['asked']} idle keep-alive connections",
        "",
        f"held {idle['held']} of {idle['asked']} (opened in {idle['open_s']:.1f} s, "
        f"{idle['opened_per_s'] or 0:.0f}/s, each with one `GET /healthz`; "
        f"{idle['open_failures']} failed to open); {idle['answered_again']} answered a second "
        "`GET /healthz` after the probes",
        "",
        *METRIC_HEAD,
        metric_row("edge VmRSS, no idle connections, MiB", f"{before['edge_mem']['VmRSS']:.1f}"),
        metric_row("edge VmRSS, connections held, MiB", f"{idle['edge_mem_held']['VmRSS']:.1f}"),
        metric_row("edge VmHWM (peak) while held, MiB", _opt(peak)),
        metric_row("edge RSS per held connection, KiB", _opt(per_conn)),
        metric_row("edge file descriptors, held", str(idle["edge_fds_held"])),
        "",
        row("probe (median / p90 ms)", *states, "held / none"),
        "| --- | ---: | ---: | ---: | ---: |",
    ]  # fmt: skip
    for key, label in PROBES:
        cells = [f"{_ms(st[key]['median_ms'])} / {_ms(st[key]['p90_ms'])}" for st in idle["states"]]
        base = before[key]["median_ms"]
        ratio = during[key]["median_ms"] / base if base else math.nan
        lines.append(row(label, *cells, f"{ratio:.2f}"))
    failures = sum(st[k]["failures"] for st in idle["states"] for k, _ in PROBES)
    lines += [
        row("load avg 1/5/15", *(_load(st["loadavg"]) for st in idle["states"]), ""),
        "",
        f"probe failures: {failures}",
    ]
    return lines


def handshake_section(hs: dict[str, Any]) -> list[str]:
    lat, peak, ok = hs["latency"], hs["edge_vmhwm_mb"], max(1, hs["ok"])
    rss = f"{hs['edge_rss_before_mb']:.1f} / {hs['edge_rss_after_mb']:.1f}"
    return [
        f"## {hs['handshakes']} SSH handshakes, {hs['concurrency']} at a time",
        "",
        "asyncssh client in the bench process: TCP connect, key exchange, public-key auth, close.",
        "",
        *METRIC_HEAD,
        metric_row("handshakes per second", f"{hs['per_s']:.1f}"),
        metric_row("failures", str(hs["failures"]), "== 0", verdict(hs["failures"] == 0)),
        metric_row("handshake median / p90 / max, ms",
                   f"{_ms(lat['median_ms'])} / {_ms(lat['p90_ms'])} / {_ms(lat['max_ms'])}"),
        metric_row("edge CPU per handshake, ms", f"{1000 * hs['edge_cpu_s'] / ok:.1f}"),
        # The edge is one trio thread: 100 % is all of one core.
        metric_row("edge CPU busy, share of one core", f"{hs['edge_cpu_s'] / hs['wall_s']:.0%}"),
        metric_row("client CPU per handshake, ms", f"{1000 * hs['client_cpu_s'] / ok:.1f}"),
        metric_row("edge VmRSS before / after, MiB", rss),
        metric_row("edge peak RSS (VmHWM), MiB", _opt(peak)),
        metric_row("load avg 1/5/15 after", _load(hs["loadavg"])),
    ]  # fmt: skip


def render(result: dict[str, Any]) -> str:
    lines = [
        f"gitedge load benchmark ({'quick' if result['args']['quick'] else 'full'} profile)",
        "",
    ]
    lines += [machine_line(result), "", *burst_section(result)]
    if "idle" in result:
        lines += ["", *idle_section(result["idle"])]
    if "handshakes" in result:
        lines += ["", *handshake_section(result["handshakes"])]
    errors = [e for s in result["burst_samples"] for e in s["errors"]]
    if errors:
        lines += [
            "",
            "clone errors (first of each kind):",
            *(f"- `{e}`" for e in sorted(set(errors))[:10]),
        ]
    if result.get("notes"):
        lines += ["", "notes:", "", *(f"- {n}" for n in result["notes"])]
    problems = result.get("edge_log_problems", {})
    if problems.get("count"):
        lines += ["", f"edge log: {problems['count']} warning/error/4xx/5xx lines (401s left out), "
                  "the first:", "", "```", *problems["first"][:10], "```"]  # fmt: skip
    return "\n".join(lines)
