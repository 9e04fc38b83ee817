"""The PROXY protocol keys of [https], [http] and [ssh]: modes, trusted networks, timeout."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from edge.config import (
    LOOPBACK,
    ConfigError,
    EdgeConfig,
    ProxyMode,
    ProxyProtocol,
    load_edge_config,
)

BASE = (
    '[edge]\nregion = "iad"\n'
    '[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
    '[nodes]\nadmin_secret = "s3cret"\n'
)


def _load(tmp_path: Path, http: str = "", ssh: str | None = None) -> EdgeConfig:
    text = BASE + '[http]\nlisten = "127.0.0.1:8080"\n' + http
    if ssh is not None:
        text += f'[ssh]\nlisten = "127.0.0.1:2222"\nhost_key_files = ["{tmp_path / "hk"}"]\n{ssh}'
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return load_edge_config(path)


def test_off_by_default_and_loopback_trusted(tmp_path: Path) -> None:
    config = _load(tmp_path, ssh="")
    assert config.http_proxy_protocol == ProxyProtocol()
    assert config.https_proxy_protocol.mode is ProxyMode.OFF
    assert config.ssh is not None and config.ssh.proxy_protocol == ProxyProtocol()
    assert ProxyProtocol().trusted == LOOPBACK and ProxyProtocol().timeout == 5.0


def test_each_listener_has_its_own_policy(tmp_path: Path) -> None:
    config = _load(
        tmp_path,
        http='proxy_protocol = "optional"\nproxy_protocol_timeout = 1.5\n',
        ssh='proxy_protocol = "required"\nproxy_protocol_from = ["10.0.0.0/8", "fd00::/8"]\n',
    )
    http = config.http_proxy_protocol
    assert (http.mode, http.timeout, http.trusted) == (ProxyMode.OPTIONAL, 1.5, LOOPBACK)
    assert config.ssh is not None
    ssh = config.ssh.proxy_protocol
    assert ssh.mode is ProxyMode.REQUIRED
    assert ssh.trusted == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert ssh.trusts("10.1.2.3") and not ssh.trusts("192.0.2.1") and not ssh.trusts("x")


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('proxy_protocol = "on"\n', "proxy_protocol: must be one of 'off', 'optional', 'required'"),
        ('proxy_protocol = "required"\nproxy_protocol_from = []\n', "needs at least one network"),
        ('proxy_protocol_from = ["10.0.0.300/8"]\n', "proxy_protocol_from"),
        ("proxy_protocol_timeout = 0\n", "proxy_protocol_timeout: must be a number from 0.1"),
        ("proxy_protocl = 'off'\n", "proxy_protocl: unknown key"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, lines: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _load(tmp_path, http=lines)
