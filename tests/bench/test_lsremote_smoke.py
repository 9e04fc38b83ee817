"""bench/lsremote_latency.py end to end, one round: every variant, and the request
counts the report's breakdown rests on. Nothing here asserts on timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_one_round_counts_the_401_retry_and_the_upfront_credential(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "bench.lsremote_latency", "--rounds", "1"]
    argv += ["--results-dir", str(tmp_path)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "lsremote_latency.json").read_text())
    timed = {s["variant"]: s for s in result["samples"] if not s["warmup"]}

    def statuses(variant: str) -> list[int]:
        return [r["status"] for r in timed[variant]["requests"]]

    # A token in the URL: git asks anonymously first, and the edge refuses with 401.
    assert statuses("edge-https") == [401, 200, 200]
    assert statuses("edge-https-no-capath") == [401, 200, 200]
    # Sent up front (http.extraHeader) there is no 401, as on the direct path.
    assert statuses("edge-https-upfront") == [200, 200]
    assert statuses("direct-http") == [200, 200]
    # The edge's access log saw each request git sent, and none on the direct path.
    assert {v: s["edge_requests"] for v, s in timed.items()} == {
        "direct-http": 0, "edge-https": 3, "edge-https-upfront": 2, "edge-https-no-capath": 3,
    }  # fmt: skip
    # Only the empty GIT_SSL_CAPATH keeps GnuTLS from loading /etc/ssl/certs.
    assert "/etc/ssl/certs" not in timed["edge-https-no-capath"]["ca_loading_s"]
    assert all(r > 0 for r in map(len, result["server_probes_ms"].values()))
    assert "| `edge-https` |" in (tmp_path / "lsremote_latency.md").read_text()
