"""How the etcd client proves who it is: TLS files, a user and its password file.

`[etcd]` in both the edge's and the node's config:

```toml
[etcd]
endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]
ca_file = "/etc/gitedge/etcd-ca.pem"        # verifies the members' certificates
cert_file = "/etc/gitedge/etcd-client.pem"  # client certificate (--client-cert-auth)
key_file = "/etc/gitedge/etcd-client-key.pem"
username = "gitedge"                        # etcd user (auth enabled); needs password_file
password_file = "/etc/gitedge/etcd-password"  # first line is the password
```

The password is read once, at start; neither it nor the token etcd hands out for
it is ever logged or shown in an error (`EtcdSecurity` holds only the file's path).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from plumbing.tomlconf import Table
from routing.etcd_codec import EtcdError

__all__ = [
    "EtcdAccessDenied",
    "EtcdSecurity",
    "EtcdSetupError",
    "load_etcd_security",
    "tls_refusal",
]


class EtcdAccessDenied(EtcdError):
    """etcd (or its TLS) refused this client's credentials, or its user may not use
    the prefix: only a change of configuration cures it, not a retry."""


class EtcdSetupError(Exception):
    """A TLS file or the password file cannot be used; names the file."""


@dataclass(frozen=True)
class EtcdSecurity:
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password_file: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The context for https endpoints; None: httpx's default (system CAs, no client cert)."""
        if self.ca_file is None and self.cert_file is None:
            return None
        try:
            context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise EtcdSetupError(f"etcd ca_file {self.ca_file}: {exc}") from None
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise EtcdSetupError(
                    f"etcd cert_file {self.cert_file} with key_file {self.key_file}: {exc}"
                ) from None
        return context

    def read_password(self) -> str:
        """The first line of `password_file` (without its line ending)."""
        assert self.password_file is not None
        try:
            text = self.password_file.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise EtcdSetupError(f"etcd password_file {self.password_file}: {exc}") from None
        lines = text.splitlines()
        if not lines or not lines[0]:
            raise EtcdSetupError(f"etcd password_file {self.password_file} is empty")
        return lines[0]


def load_etcd_security(etcd: Table, endpoints: list[str]) -> EtcdSecurity:
    """The TLS and auth keys of an `[etcd]` table, checked (files exist, pairs complete)."""

    def existing(key: str) -> Path | None:
        raw = etcd.optional_str(key)
        if raw is None:
            return None
        path = Path(raw)
        if not path.is_file():
            raise etcd.error(key, f"no such file {path}")
        return path

    security = EtcdSecurity(
        ca_file=existing("ca_file"),
        cert_file=existing("cert_file"),
        key_file=existing("key_file"),
        username=etcd.optional_str("username"),
        password_file=existing("password_file"),
    )
    if (security.cert_file is None) != (security.key_file is None):
        raise etcd.error("cert_file", "cert_file and key_file go together")
    if (security.username is None) != (security.password_file is None):
        raise etcd.error("username", "username and password_file go together")
    if security.username == "":
        raise etcd.error("username", "must not be empty")
    tls = security.ca_file is not None or security.cert_file is not None
    plain = [e for e in endpoints if not e.startswith("https://")]
    if tls and plain:
        raise etcd.error("endpoints", f"ca_file and cert_file need https:// endpoints, got {plain}")
    try:
        security.ssl_context()
        if security.password_file is not None:
            security.read_password()
    except EtcdSetupError as exc:
        raise etcd.error("ca_file" if tls else "password_file", str(exc)) from None
    return security


async def tls_refusal(endpoint: str, context: ssl.SSLContext, timeout: float) -> str | None:
    """Why a TLS session with an https `endpoint` fails, or None if it works (or the
    endpoint does not answer at all).

    A diagnosis for the start: httpx reports a refused client certificate (a TLS
    1.3 alert that arrives after the handshake) as a bare ReadError, so this opens
    one session itself and keeps the SSL error.
    """
    url = httpx.URL(endpoint)
    if url.scheme != "https" or not url.host:
        return None
    request = f"GET /health HTTP/1.1\r\nHost: {url.host}\r\nConnection: close\r\n\r\n"
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_ssl_over_tcp_stream(
                url.host, url.port or 443, ssl_context=context
            )
        except OSError:
            return None
        try:
            await stream.send_all(request.encode())
            await stream.receive_some(1024)
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            if isinstance(cause, ssl.SSLError) and not isinstance(
                cause, ssl.SSLEOFError | ssl.SSLZeroReturnError
            ):
                return f"{endpoint}: {cause.reason or cause}"
            return None
        finally:
            await trio.aclose_forcefully(stream)
    return None
