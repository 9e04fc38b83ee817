"""TLS certificate files made once and kept, and the SHA-256 pin of what is in them."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from plumbing.tlscerts import CertFileError, cert_sha256, load_or_create_cert


def _files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"


def _spki(cert_file: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_missing_pair_is_made_self_signed_0600_and_kept(tmp_path: Path) -> None:
    cert_file, key_file = _files(tmp_path)
    pin = load_or_create_cert(cert_file, key_file, "gitedge node fra-1")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert pin == cert_sha256(ssl.PEM_cert_to_DER_cert(cert_file.read_text()))
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    assert cert.issuer == cert.subject
    assert "gitedge node fra-1" in cert.subject.rfc4514_string()
    assert cert.not_valid_after_utc.year == 9999  # edges pin; dates mean nothing to them
    # Kept: a second call reads the same files and makes nothing new.
    assert load_or_create_cert(cert_file, key_file, "gitedge node fra-1") == pin
    assert sorted(p.name for p in cert_file.parent.iterdir()) == ["cert.pem", "key.pem"]


def test_a_key_without_its_certificate_gets_a_new_certificate_for_that_key(
    tmp_path: Path,
) -> None:
    cert_file, key_file = _files(tmp_path)
    first = load_or_create_cert(cert_file, key_file, "n")
    public_key = _spki(cert_file)
    cert_file.unlink()
    second = load_or_create_cert(cert_file, key_file, "n")
    assert second != first  # a new certificate (new serial), so a new pin
    assert _spki(cert_file) == public_key


def test_a_certificate_without_its_key_is_an_error_naming_both(tmp_path: Path) -> None:
    cert_file, key_file = _files(tmp_path)
    load_or_create_cert(cert_file, key_file, "n")
    key_file.unlink()
    with pytest.raises(CertFileError, match=r"key\.pem") as info:
        load_or_create_cert(cert_file, key_file, "n")
    assert "cert.pem" in str(info.value)
    assert not key_file.exists()  # never made behind the operator's back


def test_a_pair_that_does_not_match_is_an_error(tmp_path: Path) -> None:
    cert_file, key_file = _files(tmp_path)
    load_or_create_cert(cert_file, key_file, "n")
    other_cert, other_key = tmp_path / "other-cert.pem", tmp_path / "other-key.pem"
    load_or_create_cert(other_cert, other_key, "m")
    with pytest.raises(CertFileError, match="cannot use"):
        load_or_create_cert(cert_file, other_key, "n")


def test_a_file_with_no_certificate_is_an_error(tmp_path: Path) -> None:
    cert_file, key_file = _files(tmp_path)
    load_or_create_cert(cert_file, key_file, "n")
    cert_file.write_text("not a certificate\n")
    with pytest.raises(CertFileError, match="no PEM certificate"):
        load_or_create_cert(cert_file, key_file, "n")


def test_the_pin_of_a_chain_file_is_its_leaf(tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("node.internal")
    cert_file, key_file = tmp_path / "chain.pem", tmp_path / "key.pem"
    # leaf first, then the CA: what a TLS server sends, in that order
    cert_file.write_bytes(
        b"".join(blob.bytes() for blob in issued.cert_chain_pems) + ca.cert_pem.bytes()
    )
    issued.private_key_pem.write_to_path(str(key_file))
    leaf = ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())
    assert load_or_create_cert(cert_file, key_file, "unused") == cert_sha256(leaf)
