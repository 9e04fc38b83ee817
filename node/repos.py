"""The bare repositories on this node's volume: where they live, create, delete.

Layout: `<volume>/<owner>/<name>.git`. Names come validated from
`RepoName.parse`, whose components never start with `.`, so the node's own
`.gitedge-*` entries in the volume root can never collide with an owner.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio

from node.git_proto import child_env
from node.refhook import hook_script
from routing.model import RepoName

log = logging.getLogger(__name__)

# New repositories point HEAD at `main`, so a clone after the first push of
# `main` checks it out (git's built-in default is still `master`).
DEFAULT_BRANCH = "main"
INIT_TIMEOUT = 30.0


TMP_DIR_NAME = ".gitedge-tmp"
"""Inside the volume, so renames into and out of place are atomic."""

TRANSFER_PRE_RECEIVE = """#!/bin/sh
# gitedge: a peer node's transfer of a push's objects writes only the hidden
# namespace, and needs no vote (the primary's own push is being voted on).
while read -r old new ref; do
  case "$ref" in
    refs/gitedge/incoming/*) ;;
    *) echo "gitedge: a transfer may only write refs/gitedge/incoming/, not $ref" >&2; exit 1 ;;
  esac
done
"""


DELETE_WAIT = 5.0
"""Below the edge's node-admin timeout (10 s): a removed copy's in-flight requests
(a stale-routed push or fetch) finish first; a longer clone is cut as before."""


class RepoStoreError(Exception):
    """Creating or deleting a repository failed on this node (an operator problem)."""


class RepoStore:
    def __init__(self, volume_dir: Path) -> None:
        self.root = Path(volume_dir).absolute()
        # Temp dirs live inside the volume so a rename into place is atomic.
        self.tmp_dir = self.root / TMP_DIR_NAME
        # git's HOME: an empty dir, so no user's ~/.gitconfig applies to served repos.
        self.home_dir = self.root / ".gitedge-home"
        # Set by the node once it listens: how the replication hooks reach it.
        self.hook_env: dict[str, str] = {}
        # core.hooksPath of a peer node's transfer push (node/repl_api.py): no vote.
        self.transfer_hooks = self.root / ".gitedge-transfer-hooks"
        self._serving: dict[RepoName, int] = {}
        self._idle: dict[RepoName, trio.Event] = {}

    def prepare(self) -> None:
        """Create the volume's own dirs and drop temp dirs left by a crash (blocking)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.home_dir.mkdir(exist_ok=True)
        self.transfer_hooks.mkdir(exist_ok=True)
        hook = self.transfer_hooks / "pre-receive"
        hook.write_text(TRANSFER_PRE_RECEIVE)
        hook.chmod(0o755)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir()

    def path(self, repo: RepoName) -> Path:
        return self.root / repo.bare_dir

    def existing(self, repo: RepoName) -> Path | None:
        path = self.path(repo)
        return path if path.is_dir() else None

    @contextmanager
    def serving(self, repo: RepoName) -> Iterator[Path | None]:
        """`existing(repo)`, counted as in use until the block ends: a delete waits
        for it (DELETE_WAIT at most). A request routed here by an edge whose cache
        had not yet seen a move then runs on the whole copy (a push is refused by
        its vote, "push again"), instead of git failing in a directory renamed away
        between the check and its start ("not a git repository")."""
        path = self.existing(repo)
        if path is None:
            yield None
            return
        self._serving[repo] = self._serving.get(repo, 0) + 1
        try:
            yield path
        finally:
            left = self._serving.pop(repo) - 1
            if left:
                self._serving[repo] = left
            elif (idle := self._idle.pop(repo, None)) is not None:
                idle.set()

    def env(self, git_protocol: str | None = None) -> dict[str, str]:
        return {**child_env(os.environ, self.home_dir, git_protocol), **self.hook_env}

    async def create(self, repo: RepoName, *, replicated: bool = False) -> bool:
        """`git init --bare` the repo unless it exists; True if this call created it.

        Initialised in a temp dir and renamed into place, so a reader never sees
        a half-made repository and two concurrent creates cannot both win.
        """
        final = self.path(repo)
        if final.is_dir():
            return False
        tmp = Path(tempfile.mkdtemp(prefix="init-", dir=self.tmp_dir))
        try:
            with trio.fail_after(INIT_TIMEOUT):
                result = await trio.run_process(
                    [
                        "git",
                        "init",
                        "--bare",
                        "--quiet",
                        f"--initial-branch={DEFAULT_BRANCH}",
                        str(tmp),
                    ],
                    env=self.env(),
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            if result.returncode != 0:
                raise RepoStoreError(
                    f"git init for {repo} failed ({result.returncode}): "
                    + result.stderr.decode("utf-8", "replace").strip()
                )
            if replicated:
                await trio.to_thread.run_sync(install_replication_hooks, tmp)
            return await trio.to_thread.run_sync(_move_into_place, tmp, final)
        finally:
            with trio.move_on_after(10, shield=True):
                await trio.to_thread.run_sync(_remove, tmp)

    async def delete(self, repo: RepoName) -> bool:
        """Remove the repo; False if it did not exist. Requests being served from it
        finish first (DELETE_WAIT at most); then it is gone at once (rename), and erased."""
        with trio.move_on_after(DELETE_WAIT):
            while self._serving.get(repo):
                await self._idle.setdefault(repo, trio.Event()).wait()
        final = self.path(repo)
        trash = Path(tempfile.mkdtemp(prefix="delete-", dir=self.tmp_dir)) / "repo"
        try:
            try:
                os.rename(final, trash)
            except FileNotFoundError:
                return False
            return True
        finally:
            with trio.move_on_after(30, shield=True):
                await trio.to_thread.run_sync(_remove, trash.parent)


REPLICATION_HOOKS = ("pre-receive", "post-receive")
_HIDE_INTERNAL_REFS = "[uploadpack]\n\thideRefs = refs/gitedge/\n"


def install_replication_hooks(git_dir: Path) -> None:
    """pre-receive votes, post-receive ends the push (node/refhook.py); clients
    never see the node's in-flight objects under refs/gitedge/ (uploadpack.hideRefs).
    Idempotent (blocking)."""
    hooks = git_dir / "hooks"
    hooks.mkdir(exist_ok=True)
    for hook in REPLICATION_HOOKS:
        path = hooks / hook
        path.write_text(hook_script(sys.executable, hook))
        path.chmod(0o755)
    config = git_dir / "config"
    if _HIDE_INTERNAL_REFS not in config.read_text():
        with config.open("a") as out:
            out.write(_HIDE_INTERNAL_REFS)


def replication_hooks_installed(git_dir: Path) -> bool:
    return all((git_dir / "hooks" / hook).is_file() for hook in REPLICATION_HOOKS)


def remove_replication_hooks(git_dir: Path) -> None:
    """Back to a plain repository (factor 1 again, after a move): no hooks, no hideRefs
    (blocking). Replaced by rename, so a receive-pack never reads a half-written config."""
    for hook in REPLICATION_HOOKS:
        (git_dir / "hooks" / hook).unlink(missing_ok=True)
    config = git_dir / "config"
    text = config.read_text()
    if _HIDE_INTERNAL_REFS in text:
        tmp = config.with_name("config.gitedge-tmp")
        tmp.write_text(text.replace(_HIDE_INTERNAL_REFS, ""))
        os.replace(tmp, config)


def _move_into_place(tmp: Path, final: Path) -> bool:
    final.parent.mkdir(exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            return False  # a concurrent create won
        raise
    # The caller answers "created": make the new directory entry durable first.
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
