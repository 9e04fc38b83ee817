"""`[nodes] require_tls`: its default, its three values, and a typo named on error."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import ConfigError, NodeTlsPolicy, load_edge_config

BASE = (
    '[edge]\nregion = "fra"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
    '[http]\nlisten = "127.0.0.1:0"\n[nodes]\nadmin_secret = "s"\n'
)


def _load(tmp_path: Path, line: str) -> NodeTlsPolicy:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + line + "\n")
    return load_edge_config(path).node_require_tls


def test_default_is_other_regions(tmp_path: Path) -> None:
    assert _load(tmp_path, "") is NodeTlsPolicy.OTHER_REGIONS


@pytest.mark.parametrize("policy", list(NodeTlsPolicy))
def test_each_value_loads(tmp_path: Path, policy: NodeTlsPolicy) -> None:
    assert _load(tmp_path, f'require_tls = "{policy.value}"') is policy


@pytest.mark.parametrize("value", ['"off"', '"Always"', "true"])
def test_anything_else_is_refused_naming_the_key(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=r"\[nodes\]: require_tls"):
        _load(tmp_path, f"require_tls = {value}")


@pytest.mark.parametrize(
    ("policy", "node_region", "required"),
    [
        (NodeTlsPolicy.NEVER, "lax", False),
        (NodeTlsPolicy.OTHER_REGIONS, "fra", False),
        (NodeTlsPolicy.OTHER_REGIONS, "lax", True),
        (NodeTlsPolicy.ALWAYS, "fra", True),
    ],
)
def test_which_nodes_need_tls(policy: NodeTlsPolicy, node_region: str, required: bool) -> None:
    assert policy.requires_tls("fra", node_region) is required
