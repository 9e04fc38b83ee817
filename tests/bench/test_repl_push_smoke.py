"""bench.repl_push end to end, one round, no baseline: every cell of the results is there.

Nothing here asserts on timing, only that each (tree, repo) was pushed, waited
for and summarised, and that the table shows it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REPOS = ("plain", "w1", "w2")


@pytest.mark.e2e
def test_repl_push_quick_writes_every_cell(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.repl_push", "--quick", "--rounds", "1"]
    argv += ["--results-dir", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "repl_push.json").read_text())
    markdown = (tmp_path / "repl_push.md").read_text()

    assert result["args"]["rounds"] == 1
    timed = [(s["path"], s["round"]) for s in result["samples"] if not s["warmup"]]
    assert timed == [(repo, 1) for repo in REPOS]
    assert set(result["summary"]) == {"this"}
    this = result["summary"]["this"]
    for repo in REPOS:
        cell = this["repos"][repo]
        assert cell["pushes"] == 1
        assert cell["median_push_s"] > 0
        assert set(cell["median_node_cpu_s"]) == {"fra-1", "lax-1"}
        waited = cell["median_sync_wait_s"]
        assert (waited is None) == (repo == "plain")
        assert waited is None or waited >= 0
    for ratio in ("w1/plain", "w2/plain"):
        assert this["ratios"][ratio]["ratio"] > 0
    assert "side_by_side" not in result
    # first push, warm-up, one timed: each replicated repo is at generation 3 everywhere
    for repo in ("w1", "w2"):
        final = result["final"]["this"][repo]
        assert final["generation"] == 3
        assert sorted(r["region"] for r in final["replicas"]) == ["fra", "lax"]
        assert {r["state"] for r in final["replicas"]} == {"in-sync"}
    assert result["final"]["this"]["plain"].get("replicas") is None
    assert markdown.startswith("# bench.repl_push (")
    assert "| ratio w2/plain |" in markdown
    assert "| round | plain | w1 | w2 |" in markdown


def test_repl_push_refuses_bad_options(tmp_path: Path) -> None:
    for bad in (["--rounds", "0"], ["--baseline-python", sys.executable], ["--tag", "a/b"]):
        argv = [sys.executable, "-m", "bench.repl_push", *bad, "--results-dir", str(tmp_path)]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (bad, done.stderr)
        assert "error:" in done.stderr
    assert list(tmp_path.iterdir()) == []
