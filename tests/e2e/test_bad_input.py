"""Bad input from a raw socket against a real edge: what reaches the logs and the client.

Regressions of issue 9 ("Logs can be forged", "The node's volume path leaks"):
a request head's first line was logged up to 200 bytes as it came, which
wrote alice's `Authorization: Basic ...` into the access log and, with an
embedded line end, a forged access-log entry. Every log line here is read
back from the edge's and the nodes' log files.
"""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from devnet.network import Devnet
from tests.e2e import test_ssh
from tests.e2e.conftest import Git, create_repo, poll, raw_exchange, repo_url
from tests.e2e.test_ssh import SshClient

# The SSH tests' fixture: alice with her key registered, OpenSSH as her client.
alice = test_ssh.alice

FORGED = "203.0.113.9 GET /forged HTTP/1.1 200 0.001s node=fra-1"


def _logs(net: Devnet) -> str:
    return "".join(p.read_text(errors="replace") for p in (net.work_dir / "logs").glob("*.log"))


def _log_lines_since(net: Devnet, mark: int) -> list[str]:
    return net.edge.process.log_path.read_text(errors="replace")[mark:].splitlines()


def _mark(net: Devnet) -> int:
    return len(net.edge.process.log_path.read_text(errors="replace"))


def _access_lines(net: Devnet, mark: int, count: int) -> list[str]:
    """The access-log lines since `mark` (API calls of the fixtures aside), once `count`."""

    def lines() -> list[str] | None:
        found = [
            line
            for line in _log_lines_since(net, mark)
            if " edge.access: " in line and "/api/" not in line
        ]
        return found if len(found) >= count else None

    return poll(10, lines, f"{count} access-log lines")


@pytest.fixture(scope="module")
def basic(net: Devnet) -> str:
    """alice's real credentials, as a client would send them."""
    return base64.b64encode(f"alice:{net.user_token('alice')}".encode()).decode()


def _assert_clean(net: Devnet, secret: str) -> None:
    logs = _logs(net)
    assert secret not in logs
    assert net.user_token("alice") not in logs
    assert FORGED not in logs.replace("\\r", "\r").replace("\\n", "\n").splitlines()
    for line in logs.splitlines():
        assert not line.startswith("203.0.113.9"), f"a forged log line: {line!r}"


@pytest.mark.parametrize(
    "end",
    [b"\n", b"\r", b"\x0b", b"\x00"],
    ids=["bare-LF", "bare-CR", "VT", "NUL"],
)
def test_request_line_with_an_embedded_line_end_forges_nothing_and_leaks_no_credential(
    net: Devnet, basic: str, end: bytes
) -> None:
    mark = _mark(net)
    head = (
        b"GET /alice/pub.git/info/refs?service=git-upload-pack HTTP/1.1"
        + end
        + FORGED.encode()
        + end
        + b"Authorization: Basic "
        + basic.encode()
        + b"\r\nHost: x\r\n\r\n"
    )
    answer = raw_exchange(net.edge.https_url, net.ca_file, head)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    (line,) = _access_lines(net, mark, 1)
    assert " 400 " in line
    _assert_clean(net, basic)


def test_a_header_value_h11_refuses_is_not_logged_or_echoed(net: Devnet, basic: str) -> None:
    # h11's message for it quotes the whole header line: "Illegal header value b'Basic ...'".
    mark = _mark(net)
    head = (
        b"GET /alice/pub.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Basic " + basic.encode() + b"\x00\r\n\r\n"
    )
    answer = raw_exchange(net.edge.https_url, net.ca_file, head)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert basic.encode() not in answer
    _access_lines(net, mark, 1)
    _assert_clean(net, basic)


def test_credentials_in_the_target_are_redacted(net: Devnet) -> None:
    token = net.user_token("alice")
    mark = _mark(net)
    target = f"/alice/pub.git/info/refs?service=git-upload-pack&private_token={token}"
    raw_exchange(
        net.edge.https_url,
        net.ca_file,
        f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    (line,) = _access_lines(net, mark, 1)
    assert "private_token=[redacted]" in line
    assert token not in _logs(net)


def test_a_token_sent_as_the_user_name_is_not_logged(net: Devnet) -> None:
    # git with the token in the URL's user part and no password sends user=token.
    token = net.user_token("alice")
    creds = base64.b64encode(f"{token}x:".encode()).decode()
    mark = _mark(net)
    answer = raw_exchange(
        net.edge.https_url,
        net.ca_file,
        b"GET /alice/pub.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Basic " + creds.encode() + b"\r\nConnection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    (line,) = _access_lines(net, mark, 1)
    assert " 401 " in line
    assert token not in _logs(net)
    secret = token.rsplit("_", 1)[1]
    assert secret[:16] not in _logs(net)


def test_a_long_target_is_capped(net: Devnet) -> None:
    mark = _mark(net)
    target = "/alice/" + "a" * 8000 + ".git/info/refs?service=git-upload-pack"
    raw_exchange(
        net.edge.https_url,
        net.ca_file,
        f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    (line,) = _access_lines(net, mark, 1)
    assert len(line) < 600, len(line)


# -- SSH -----------------------------------------------------------------------------


def test_an_ssh_command_with_control_characters_is_logged_escaped(
    net: Devnet, alice: SshClient
) -> None:
    mark = _mark(net)
    command = f"git-upload-pack 'alice/x.git'\x1b[2K\r{FORGED}"
    ran = alice.run("git@127.0.0.1", command)
    assert ran.returncode == 1
    assert ran.stderr.startswith("gitedge: "), ran.stderr
    (line,) = _access_lines(net, mark, 1)
    assert "\x1b" not in line and "\r" not in line
    assert "\\x1b" in line  # the operator still sees what was sent
    _assert_clean(net, "no-secret-here")


def test_the_node_volume_path_reaches_no_ssh_client(
    net: Devnet, git: Git, alice: SshClient, tmp_path: Path
) -> None:
    assert create_repo(net, "alice/archive", region="fra").status_code == 201
    work = git.new_worktree(tmp_path / "work")
    git.commit(work, "a.txt", b"a\n")
    git.run("push", "-q", repo_url(net, "alice/archive"), "main", cwd=work)
    volumes = str(net.work_dir / "volumes")
    # git upload-archive answers "'../x' is outside repository at '<its path>/.'" in
    # side-band 3 of its stdout, not on stderr.
    for pathspec in ("../x", "/etc"):
        proc = subprocess.run(
            ["git", "archive", f"--remote={net.edge.ssh_url}/alice/archive.git", "HEAD", pathspec],
            env={**git.env(), "GIT_SSH_COMMAND": alice.git_ssh_command()},
            capture_output=True,
            timeout=60,
        )
        assert proc.returncode != 0
        seen = proc.stdout + proc.stderr
        # git's own complaint still reaches the client, with the path the client knows.
        assert b"is outside repository at 'alice/archive.git/.'" in seen, seen
        assert volumes.encode() not in seen, seen
        assert b"volumes/" not in seen, seen
    # A good archive comes through whole: side-band 1 is not touched.
    proc = subprocess.run(
        ["git", "archive", f"--remote={net.edge.ssh_url}/alice/archive.git", "HEAD"],
        env={**git.env(), "GIT_SSH_COMMAND": alice.git_ssh_command()},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    local = subprocess.run(
        ["git", "archive", "HEAD"], cwd=work, capture_output=True, check=True, timeout=60
    )
    assert proc.stdout == local.stdout
