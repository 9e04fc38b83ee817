"""TLS certificate files a node makes once and keeps, and the pin edges check.

A node's certificate is trusted by its SHA-256 fingerprint, which the node
publishes in its etcd record; no CA signs it and no host name is checked (see
edge/http/pool.py). So a self-signed certificate is all a node needs, and its
validity dates mean nothing to an edge: the one made here never expires.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import re
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

# RFC 5280 4.1.2.5: 99991231235959Z means "no well-defined expiration date".
_NO_EXPIRY = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.S)


class CertFileError(Exception):
    """A certificate or key file that cannot be read or made; names the file."""


def cert_sha256(der: bytes) -> str:
    """The pin: lowercase hex SHA-256 of the DER certificate, as
    `openssl x509 -noout -fingerprint -sha256` prints it (without the colons)."""
    return hashlib.sha256(der).hexdigest()


def load_or_create_cert(cert_file: Path, key_file: Path, common_name: str) -> str:
    """The fingerprint of the leaf certificate in `cert_file`, made first if missing.

    Neither file: a new P-256 key (0600) and a self-signed certificate for it.
    A key without a certificate (a start that stopped between the two): a new
    certificate for that key. A certificate without its key is an error, as is
    a pair that does not match (OpenSSL checks when the context loads them).
    """
    if not cert_file.exists():
        key = _read_key(key_file) if key_file.exists() else _create_key(key_file)
        _write_new(
            cert_file, _self_signed(key, common_name).public_bytes(serialization.Encoding.PEM)
        )
    elif not key_file.exists():
        raise CertFileError(f"{cert_file} exists but its key {key_file} does not")
    fingerprint = _leaf_sha256(cert_file)
    try:
        # Checks that the key opens and belongs to the certificate.
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise CertFileError(f"cannot use {cert_file} with {key_file}: {exc}") from None
    return fingerprint


def _leaf_sha256(cert_file: Path) -> str:
    try:
        pem = cert_file.read_bytes()
    except OSError as exc:
        raise CertFileError(f"cannot read {cert_file}: {exc.strerror}") from None
    # The first certificate is the leaf, the one a TLS peer sends and edges pin.
    found = _PEM_CERT.search(pem)
    if found is None:
        raise CertFileError(f"{cert_file}: no PEM certificate in it")
    try:
        der = ssl.PEM_cert_to_DER_cert(found.group().decode("ascii"))
    except ValueError as exc:
        raise CertFileError(f"{cert_file}: {exc}") from None
    return cert_sha256(der)


def _read_key(key_file: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CertFileError(f"cannot use {key_file}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        # Only for a certificate made here; bring your own for other key types.
        raise CertFileError(f"{key_file}: not an EC key; give cert_file for it too")
    return key


def _create_key(key_file: Path) -> ec.EllipticCurvePrivateKey:
    # P-256: every TLS stack has it, and its handshakes are the cheapest to sign.
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new(key_file, pem, mode=0o600)
    return _read_key(key_file)  # another process's, if it made one first


def _self_signed(key: ec.EllipticCurvePrivateKey, common_name: str) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(_NO_EXPIRY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate


def _write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file that must not exist yet; its final name appears only when complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        # link() fails if another process made the file first; theirs stays.
        os.link(tmp, path)
    except FileExistsError:
        return
    except OSError as exc:
        raise CertFileError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
    log.info("new TLS file %s", path)
