"""Reaching a peer node that serves HTTPS: its certificate pinned from etcd, as edges do.

A node's certificate is self-made (node/tls.py): no CA, no host name to check.
The edge pins it by the SHA-256 the node publishes in its etcd record; a node
pushing a push's objects to a peer, fetching from it or telling it to apply
does the same:

- the certificate is fetched once per (URL, pin) with a TLS handshake that
  checks nothing, and kept only if its SHA-256 equals the published pin;
- git (libcurl) then runs with `http.sslVerify=false` and `http.pinnedPubkey`
  set to that certificate's public key: curl checks the pinned key
  independently of peer verification and aborts before sending a byte to any
  other key (CURLOPT_PINNEDPUBLICKEY), so the node credential in
  `http.extraHeader` reaches only the peer;
- Python's own requests (the apply notification) trust exactly that
  certificate (`cadata`), without a host name check.

A peer whose record has no pin, or serves another certificate, is refused
(PeerTlsError): replication to it fails the way an unreachable peer does.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from plumbing.tlscerts import cert_sha256
from routing.model import NodeRecord

FETCH_TIMEOUT = 10.0


class PeerTlsError(Exception):
    """The peer's TLS identity cannot be established; the message says why."""


@dataclass(frozen=True)
class PeerCert:
    pem: str
    pinned_pubkey: str
    """curl's `sha256//<base64>` of the certificate's SubjectPublicKeyInfo."""

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.pem)
        context.check_hostname = False  # the pin is the identity, not a name
        return context


def git_config(peer: PeerCert | None) -> list[tuple[str, str]]:
    """The `-c` settings git needs to reach `peer` (none for plain HTTP)."""
    if peer is None:
        return []
    return [("http.sslVerify", "false"), ("http.pinnedPubkey", peer.pinned_pubkey)]


class PeerCerts:
    """Certificates of peer nodes, checked against their pins, cached per (URL, pin)."""

    def __init__(self) -> None:
        self._known: dict[tuple[str, str], PeerCert] = {}

    async def get(self, node: NodeRecord) -> PeerCert | None:
        """None for a plain-HTTP peer; its checked certificate; or PeerTlsError."""
        if not node.http_url.startswith("https://"):
            return None
        pin = node.tls_cert_sha256
        if not pin:
            raise PeerTlsError(f"{node.node_id} serves HTTPS but publishes no certificate pin")
        known = self._known.get((node.http_url, pin))
        if known is not None:
            return known
        parts = urlsplit(node.http_url)
        host, port = parts.hostname or "", parts.port or 443
        try:
            with trio.fail_after(FETCH_TIMEOUT):
                der = await trio.to_thread.run_sync(_fetch_der, host, port)
        except (OSError, trio.TooSlowError) as exc:
            raise PeerTlsError(f"{node.node_id}: TLS handshake failed: {exc!r}") from None
        served = cert_sha256(der)
        if served != pin:
            raise PeerTlsError(
                f"{node.node_id} at {host}:{port}: certificate sha256 {served} is not the"
                f" pinned {pin}"
            )
        peer = _peer_cert(der)
        self._known[(node.http_url, pin)] = peer
        return peer


def _fetch_der(host: str, port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # checked against the pin by the caller
    with (
        socket.create_connection((host, port), timeout=FETCH_TIMEOUT) as sock,
        context.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("the peer sent no certificate")
    return der


def _peer_cert(der: bytes) -> PeerCert:
    cert = x509.load_der_x509_certificate(der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    return PeerCert(pem=ssl.DER_cert_to_PEM_cert(der), pinned_pubkey=f"sha256//{pin}")
