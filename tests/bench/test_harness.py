"""The benchmark harness's pure parts: interleaving, medians and ratios, the tables, the files."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from bench import http_report, results, ssh_report
from bench.clones import BASELINE, CloneSample, clone_summary
from bench.common import MiB
from bench.runner import Metric, compare, interleave, side_by_side
from bench.ssh_report import LsRemoteSample
from bench.tree_devnet import load_start_devnet


def clone(
    path: str, round_no: int, wall_s: float, edge_cpu_s: float = 0.0, **kw: Any
) -> CloneSample:
    fields: dict[str, Any] = {
        "client_cpu_s": 0.5,
        "edge_children_cpu_s": 0.0,
        "node_cpu_s": 0.1,
        "node_children_cpu_s": 0.2,
        "edge_rss_before_mb": 50.0,
        "edge_peak_rss_mb": 55.0,
        "pack_bytes": 50 * MiB,
        "packs": 1,
        "loose_objects": 0,
        **kw,
    }
    return CloneSample(round_no, path, round_no == 0, wall_s, edge_cpu_s=edge_cpu_s, **fields)


# -- interleave ---------------------------------------------------------------------


def test_interleave_runs_a_warmup_round_then_every_variant_once_per_round() -> None:
    calls: list[tuple[str, int, bool]] = []
    marks: list[int] = []

    def run_one(variant: str, round_no: int, warmup: bool) -> tuple[str, int, bool]:
        calls.append((variant, round_no, warmup))
        return calls[-1]

    samples = interleave(["a", "b", "c"], 2, run_one, after_warmup=lambda: marks.append(len(calls)))
    assert samples == calls == [
        ("a", 0, True), ("b", 0, True), ("c", 0, True),
        ("a", 1, False), ("b", 1, False), ("c", 1, False),
        ("a", 2, False), ("b", 2, False), ("c", 2, False),
    ]  # fmt: skip
    assert marks == [3]  # once, right after the warm-up round


def test_interleave_without_warmup_starts_at_round_one() -> None:
    samples = interleave(["a", "b"], 2, lambda v, r, w: (v, r, w), warmup=False)
    assert samples == [("a", 1, False), ("b", 1, False), ("a", 2, False), ("b", 2, False)]


# -- compare and side_by_side -------------------------------------------------------


def test_compare_uses_timed_samples_only_and_pairs_rounds() -> None:
    samples = [
        clone("direct", 0, 100.0),  # warm-ups must not count
        clone("edge", 0, 100.0),
        clone("direct", 1, 1.0),
        clone("edge", 1, 2.0),
        clone("direct", 2, 2.0),
        clone("edge", 2, 3.0),
        clone("direct", 3, 4.0),
        clone("edge", 3, 4.0),
    ]
    c = compare(samples, "edge", "direct")
    assert (c.median_variant_s, c.median_reference_s) == (3.0, 2.0)
    assert c.ratio == 1.5
    assert c.pair_ratios == [2.0, 1.5, 1.0]
    assert c.median_pair_ratio == 1.5
    assert c.as_dict()["ratio"] == 1.5


def test_compare_refuses_a_variant_with_no_timed_samples() -> None:
    with pytest.raises(ValueError, match="baseline-edge"):
        compare([clone("edge", 1, 1.0)], "baseline-edge", "edge")


def test_side_by_side_gives_a_ratio_only_for_two_numbers() -> None:
    metrics = [Metric("t", "t"), Metric("none", "none"), Metric("zero", "zero"), Metric("b", "b")]
    this = {"t": 3.0, "none": None, "zero": 1.0, "b": True}
    baseline = {"t": 2.0, "none": 1.0, "zero": 0, "b": True}
    rows = {r["key"]: r for r in side_by_side(metrics, this, baseline)}
    assert rows["t"]["ratio"] == 1.5
    assert (rows["t"]["this"], rows["t"]["baseline"]) == (3.0, 2.0)
    assert rows["none"]["ratio"] is None
    assert rows["zero"]["ratio"] is None  # no division by zero
    assert rows["b"]["ratio"] is None  # a bool is not a measurement


# -- clone_summary ------------------------------------------------------------------


def test_clone_summary_scales_edge_cpu_to_100_mib_and_keeps_its_own_variants() -> None:
    samples = [
        clone("direct", 0, 9.0),
        clone("edge", 0, 9.0, edge_peak_rss_mb=99.0),  # warm-up RSS still counts as a peak
        clone("baseline-edge", 0, 9.0),
        clone("direct", 1, 1.0),
        clone("edge", 1, 1.2, edge_cpu_s=0.1, edge_system_cpu_s=0.04, node_system_cpu_s=0.03),
        clone("baseline-edge", 1, 5.0, edge_cpu_s=5.0, node_system_cpu_s=0.07),
    ]
    s = clone_summary(samples, "edge", "direct")
    # The kernel's part of each, from the timed edge clones only.
    assert s["edge_system_cpu_s_per_clone"] == pytest.approx(0.04)
    assert s["node_own_system_cpu_s_edge"] == pytest.approx(0.03)
    assert s["ratio_edge_direct"] == pytest.approx(1.2)
    assert s["edge_cpu_s_per_clone"] == pytest.approx(0.1)
    assert s["edge_cpu_s_per_100mb"] == pytest.approx(0.2)  # 0.1 s for 50 MiB
    assert s["node_cpu_s_edge"] == pytest.approx(0.3)
    assert s["edge_mb_per_s"] == pytest.approx(50 / 1.2)
    b = clone_summary(samples, "baseline-edge", "direct")
    assert b["ratio_edge_direct"] == pytest.approx(5.0)
    assert b["edge_cpu_s_per_100mb"] == pytest.approx(10.0)
    assert b["node_own_system_cpu_s_edge"] == pytest.approx(0.07)


# -- markdown pieces and files ------------------------------------------------------


def test_row_writes_empty_cells_as_the_tables_always_had_them() -> None:
    assert results.row("a", "1 s", "", "") == "| a | 1 s | | |"


def test_round_table_has_a_row_per_timed_round_and_blank_cells_for_missing_variants() -> None:
    samples = [clone("direct", 0, 9.0), clone("direct", 1, 1.0), clone("edge", 1, 2.0)]
    samples.append(clone("direct", 2, 3.0))
    lines = results.round_table(
        samples, ["direct", "edge"], lambda x: f"{x.wall_s:.1f}", [("n", lambda r: str(len(r)))]
    )
    assert lines == [
        "| round | direct | edge | n |",
        "| --- | --- | --- | --- |",
        "| 1 | 1.0 | 2.0 | 2 |",
        "| 2 | 3.0 | | 1 |",
    ]


def test_write_results_writes_the_document_and_a_table_headed_by_its_command(
    tmp_path: Path,
) -> None:
    result = {"benchmark": "http_clone", "started_at": "2026-01-01T00:00:00+00:00", "x": [1]}
    json_path, md_path = results.write_results(
        result, "| a | b |", tmp_path / "out", "http_clone_tag", ["--quick"]
    )
    assert (json_path.name, md_path.name) == ("http_clone_tag.json", "http_clone_tag.md")
    assert json.loads(json_path.read_text()) == result
    assert md_path.read_text() == (
        "# bench.http_clone (2026-01-01T00:00:00+00:00)\n\n"
        "`python -m bench.http_clone --quick`\n\n| a | b |\n"
    )


def test_new_result_records_args_paths_as_strings() -> None:
    args = argparse.Namespace(rounds=3, results_dir=Path("/x/y"))
    result = results.new_result("ssh_clone", args, ["a note"], openssh="OpenSSH_9")
    assert result["args"] == {"rounds": 3, "results_dir": "/x/y"}
    assert (result["benchmark"], result["openssh"], result["notes"]) == (
        "ssh_clone",
        "OpenSSH_9",
        ["a note"],
    )
    assert len(result["loadavg_start"]) == 3


# -- the two reports, from synthetic runs -------------------------------------------


def http_result(baseline: bool) -> tuple[dict[str, Any], list[CloneSample]]:
    variants = ["direct", "edge", *(["baseline-direct", "baseline-edge"] if baseline else [])]
    walls = {"direct": 1.0, "edge": 1.1, "baseline-direct": 1.0, "baseline-edge": 1.3}
    samples = [
        clone(v, r, walls[v] * (1 + r / 10), edge_cpu_s=0.07 if "edge" in v else 0.0)
        for r in range(3)
        for v in variants
    ]
    push = {"bytes": 1024 * MiB, "edge_cpu_s": 2.0, "edge_rss_before_mb": 55.0}
    push |= {"edge_rss_peak_mb": 60.0, "wall_s": 14.0, "mb_per_s": 73.0}
    trees = {"this": {"root": "/new", "python": "p", "commit": "b" * 40, "dirty": True}}
    result: dict[str, Any] = {
        "benchmark": "http_clone",
        "args": {"rounds": 2, "no_checkout": False},
        "machine": {"nproc": 2, "cpu_model": "cpu", "mem_total_mb": 1, "python": "3.11.7"}
        | {"git": "git version 2.39.5", "kernel": "6"},
        "loadavg_start": (1.0, 1.0, 1.0),
        "loadavg_end": (2.0, 2.0, 2.0),
        "repo": {"bytes": 100 * MiB, "files": 128, "objects": 131},
        "push": {"wall_s": 1.5},
        "big_push": push,
        "trees": trees,
    }
    if baseline:
        trees[BASELINE] = {"root": "/old", "python": "q", "commit": "a" * 40, "dirty": False}
        result[BASELINE] = {"big_push": {**push, "edge_rss_peak_mb": 80.0}}
    return result, samples


def test_http_report_keeps_the_rows_the_readme_quotes() -> None:
    result, samples = http_result(baseline=False)
    http_report.summarise(result, samples)
    result["samples"] = [asdict(s) for s in samples]
    text = http_report.render(result)
    assert "| ratio edge/direct (of medians) | 1.100 | <= 1.05 | MISS |" in text
    assert "| edge CPU per 100 MiB cloned | 0.140 s | <= 0.1 s | MISS |" in text
    assert "| edge peak RSS during 1024 MiB push | 60.0 MiB | <= 80 MiB | pass |" in text
    assert "| edge CPU per 100 MiB pushed (during that push) | 0.195 s | | |" in text
    assert "| round | direct | edge |" in text
    assert "side by side" not in text and "source trees" not in text
    assert result["summary"]["targets"]["edge_peak_rss_push_mb"]["pass"] is True


def test_http_report_with_a_baseline_tree_puts_both_trees_side_by_side() -> None:
    result, samples = http_result(baseline=True)
    http_report.summarise(result, samples)
    result["samples"] = [asdict(s) for s in samples]
    base = result[BASELINE]["summary"]
    assert base["ratio_edge_direct"] == pytest.approx(1.3)
    assert base["edge_peak_rss_push_mb"] == 80.0
    rows = {r["key"]: r for r in result["side_by_side"]["rows"]}
    assert rows["ratio_edge_direct"]["ratio"] == pytest.approx(1.1 / 1.3)
    assert rows["edge_peak_rss_push_mb"]["ratio"] == pytest.approx(60 / 80)
    edge = result["side_by_side"]["edge_vs_baseline_edge"]
    assert edge["ratio"] == pytest.approx(1.1 / 1.3)
    text = http_report.render(result)
    assert "| metric | baseline (aaaaaaaaa) | this tree (bbbbbbbbb) | this / baseline |" in text
    assert "| edge peak RSS during the big push, MiB | 80.0 | 60.0 | 0.750 |" in text
    assert "edge clone, this tree / baseline: 0.846 (ratio of medians)" in text
    assert "| round | direct | edge | baseline-direct | baseline-edge |" in text
    assert "baseline = /old @ aaaaaaaaa (q)" in text and "bbbbbbbbb + uncommitted" in text


def test_ssh_report_counts_new_node_connections_of_either_pool() -> None:
    result, samples = http_result(baseline=True)
    samples = [s for s in samples if s.path != "baseline-direct"]
    for s in samples:
        s.other_cpu_s = {"sshd": 0.6} if s.path == "direct" else {}
    ls = [
        LsRemoteSample(i, v, i == 0, w / 1000 * (1 + i / 10), 0.0, 0.005)
        for i in range(3)
        for v, w in (("direct", 200.0), ("edge", 70.0), ("baseline-edge", 80.0))
    ]
    old = {"before_timed": {"ssh_node_connects": 1, "ssh_node_reuses": 2}}
    old["after_timed"] = {"ssh_node_connects": 1, "ssh_node_reuses": 9}
    new = {"before_timed": {"node_connects": 1, "node_reuses": 0}}
    new["after_timed"] = {"node_connects": 2, "node_reuses": 7}  # one new connection: a miss
    result |= {"edge_stats": new, "edge_ls_remote_session_s": [0.009]}
    result[BASELINE] = {"edge_stats": old, "edge_ls_remote_session_s": [0.008]}
    ssh_report.summarise(result, samples, ls)
    this, base = result["summary"], result[BASELINE]["summary"]
    assert this["ls_remote_added_ms"] == pytest.approx(80.5 - 230.0)
    assert base["ls_remote_added_ms"] == pytest.approx(92.0 - 230.0)
    assert this["server_cpu_s_direct"] == 0.6
    assert (this["node_connects_during_timed"], base["node_connects_during_timed"]) == (1, 0)
    assert this["targets"]["no_new_node_connection_when_warm"]["pass"] is False
    assert base["targets"]["no_new_node_connection_when_warm"]["pass"] is True
    ls_vs = result["side_by_side"]["ls_remote_edge_vs_baseline_edge"]
    assert ls_vs["ratio"] == pytest.approx(70 / 80)


def test_format_of_a_missing_value_is_na() -> None:
    result = {
        "trees": {"this": {"commit": "b" * 40}, BASELINE: {"commit": "a" * 40}},
        "side_by_side": {
            "rows": side_by_side([Metric("x", "x", "d")], {"x": None}, {"x": 3}),
            "edge_vs_baseline_edge": {"ratio": math.nan, "median_pair_ratio": 1.0},
        },
    }
    lines = results.side_by_side_section(result, "title")
    assert "| x | 3 | n/a | n/a |" in lines


# -- the driver that runs another tree's devnet -------------------------------------


def test_the_tree_driver_refuses_a_devnet_imported_from_another_tree(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not from the tree"):
        load_start_devnet(tmp_path.resolve())


def test_the_tree_driver_finds_this_trees_devnet() -> None:
    root = Path(__file__).resolve().parents[2]
    start, module = load_start_devnet(root)
    assert module == "devnet.network" and callable(start)


def test_both_clone_benches_profile_the_edge_unless_told_the_node() -> None:
    from bench import http_clone, ssh_clone

    for bench in (http_clone, ssh_clone):
        assert bench.parse_args([]).profile_process == "edge"
        assert (
            bench.parse_args(["--profile", "2", "--profile-process", "node"]).profile_process
            == "node"
        )
        with pytest.raises(SystemExit):
            bench.parse_args(["--profile-process", "etcd"])
