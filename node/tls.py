"""The node's HTTPS listener (`[tls]`): its certificate, and TLS on each accepted socket.

Edges reach a node with TLS where the path leaves a private network. They do
not check a CA or a host name: they compare the certificate the node serves
with the SHA-256 the node published in etcd (node/registry.py), so the
certificate may be self-signed, and is made here on first start if missing.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from node.config import TlsConfig
from plumbing.tls import SocketTLSStream
from plumbing.tlscerts import CertFileError, load_or_create_cert

log = logging.getLogger(__name__)

__all__ = ["CertFileError", "NodeTls", "load_node_tls"]

# An edge finishes a handshake in a round trip or two; this is a stuck peer.
HANDSHAKE_TIMEOUT = 10.0


@dataclass(frozen=True)
class NodeTls:
    context: ssl.SSLContext
    cert_sha256: str
    """The pin the node publishes in its etcd record."""

    async def serve(
        self, handler: Callable[[trio.abc.Stream], Awaitable[None]], stream: trio.SocketStream
    ) -> None:
        """Handshake on an accepted connection, then hand the TLS stream to `handler`."""
        try:
            # Takes the socket over (plumbing/tls.py): OpenSSL reads and writes
            # the fd itself, which costs less CPU per pack byte than SSLStream.
            tls = SocketTLSStream(stream, self.context)
        except OSError as exc:  # the peer reset before we got to it
            log.debug("TLS setup failed: %r", exc)
            await trio.aclose_forcefully(stream)
            return
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await tls.do_handshake()
        except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A port scan or a plain-HTTP client: nothing a log reader must act on.
            log.debug("TLS handshake failed: %r", exc)
            await trio.aclose_forcefully(tls)
            return
        await handler(tls)


def load_node_tls(config: TlsConfig, node_id: str) -> NodeTls:
    """The node's TLS context and pin, making a self-signed pair once. Blocking."""
    fingerprint = load_or_create_cert(
        config.cert_file, config.key_file, common_name=f"gitedge node {node_id}"
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(config.cert_file, config.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise CertFileError(f"cannot use {config.cert_file}: {exc}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Edges never resume a session (they keep each connection pooled instead),
    # so TLS 1.3 session tickets would be bytes sent for nothing.
    ctx.num_tickets = 0
    log.info("TLS certificate %s, sha256 %s", config.cert_file, fingerprint)
    return NodeTls(ctx, fingerprint)
