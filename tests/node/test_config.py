"""load_node_config: defaults, and errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_node_config

MINIMAL = """
[node]
id = "fra-1"
region = "fra"
volume_dir = "/srv/vol"
admin_secret = "s"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    config = load_node_config(write(tmp_path, MINIMAL))
    assert (config.node_id, config.region, config.volume_dir) == ("fra-1", "fra", Path("/srv/vol"))
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 0)
    assert config.advertise_url is None
    assert config.admin_secret == "s"
    assert config.lease_ttl == 10
    assert config.keepalive_timeout == 75.0
    assert config.startup_catch_up_timeout == 30.0
    assert config.etcd_endpoints == ("http://127.0.0.1:2379",)
    assert config.etcd_prefix == "/gitedge/"


def test_admin_secret_is_read_from_its_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("from-file\n")
    text = MINIMAL.replace('admin_secret = "s"', f'admin_secret_file = "{tmp_path / "secret"}"')
    assert load_node_config(write(tmp_path, text)).admin_secret == "from-file"


@pytest.mark.parametrize(
    ("remove", "key"),
    [
        ('id = "fra-1"', "id"),
        ('region = "fra"', "region"),
        ('volume_dir = "/srv/vol"', "volume_dir"),
        ('admin_secret = "s"', "admin_secret"),
    ],
)
def test_missing_key_is_named(tmp_path: Path, remove: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[node\]: {key}: is required"):
        load_node_config(write(tmp_path, MINIMAL.replace(remove, "")))


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('lease_ttl = "10"', "lease_ttl"),
        ("lease_ttl = 1", "lease_ttl"),  # below the minimum of 2
        ("keepalive_timeout = true", "keepalive_timeout"),
        ("startup_catch_up_timeout = -1", "startup_catch_up_timeout"),
        ("listen = 8080", "listen"),
        ('listen = "nohost"', "listen"),
        ('advertise_url = "10.0.0.1:80"', "advertise_url"),
        ('\n[etcd]\nendpoints = "http://127.0.0.1:2379"', "endpoints"),
        ('\n[etcd]\nendpoints = ["127.0.0.1:2379"]', "endpoints"),
        ('\n[etcd]\nprefix = "gitedge"', "prefix"),
    ],
)
def test_wrong_type_or_value_is_named(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf": {key}: "):
        load_node_config(write(tmp_path, MINIMAL + extra))


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (MINIMAL.replace('id = "fra-1"', 'id = "FRA_1"'), "id"),
        (MINIMAL.replace('region = "fra"', 'region = "Frankfurt"'), "region"),
    ],
)
def test_bad_id_or_region_is_named(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"\[node\]: {key}: "):
        load_node_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("colour = 'blue'", "colour"),  # in [node]
        ("\n[etcd]\nendpoint = ['http://x']", "endpoint"),  # a typo of `endpoints`
        ("\n[nodes]\nid = 'x'", "nodes"),  # an unknown table
    ],
)
def test_unknown_key_is_an_error_naming_it(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"{key}: unknown key"):
        load_node_config(write(tmp_path, MINIMAL + extra))


def test_wildcard_listen_needs_an_advertise_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="advertise_url: is required"):
        load_node_config(write(tmp_path, MINIMAL + 'listen = "0.0.0.0:8080"'))
    text = MINIMAL + 'listen = "0.0.0.0:8080"\nadvertise_url = "http://10.0.0.5:8080/"'
    assert load_node_config(write(tmp_path, text)).advertise_url == "http://10.0.0.5:8080"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_node_config(tmp_path / "missing.toml")
