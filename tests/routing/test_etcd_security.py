"""The etcd client's TLS and auth, against a real etcd with client certificates and users.

One single-member etcd (HTTPS, --client-cert-auth, auth enabled, user `gitedge`
limited to /gitedge/) for the module: devnet/etcdcluster.py. The config checks
at the top need no etcd.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from devnet.etcdcluster import EtcdCluster, change_password, start_etcd_cluster
from edge.config import ConfigError, load_edge_config
from node.config import load_node_config
from routing import etcd_codec as codec
from routing.etcd import EtcdAccessDenied, EtcdClient, EtcdError
from routing.etcd_security import EtcdSecurity

EDGE = '[edge]\nregion = "iad"\n[nodes]\nadmin_secret = "s"\n[http]\nlisten = "127.0.0.1:0"\n'
NODE = '[node]\nid = "iad-1"\nregion = "iad"\nvolume_dir = "{vol}"\nadmin_secret = "s"\n'


def _etcd_table(tmp_path: Path, extra: str, endpoint: str = "https://127.0.0.1:2379") -> str:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not a pem\n")
    (tmp_path / "password").write_text("pw\n")
    return f'[etcd]\nendpoints = ["{endpoint}"]\n' + extra.replace("DIR", str(tmp_path))


@pytest.mark.parametrize(
    ("extra", "complaint"),
    [
        ('cert_file = "DIR/cert.pem"\n', "cert_file and key_file go together"),
        ('username = "gitedge"\n', "username and password_file go together"),
        ('password_file = "DIR/password"\n', "username and password_file go together"),
        ('ca_file = "DIR/missing.pem"\n', "no such file"),
        ('ca_file = "DIR/ca.pem"\n', "etcd ca_file"),  # not a PEM: named at load
    ],
)
def test_etcd_tls_and_auth_keys_are_checked(tmp_path: Path, extra: str, complaint: str) -> None:
    for text in (EDGE, NODE.format(vol=tmp_path / "vol")):
        config = tmp_path / "c.toml"
        config.write_text(text + _etcd_table(tmp_path, extra))
        load = load_edge_config if text is EDGE else load_node_config
        with pytest.raises(ConfigError, match=complaint):
            load(config)


def test_tls_files_need_https_endpoints(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        EDGE + _etcd_table(tmp_path, 'ca_file = "DIR/ca.pem"\n', "http://127.0.0.1:2379")
    )
    with pytest.raises(ConfigError, match="need https:// endpoints"):
        load_edge_config(config)


def test_empty_password_file_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    table = _etcd_table(tmp_path, 'username = "u"\npassword_file = "DIR/password"\n')
    (tmp_path / "password").write_text("\n")
    config.write_text(EDGE + table)
    with pytest.raises(ConfigError, match="is empty"):
        load_edge_config(config)


def test_cancel_reasons_carry_their_grpc_code() -> None:
    reason = "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token"
    assert codec.grpc_code_in(reason) == codec.GRPC_UNAUTHENTICATED
    assert codec.grpc_code_in("no reason given") is None
    assert codec.is_token_rejected(EtcdError(reason, grpc_code=codec.grpc_code_in(reason)))
    empty = EtcdError("etcdserver: user name is empty", grpc_code=codec.GRPC_INVALID_ARGUMENT)
    assert codec.is_token_rejected(empty)
    denied = EtcdError("etcdserver: permission denied", grpc_code=codec.GRPC_PERMISSION_DENIED)
    assert not codec.is_token_rejected(denied)


# --- against a real etcd ---------------------------------------------------------


@pytest.fixture(scope="module")
def secure_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with start_etcd_cluster(tmp_path_factory.mktemp("secure-etcd"), 1, tls=True, auth=True) as c:
        yield c


def _security(
    cluster: EtcdCluster, *, cert: bool = True, password: Path | None = None
) -> EtcdSecurity:
    assert cluster.tls is not None and cluster.password_file is not None
    return EtcdSecurity(
        ca_file=cluster.tls.ca_file,
        cert_file=cluster.tls.client_cert if cert else None,
        key_file=cluster.tls.client_key if cert else None,
        username="gitedge",
        password_file=password or cluster.password_file,
    )


async def test_reads_writes_and_watches_with_certificate_and_password(
    secure_etcd: EtcdCluster,
) -> None:
    async with EtcdClient(secure_etcd.url, timeout=3, security=_security(secure_etcd)) as etcd:
        await etcd.check_access("/gitedge/")
        await etcd.put("/gitedge/t/a", b"1")
        assert (await etcd.get("/gitedge/t/a")).value == b"1"  # type: ignore[union-attr]
        assert "pw" not in repr(etcd) and secure_etcd.password_file is not None
        assert secure_etcd.password_file.read_text().strip() not in repr(etcd)
        with pytest.raises(EtcdAccessDenied, match="permission denied"):
            await etcd.get("/elsewhere")


async def test_token_dropped_by_etcd_is_renewed_for_calls_and_watches(
    secure_etcd: EtcdCluster,
) -> None:
    password = secure_etcd.password_file.read_text().strip()  # type: ignore[union-attr]
    async with EtcdClient(secure_etcd.url, timeout=3, security=_security(secure_etcd)) as etcd:
        revision = await etcd.put("/gitedge/t/b", b"1")
        first = etcd._token
        # A password change makes etcd forget every token of the user.
        await trio.to_thread.run_sync(change_password, secure_etcd, password)
        async with etcd.open_watch("/gitedge/t/", revision) as watch:
            assert etcd._token not in (None, first)
            second = etcd._token
            batch = await anext(watch)
            assert batch.events[0].kv.key == "/gitedge/t/b"
        await trio.to_thread.run_sync(change_password, secure_etcd, password)
        assert (await etcd.get("/gitedge/t/b")) is not None
        assert etcd._token not in (None, first, second)


async def test_wrong_password_no_certificate_or_no_user_is_access_denied(
    secure_etcd: EtcdCluster, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("nope\n")
    cases = {
        "authentication failed": _security(secure_etcd, password=wrong),
        "TLS with etcd failed": _security(secure_etcd, cert=False),
        "set \\[etcd\\] username": EtcdSecurity(
            ca_file=secure_etcd.tls.ca_file,  # type: ignore[union-attr]
            cert_file=secure_etcd.tls.client_cert,  # type: ignore[union-attr]
            key_file=secure_etcd.tls.client_key,  # type: ignore[union-attr]
        ),
    }
    for complaint, security in cases.items():
        async with EtcdClient(secure_etcd.url, timeout=3, security=security) as etcd:
            with pytest.raises(EtcdAccessDenied, match=complaint):
                await etcd.check_access("/gitedge/")
