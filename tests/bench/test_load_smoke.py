"""The load benchmark end to end, tiny (--quick with a few clones, connections and
handshakes): complete results files of the shape the README quotes. Nothing here
asserts on timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--quick", "--clones", "2", "--idle-conns", "8", "--handshakes", "4", "--probes", "1"]


@pytest.mark.e2e
def test_quick_load_run_writes_every_phase(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.load", *TINY, "--repo-kb", "64"]
    argv += ["--results-dir", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "load.json").read_text())
    markdown = (tmp_path / "load.md").read_text()

    timed = [(s["path"], s["clones"]) for s in result["burst_samples"] if not s["warmup"]]
    assert timed == [("direct", 2), ("direct-tls", 2), ("edge", 2), ("edge-ssh", 2)]
    paths = result["summary"]["paths"]
    assert all(p["failures"] == 0 for p in paths.values()), result["burst_samples"]
    assert result["summary"]["ratio_edge_direct"]["ratio"] > 0
    # The TLS reference: straight from a node that serves HTTPS itself.
    tls = next(s for s in result["burst_samples"] if s["path"] == "direct-tls")
    assert tls["node_cpu_s"] > 0
    assert result["summary"]["ratio_edge_direct-tls"]["reference"] == "direct-tls"
    assert result["summary"]["ratio_edge_direct-tls"]["ratio"] > 0
    targets = {"ratio_edge_direct", "ratio_edge_direct-tls", "edge_failures"}
    assert set(result["summary"]["targets"]) == targets

    idle = result["idle"]
    assert idle["held"] == idle["answered_again"] == 8
    assert [s["state"] for s in idle["states"]][1] == "8 idle connections held"
    assert idle["edge_mem_held"]["VmRSS"] > 0 and idle["edge_fds_held"] >= 8
    for state in idle["states"]:
        assert state["healthz_new_connection"]["failures"] == state["clone"]["failures"] == 0

    handshakes = result["handshakes"]
    assert (handshakes["ok"], handshakes["failures"]) == (4, 0)
    assert handshakes["edge_rss_after_mb"] > 0

    assert len(result["loadavg_start"]) == len(result["loadavg_end"]) == 3
    assert result["machine"]["nproc"] >= 1
    assert markdown.startswith("# bench.load (")
    for heading in ("## 2 concurrent clones", "## 8 idle keep-alive", "## 4 SSH handshakes"):
        assert heading in markdown
    assert "| burst wall, edge (HTTPS) / direct (ratio of medians) |" in markdown
    assert "| burst wall, edge (HTTPS) / direct-tls (ratio of medians) |" in markdown
    assert "| edge / direct | " in markdown and "| edge / direct-tls | " in markdown
    assert "- Two references: direct = plain HTTP" in markdown
    assert "load avg (1/5/15 min)" in markdown
