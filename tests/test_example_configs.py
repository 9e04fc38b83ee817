"""The example configs in configs/ load as they are (with their files in place)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.config import load_edge_config
from node.config import load_node_config
from routing.model import Region

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture
def dev_dir(tmp_path: Path) -> Iterator[Path]:
    """A working directory with the dev/ files the dev configs name."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("edge-cert.pem", "edge-key.pem", "node-admin-secret", "admin-token"):
        (dev / name).write_text("secret-or-pem\n")
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield tmp_path
    finally:
        os.chdir(old)


def test_edge_dev_config_loads(dev_dir: Path) -> None:
    shutil.copy(CONFIGS / "edge.dev.toml", dev_dir / "edge.toml")
    config = load_edge_config(dev_dir / "edge.toml")
    assert config.region == "fra"
    assert [listener.port for listener in config.https] == [8443]
    assert config.admin_token == "secret-or-pem"
    assert config.rtt.rtt_ms(Region("syd"), Region("fra")) == 260
    assert config.replica_read_wait == 3.0


def test_node_dev_config_loads(dev_dir: Path) -> None:
    shutil.copy(CONFIGS / "node.dev.toml", dev_dir / "node.toml")
    config = load_node_config(dev_dir / "node.toml")
    assert config.region == "fra"


def test_edge_production_config_names_its_missing_files(tmp_path: Path) -> None:
    shutil.copy(CONFIGS / "edge.production.toml", tmp_path / "edge.toml")
    with pytest.raises(ValueError, match="cert_file"):
        load_edge_config(tmp_path / "edge.toml")
