"""The regions benchmark end to end, tiny: it must produce a complete results file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.regions import PROTOCOLS, SCENARIOS

ROOT = Path(__file__).resolve().parents[2]
REGIONS = ("fra", "lax", "syd")


@pytest.mark.e2e
def test_quick_run_writes_every_cell_with_floors(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable, "-m", "bench.regions", "--quick",
            "--delay-scale", "0.02", "--small-mb", "0.1", "--big-mb", "0.3",
            "--results-dir", str(tmp_path),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "regions.json").read_text())
    cells = {
        (s["protocol"], s["scenario"], s["client"], s["home"], s["path"], s["mode"])
        for s in result["samples"]
    }
    for protocol in PROTOCOLS:
        for scenario in SCENARIOS:
            assert result["traces"][f"{protocol}/{scenario}"]["git_round_trips"] >= 2
            for client in REGIONS:
                for home in REGIONS:
                    for path in ("edge", "direct"):
                        assert (protocol, scenario, client, home, path, "warm") in cells
    assert any(s["mode"] == "cold" for s in result["samples"])
    warm_edge = [s for s in result["samples"] if s["mode"] == "warm" and s["path"] == "edge"]
    assert all(s["edge_stats_delta"] is not None for s in warm_edge)
    markdown = (tmp_path / "regions.md").read_text()
    assert markdown.count("### ") >= len(PROTOCOLS) * len(SCENARIOS)
    assert " / " in markdown.split("### HTTPS ls-remote (warm)")[1]
    for png in ("regions_heat_https.png", "regions_heat_ssh.png", "regions_bars.png"):
        assert (tmp_path / png).stat().st_size > 1000
    # The replicated scenario ran in the same world: every cell, its table and its plot.
    replicated = json.loads((tmp_path / "regions_replicated.json").read_text())["replicated"]
    got = {(s["protocol"], s["op"], s["client"], s["kind"]) for s in replicated["samples"]}
    for protocol in PROTOCOLS:
        for client in ("fra", "syd"):
            for kind in ("unreplicated", "w1", "w2"):
                assert (protocol, "push", client, kind) in got
        for client in REGIONS:
            for op in ("ls-remote", "clone"):
                for kind in ("replicated", "homed-here", "homed-far"):
                    assert (protocol, op, client, kind) in got
    assert "W=2 / unreplicated" in (tmp_path / "regions_replicated.md").read_text()
    assert (tmp_path / "regions_replicated.png").stat().st_size > 1000
