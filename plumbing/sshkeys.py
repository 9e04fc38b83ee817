"""SSH key files that a process makes once and keeps: host keys clients pin,
client keys that peers trust. Shared by the edge and the dev network."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import asyncssh

log = logging.getLogger(__name__)


class KeyFileError(Exception):
    """A key file that cannot be read or made; the message names the file."""


def load_or_create_key(path: Path) -> asyncssh.SSHKey:
    """The private key at `path`; a new ed25519 key (0600, and `.pub`) if missing.

    Made once and kept: clients pin the edge's host key, nodes trust its client key.
    """
    try:
        return asyncssh.read_private_key(path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise KeyFileError(f"cannot use {path}: {exc}") from None
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"gitedge {path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key.export_private_key())
        path.with_name(path.name + ".pub").write_bytes(key.export_public_key())
    except FileExistsError:
        return load_or_create_key(path)  # another process made it first
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc.strerror}") from None
    log.info("new SSH key %s (%s)", path, key.get_fingerprint("sha256"))
    return key


def public_key_line(key: asyncssh.SSHKey) -> str:
    """`ssh-ed25519 AAAA...` without a comment (known_hosts, authorized_keys)."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])
