"""The git commands replication runs on a replica (refs, update-ref, push, fetch)."""

from __future__ import annotations

from pathlib import Path

import trio

from node.peer_tls import PeerCert, git_config
from routing.model import RepoName

GIT_TIMEOUT = 60.0
REPL_PATH = b"/_gitedge/repl/"
TRANSFER_PATH = REPL_PATH + b"git"


def transfer_url(node_url: str, repo: RepoName) -> str:
    """Where a primary pushes a push's objects on a peer: receive-pack without the
    peer's vote (node/repl_api.py, transfer_git_target)."""
    return f"{node_url}{TRANSFER_PATH.decode()}/{repo.bare_dir}"


def with_node_credential(
    env: dict[str, str], secret: str, peer: PeerCert | None = None
) -> dict[str, str]:
    """`env` for a git push to or fetch from a peer node: the node credential as
    http.extraHeader, which the peer's EdgeAuth admits as it admits an edge, and
    for an HTTPS peer its pinned key (node/peer_tls.py).

    In the environment, not `-c` in argv: any local user can read a command
    line (/proc/<pid>/cmdline), an environment only the node's own user.
    GIT_CONFIG_COUNT needs git >= 2.31.
    """
    settings = [("http.extraHeader", f"Authorization: Bearer {secret}"), *git_config(peer)]
    config = {"GIT_CONFIG_COUNT": str(len(settings))}
    for i, (key, value) in enumerate(settings):
        config[f"GIT_CONFIG_KEY_{i}"] = key
        config[f"GIT_CONFIG_VALUE_{i}"] = value
    return {**env, **config}


class GitFailed(Exception):
    """git exited non-zero; the message has its stderr (for the node's log only)."""


async def run_git(
    args: list[str], git_dir: Path, env: dict[str, str], timeout: float, stdin: bytes = b""
) -> bytes:
    """`git <args>` in `git_dir`, within `timeout`; its stdout, or GitFailed."""
    with trio.fail_after(timeout):
        result = await trio.run_process(
            ["git", *args],
            cwd=git_dir,
            env={**env, "GIT_DIR": str(git_dir)},
            stdin=stdin,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if result.returncode != 0:
        raise GitFailed(
            f"git {args[0]} exited {result.returncode}: "
            + result.stderr.decode("utf-8", "replace").strip()[:500]
        )
    return bytes(result.stdout)


async def list_refs(env: dict[str, str], git_dir: Path, prefix: str) -> dict[str, str]:
    """ref -> oid of every ref under `prefix`."""
    out = await run_git(
        ["for-each-ref", "--format=%(objectname) %(refname)", prefix], git_dir, env, GIT_TIMEOUT
    )
    refs: dict[str, str] = {}
    for line in out.decode().splitlines():
        oid, _, ref = line.partition(" ")
        refs[ref] = oid
    return refs
