"""devnet/procs: fixed ports come from outside the kernel's ephemeral range and
are never handed out twice; an etcd whose port was taken before it bound is
started again on new ports (CI lost a run to that race)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from devnet import procs
from devnet.procs import StartupError, free_port, lost_port_race, start_etcd


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_free_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    if _ephemeral_low() - 10_000 >= 4096:
        assert all(10_000 <= port < _ephemeral_low() for port in ports)
    for port in ports[:20]:  # each one bindable now
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_taken_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr(procs, "_fixed_port_range", lambda: range(busy, busy + 1))
        port = free_port()  # the only candidate is taken: the kernel picks one
        assert port != busy
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_etcd_started_again_when_its_port_was_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        real_free_port = procs.free_port
        handed = iter([busy])
        monkeypatch.setattr(procs, "free_port", lambda: next(handed, None) or real_free_port())
        etcd = start_etcd(tmp_path)
        try:
            assert f":{busy}" not in etcd.url
            assert httpx.get(etcd.url + "/health", timeout=5).status_code == 200
            assert "address already in use" in etcd.process.log_path.read_text()
        finally:
            etcd.stop()


def test_only_a_bind_race_is_retried() -> None:
    assert lost_port_race(StartupError("listen tcp 127.0.0.1:1: bind: address already in use"))
    assert not lost_port_race(StartupError("etcd exited with 1: data dir is corrupt"))
