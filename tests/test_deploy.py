"""The deployment recipes in deploy/ hang together: the systemd units pass
`systemd-analyze verify`, the configs they and the images run load with the
edge's and the node's loaders, the Fly configs expose what the configs listen
on, and the 3 etcd members agree on their cluster."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import trustme

from edge.config import load_edge_config
from node.config import load_node_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
GITEDGE = "/opt/gitedge/venv/bin/gitedge"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_verifies(unit: Path, tmp_path: Path) -> None:
    # verify checks that ExecStart exists: point it at this checkout's gitedge.
    here = Path(sys.executable).with_name("gitedge")
    copy = tmp_path / unit.name
    copy.write_text(unit.read_text().replace(GITEDGE, str(here)))
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stderr.strip() == "", verified.stderr


def _unit_settings(unit: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_units_are_hardened_and_run_the_configs_in_deploy() -> None:
    edge = _unit_settings(DEPLOY / "systemd" / "gitedge-edge.service")
    node = _unit_settings(DEPLOY / "systemd" / "gitedge-node.service")
    for unit in (edge, node):
        for key, value in (
            ("ProtectSystem", "strict"),
            ("NoNewPrivileges", "yes"),
            ("PrivateTmp", "yes"),
            ("User", "gitedge"),
        ):
            assert unit[key] == [value], key
    assert edge["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert node["CapabilityBoundingSet"] == [""]
    assert "ReadWritePaths" not in edge  # the edge keeps no state
    assert edge["ExecStart"] == [f"{GITEDGE} edge --config /etc/gitedge/edge.toml"]
    assert node["ExecStart"] == [f"{GITEDGE} node --config /etc/gitedge/node.toml"]
    volume = tomllib.loads((DEPLOY / "config" / "node.toml").read_text())["node"]["volume_dir"]
    assert volume in node["ReadWritePaths"][0].split()


def _install(tmp_path: Path, name: str) -> Path:
    """deploy/config/<name> with /etc/gitedge and /var/lib/gitedge under tmp_path,
    and every file it names made (real certificates and keys where it needs them)."""
    text = (DEPLOY / "config" / name).read_text()
    root = tmp_path / "root"
    text = text.replace("/etc/gitedge/", f"{root}/etc/gitedge/")
    text = text.replace("/var/lib/gitedge/", f"{root}/var/lib/gitedge/")
    etc = root / "etc" / "gitedge"
    for sub in ("tls", "ssh", "etcd"):
        (etc / sub).mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    edge_cert = ca.issue_cert("git.example.com")
    edge_cert.cert_chain_pems[0].write_to_path(str(etc / "tls" / "fullchain.pem"))
    edge_cert.private_key_pem.write_to_path(str(etc / "tls" / "privkey.pem"))
    client = ca.issue_cert("gitedge-client")
    ca.cert_pem.write_to_path(str(etc / "etcd" / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(etc / "etcd" / "client.pem"))
    client.private_key_pem.write_to_path(str(etc / "etcd" / "client-key.pem"))
    host_key = etc / "ssh" / "ssh_host_ed25519_key"
    if not host_key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True
        )
    for secret in ("admin-token", "node-admin-secret", "etcd/password"):
        (etc / secret).write_text("an-example-secret-of-some-length\n")
    for path in (etc / "tls" / "privkey.pem", etc / "etcd" / "client-key.pem"):
        path.chmod(0o600)
    config = tmp_path / name
    config.write_text(text)
    return config


def test_edge_config_loads(tmp_path: Path) -> None:
    config = load_edge_config(_install(tmp_path, "edge.toml"))
    assert sorted(listener.port for listener in config.https) == [443]
    assert config.region == "fra"


def test_node_config_loads(tmp_path: Path) -> None:
    config = load_node_config(_install(tmp_path, "node.toml"))
    assert config.region == "fra"


def test_fly_apps_expose_the_ports_and_volume_the_configs_use() -> None:
    edge = tomllib.loads((DEPLOY / "fly" / "edge.fly.toml").read_text())
    node = tomllib.loads((DEPLOY / "fly" / "node.fly.toml").read_text())
    ports = sorted(p["port"] for s in edge["services"] for p in s["ports"])
    assert ports == [22, 443]
    edge_cfg = tomllib.loads((DEPLOY / "config" / "edge.toml").read_text())
    node_cfg = tomllib.loads((DEPLOY / "config" / "node.toml").read_text())
    listening = {
        edge_cfg["https"]["listen"].rsplit(":", 1)[1],
        edge_cfg["ssh"]["listen"].rsplit(":", 1)[1],
    }
    assert {str(s["internal_port"]) for s in edge["services"]} == listening
    assert "services" not in node  # nodes are reached over the private network only
    assert node["mounts"]["destination"] == node_cfg["node"]["volume_dir"]
    for app in (edge, node):
        assert app["kill_signal"] == "SIGTERM" and app["kill_timeout"] > 60  # the drain
        assert (DEPLOY / "fly" / app["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_dockerfile_installs_the_configs_it_runs() -> None:
    docker = (DEPLOY / "Dockerfile").read_text()
    assert "\nFROM python:3.11-slim\n" in docker
    assert "git" in docker.split("apt-get install", 1)[1].split("\n", 1)[0]
    assert "COPY deploy/config/edge.toml deploy/config/node.toml /etc/gitedge/" in docker
    assert '"edge", "--config", "/etc/gitedge/edge.toml"' in docker


def _env(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_three_etcd_members_agree_and_the_configs_name_them() -> None:
    members = [_env(DEPLOY / "etcd" / f"etcd-{n}.env") for n in (1, 2, 3)]
    cluster = {m["ETCD_INITIAL_CLUSTER"] for m in members}
    assert len(cluster) == 1
    listed = dict(entry.split("=") for entry in cluster.pop().split(","))
    assert listed == {m["ETCD_NAME"]: m["ETCD_INITIAL_ADVERTISE_PEER_URLS"] for m in members}
    for member in members:
        assert member["ETCD_CLIENT_CERT_AUTH"] == member["ETCD_PEER_CLIENT_CERT_AUTH"] == "true"
        assert all(
            member[k].startswith("https://")
            for k in ("ETCD_ADVERTISE_CLIENT_URLS", "ETCD_INITIAL_ADVERTISE_PEER_URLS")
        )
    clients = [m["ETCD_ADVERTISE_CLIENT_URLS"] for m in members]
    for name in ("edge.toml", "node.toml"):
        etcd = tomllib.loads((DEPLOY / "config" / name).read_text())["etcd"]
        assert etcd["endpoints"] == clients and etcd["username"] == "gitedge"
