"""bench/tree_devnet.py's edge-config merge: what the load benchmark sets reaches the edge's
TOML, and nothing else of the devnet's config changes."""

from __future__ import annotations

import tomllib

from bench.tree_devnet import merged, toml_text

DEVNET_EDGE = """
[edge]
region = "fra"
[https]
listen = "127.0.0.1:0"
[ssh]
listen = "127.0.0.1:0"
host_key_files = ["/k"]
[regions.rtt]
fra.lax = 140
fra.syd = 260
"""


def test_overrides_merge_into_existing_and_new_tables_and_round_trip() -> None:
    config = tomllib.loads(DEVNET_EDGE)
    overrides = {"limits": {"keepalive_timeout": 1800.0}, "ssh": {"max_startups": "100:30:200"}}
    out = merged(config, overrides)
    assert tomllib.loads("\n".join(toml_text(out))) == out
    assert out["ssh"] == {**config["ssh"], "max_startups": "100:30:200"}
    assert out["limits"] == {"keepalive_timeout": 1800.0}
    assert out["regions"] == config["regions"] and out["edge"] == config["edge"]
