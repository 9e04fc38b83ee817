"""Both clone benchmarks end to end, tiny, with a baseline tree: complete results files.

This tree serves as its own baseline (an A/A run): the second devnet is started
through the same driver another tree's interpreter would run. Nothing here
asserts on timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--size-mb", "1", "--rounds", "1", "--baseline-tree", str(ROOT)]


def run_bench(name: str, tmp_path: Path, *extra: str) -> tuple[dict[str, Any], str]:
    argv = [sys.executable, "-m", f"bench.{name}", *TINY, "--baseline-python", sys.executable]
    argv += ["--results-dir", str(tmp_path), *extra]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / f"{name}.json").read_text())
    return result, (tmp_path / f"{name}.md").read_text()


def timed_variants(samples: list[dict[str, Any]]) -> list[str]:
    return [s["path"] for s in samples if not s["warmup"]]


@pytest.mark.e2e
def test_http_clone_with_a_baseline_tree_interleaves_both_trees(tmp_path: Path) -> None:
    result, markdown = run_bench("http_clone", tmp_path, "--push-mb", "1")
    assert timed_variants(result["samples"]) == [
        "direct", "edge", "baseline-direct", "baseline-edge",
    ]  # fmt: skip
    assert set(result["trees"]) == {"this", "baseline"}
    for summary in (result["summary"], result["baseline"]["summary"]):
        assert summary["ratio_edge_direct"] > 0
        assert summary["edge_peak_rss_push_mb"] > 0
    assert result["big_push"]["bytes"] == result["baseline"]["big_push"]["bytes"] == 1024 * 1024
    assert "side by side, the same run" in markdown
    assert "| edge peak RSS during the big push, MiB |" in markdown
    assert markdown.startswith("# bench.http_clone (")


@pytest.mark.e2e
def test_ssh_clone_with_a_baseline_tree_shares_one_openssh_direct(tmp_path: Path) -> None:
    result, markdown = run_bench("ssh_clone", tmp_path, "--ls-remotes", "1")
    assert timed_variants(result["clone_samples"]) == ["direct", "edge", "baseline-edge"]
    ls = [x["path"] for x in result["ls_remote_samples"] if x["series"] == "default"]
    assert ls == ["direct", "edge", "baseline-edge"] * 2  # warm-up and one timed
    assert result["urls"]["edge"] != result["urls"]["baseline-edge"]
    assert result["protocol_v2"] == {"direct": True, "edge": True, "baseline-edge": True}
    for summary in (result["summary"], result["baseline"]["summary"]):
        assert summary["targets"]["no_new_node_connection_when_warm"]["pass"] is True
    assert "ls-remote, this tree / baseline:" in markdown
    assert "| round | direct | edge | baseline-edge |" in markdown
