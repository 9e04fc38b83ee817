"""OpenSSH as the benchmarks' SSH baseline: a client key, a git-only sshd, the client command."""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import ensure_debian_package
from devnet.procs import free_port

SSHD = Path("/usr/sbin/sshd")
GIT_SHELL = Path("/usr/bin/git-shell")


def keygen(path: Path, comment: str) -> Path:
    """A new passphrase-less ed25519 key at `path` (and `path.pub`)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path


def ensure_sshd(log: Callable[[str], None]) -> None:
    ensure_debian_package(SSHD, "openssh-server", log)


@dataclass
class DirectSshd:
    """OpenSSH sshd on a free loopback port, serving git only, in its own temp dir."""

    dir: Path
    port: int
    host_key_line: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key_line}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGTERM the listener and any session sshd still running; always reaps."""
        try:
            children = psutil.Process(self.popen.pid).children(recursive=True)
        except psutil.Error:
            children = []
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for child in children:  # the listener's SIGTERM does not end open sessions
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(children, timeout=5)


def sshd_config(d: Path, port: int, authorized_keys: Path, home: Path) -> str:
    # ForceCommand runs through the login user's shell (`$SHELL -c ...`). Debian's
    # bash sources ~/.bashrc when started by sshd (SSH_SOURCE_BASHRC), and root's
    # may run `pyenv init` etc. SetEnv overrides HOME after sshd sets it, so the
    # shell finds no rc file and git no ~/.gitconfig, like the node's empty HOME.
    force = f'{GIT_SHELL} -c "$SSH_ORIGINAL_COMMAND"'
    return "\n".join(
        [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {d / 'ssh_host_ed25519_key'}",
            f"PidFile {d / 'sshd.pid'}",
            f"AuthorizedKeysFile {authorized_keys}",
            "StrictModes no",  # temp dirs are world-writable up the tree
            "UsePAM no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AcceptEnv GIT_PROTOCOL",
            "PermitUserEnvironment no",
            "PermitUserRC no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "PermitTTY no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "MaxStartups 100",
            "LogLevel INFO",
            f"SetEnv HOME={home} GIT_CONFIG_NOSYSTEM=1 LC_ALL=C",
            f"ForceCommand {force}",
            "",
        ]
    )


def start_sshd(work: Path, client_pub: Path) -> DirectSshd:
    d = work / "sshd"
    home = d / "home"  # empty: no .bashrc, no .gitconfig
    home.mkdir(parents=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
    host_key = keygen(d / "ssh_host_ed25519_key", "bench-sshd")
    authorized_keys = d / "authorized_keys"
    shutil.copyfile(client_pub, authorized_keys)
    port = free_port()
    config = d / "sshd_config"
    config.write_text(sshd_config(d, port, authorized_keys, home))
    test = subprocess.run(
        [str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True, check=False
    )
    if test.returncode != 0:
        raise RuntimeError(f"sshd -t rejected {config}: {test.stderr.strip()}")
    log_path = d / "sshd.log"
    with log_path.open("wb") as log_file:
        popen = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    host_line = " ".join(host_key.with_name(host_key.name + ".pub").read_text().split()[:2])
    server = DirectSshd(d, port, host_line, popen, log_path)
    try:
        deadline = time.monotonic() + 10
        while not _ssh_banner(port):
            if popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {server.log_tail()}")
            time.sleep(0.05)
    except BaseException:
        server.stop()
        raise
    return server


def _ssh_banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            return sock.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


def git_ssh_command(key: Path, known_hosts: Path, *extra: str) -> str:
    # -F /dev/null: no system ssh_config (Debian's sends LANG/LC_* and tries
    # GSSAPI), the same client settings on both paths. git adds -p PORT and
    # -o SendEnv=GIT_PROTOCOL itself (its "ssh" variant).
    return shlex.join(
        [
            "ssh",
            "-F", "/dev/null",
            "-i", str(key),
            "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}",
            *extra,
        ]
    )  # fmt: skip


@contextlib.contextmanager
def running_sshd(work: Path, client_pub: Path) -> Iterator[DirectSshd]:
    server = start_sshd(work, client_pub)
    try:
        yield server
    finally:
        server.stop()


def login_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name
