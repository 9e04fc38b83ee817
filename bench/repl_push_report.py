"""bench.repl_push's samples, their summary (medians per tree and repo, ratios) and table."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.clones import BASELINE
from bench.common import median
from bench.results import round_table, row, trees_line
from bench.runner import compare, timed

REPO_KEYS = ("plain", "w1", "w2")
RATIOS = (("w1", "plain"), ("w2", "plain"))


@dataclass
class PushSample:
    round: int
    path: str  # the variant: "w1", "baseline-w1", ...
    tree: str
    repo: str
    warmup: bool
    wall_s: float
    client_cpu_s: float
    sync_wait_s: float | None
    """From the push's return until every replica is in sync; None for an unreplicated repo."""
    generation: int | None
    edge_cpu_s: float
    node_cpu_s: dict[str, float] = field(default_factory=dict)
    """Per node, own + reaped children, from before the push to after the wait."""
    loadavg_1m: float = 0.0


def variant(label: str, repo: str) -> str:
    """The runner's variant name: `w1` for this tree, `baseline-w1` for the baseline."""
    return repo if label == "this" else f"{label}-{repo}"


def repo_summary(samples: Sequence[PushSample]) -> dict[str, Any]:
    """Medians of one (tree, repo)'s timed pushes."""
    walls = [s.wall_s for s in samples]
    waits = [s.sync_wait_s for s in samples if s.sync_wait_s is not None]
    nodes = sorted({node for s in samples for node in s.node_cpu_s})
    return {
        "pushes": len(samples),
        "median_push_s": median(walls),
        "min_push_s": min(walls),
        "max_push_s": max(walls),
        "median_sync_wait_s": median(waits) if waits else None,
        "max_sync_wait_s": max(waits) if waits else None,
        "median_client_cpu_s": median([s.client_cpu_s for s in samples]),
        "median_edge_cpu_s": median([s.edge_cpu_s for s in samples]),
        "median_node_cpu_s": {n: median([s.node_cpu_s[n] for s in samples]) for n in nodes},
    }


def summarise(result: dict[str, Any], samples: Sequence[PushSample], labels: list[str]) -> None:
    """`summary[label]`: per repo medians and the w1/plain, w2/plain ratios; with a
    baseline, `side_by_side[repo]`: this tree's pushes against the baseline's."""
    result["summary"] = {}
    for label in labels:
        repos = {r: repo_summary(timed(samples, variant(label, r))) for r in REPO_KEYS}
        ratios = {
            f"{a}/{b}": compare(samples, variant(label, a), variant(label, b)).as_dict()
            for a, b in RATIOS
        }
        result["summary"][label] = {"repos": repos, "ratios": ratios}
    if BASELINE in labels:
        result["side_by_side"] = {
            r: compare(samples, variant("this", r), variant(BASELINE, r)).as_dict()
            for r in REPO_KEYS
        }


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1000:.0f}"


def _columns(result: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, heading) of each tree, the baseline first."""
    commits = {label: t["commit"][:9] for label, t in result["trees"].items()}
    labels = [*(x for x in commits if x != "this"), "this"]
    names = {"this": "this tree"}
    return [(x, f"{names.get(x, x)} ({commits[x]})") for x in labels]


Cell = Callable[[Mapping[str, Any]], float | None]
"""One figure of a tree's per-repo summary (`summary[label]["repos"][repo]`)."""


def _table(
    result: Mapping[str, Any], first: Sequence[str], rows: Sequence[tuple[Sequence[str], str, Cell]]
) -> list[str]:
    """A column per tree: each row is its `first` cells, then `cell` of that tree's
    summary of `repo`, in ms."""
    columns = _columns(result)
    heads = [*first, *(h for _, h in columns)]
    lines = [row(*heads), row(*(["---"] * len(first) + ["---:"] * len(columns)))]
    for cells, repo, cell in rows:
        figures = (cell(result["summary"][label]["repos"][repo]) for label, _ in columns)
        lines.append(row(*cells, *(_ms(x) for x in figures)))
    return lines


def _node_cpu(node: str) -> Cell:
    return lambda x: x["median_node_cpu_s"][node]


def _replicas(repo: Mapping[str, Any]) -> str:
    w = repo["sync_replicas"]
    return f"{repo['replicas']}" + (f", W={w}" if w is not None else "")


def push_table(result: Mapping[str, Any]) -> list[str]:
    s, sbs = result["summary"], result.get("side_by_side")
    columns = _columns(result)
    heads = ["repo", "replicas", *(h for _, h in columns)]
    if sbs:
        heads += ["this / baseline (of medians)", "median of per-round ratios"]
    lines = [row(*heads), row(*(["---"] * 2 + ["---:"] * (len(heads) - 2)))]
    for repo in result["repos"]:
        key = repo["key"]
        cells = [_ms(s[label]["repos"][key]["median_push_s"]) for label, _ in columns]
        if sbs:
            cells += [f"{sbs[key]['ratio']:.3f}", f"{sbs[key]['median_pair_ratio']:.3f}"]
        lines.append(row(key, _replicas(repo), *cells))
    for name in s["this"]["ratios"]:
        ratios = [s[label]["ratios"][name] for label, _ in columns]
        cells = [f"{r['ratio']:.2f} (per round {r['median_pair_ratio']:.2f})" for r in ratios]
        lines.append(row(f"ratio {name}", "", *cells, *(["", ""] if sbs else [])))
    return lines


def render(result: dict[str, Any]) -> str:
    a, m, s = result["args"], result["machine"], result["summary"]
    replicated = [r for r in result["repos"] if r["replicas"] > 1]
    nodes = sorted(s["this"]["repos"]["plain"]["median_node_cpu_s"])
    out = [
        f"gitedge repl_push: {a['rounds']} interleaved rounds + 1 warm-up, each one `git push` "
        "of a one-line change per tree and repo through the fra edge over HTTPS; every repo "
        "homed on fra-1, the second replica of w1 and w2 on lax-1",
        f"machine: nproc {m['nproc']} ({m['cpu_model']}), {m['mem_total_mb']} MiB RAM, Python "
        f"{m['python']}, {m['git']}, Linux {m['kernel']}; load avg "
        f"{result['loadavg_start'][0]:.2f} at start, {result['loadavg_end'][0]:.2f} at end",
    ]
    if len(result["trees"]) > 1:
        out.append(trees_line(result["trees"]))
    out += ["", "### push latency, median, ms", "", *push_table(result), ""]
    waits: list[tuple[Sequence[str], str, Cell]] = []
    for r in replicated:
        waits.append(([r["key"], "median"], r["key"], lambda x: x["median_sync_wait_s"]))
        waits.append(([r["key"], "max"], r["key"], lambda x: x["max_sync_wait_s"]))
    out += ["### after the push returned, until every replica was in sync, ms", ""]
    out += [*_table(result, ["repo", ""], waits), ""]
    cpu: list[tuple[Sequence[str], str, Cell]] = []
    for r in result["repos"]:
        k = r["key"]
        cpu.append(([k, "edge"], k, lambda x: x["median_edge_cpu_s"]))
        cpu += [([k, n], k, _node_cpu(n)) for n in nodes]
    out += ["### CPU per push (the push and the sync wait), median, ms", ""]
    out += _table(result, ["repo", "process (own + children)"], cpu)
    variants = [variant(label, r["key"]) for r in result["repos"] for label, _ in _columns(result)]
    out += ["", "### every timed push, ms", ""]
    out += round_table(_samples(result), variants, lambda x: _ms(x.wall_s))
    out += ["", *(f"- {n}" for n in result["notes"])]
    return "\n".join(out)


def _samples(result: Mapping[str, Any]) -> list[PushSample]:
    return [PushSample(**x) for x in result["samples"]]
