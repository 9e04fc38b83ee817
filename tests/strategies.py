"""Hypothesis strategies shared by the parsers' property tests, and what "safe" means."""

from __future__ import annotations

import posixpath
import re

from hypothesis import strategies as st

from routing.model import RepoName

_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

# Pieces an attacker strings together: traversal, encodings of it, separators,
# control bytes, quoting, and the suffixes the routes look for.
NASTY_PIECES = [
    "/", "//", ".", "..", "...", "%2e", "%2E%2e", "%2f", "%00", "\x00", "\\", "~", "-", "-x",
    ".git", ".git/", "/.git", ".git.git", "alice", "pub", "a", "_", "A-Z.0", " ", "\t", "\n",
    "\r", "'", "\"", "\\'", "!", ";", "$(id)", "`", "?", "#", "&", "=", "*", ":", "@",
    "info/refs", "/info/refs", "?service=git-upload-pack", "?service=git-receive-pack",
    "/git-upload-pack", "/git-receive-pack", "/ssh-upload-pack", "/ssh-upload-archive",
    "/HEAD", "/objects/", "é", "\u202e", "\uff0e\uff0e", "api", "/api/repos/", "/replicas/",
    "/move", "/api/admin/users/", "/keys/", "/tokens/", "SHA256:", "x" * 130,
]  # fmt: skip


def nasty_text(max_pieces: int = 12) -> st.SearchStrategy[str]:
    pieces = st.one_of(st.sampled_from(NASTY_PIECES), st.text(max_size=6))
    return st.lists(pieces, max_size=max_pieces).map("".join)


def nasty_path() -> st.SearchStrategy[str]:
    return st.one_of(nasty_text().map(lambda t: "/" + t), nasty_text())


def assert_safe_repo(repo: RepoName) -> None:
    """An accepted repository path stays `owner/name` under any volume root."""
    for part in (repo.owner, repo.name):
        assert _COMPONENT.fullmatch(part), repo
        assert ".." not in part and "\x00" not in part and "/" not in part, repo
    assert not repo.name.endswith(".git"), repo  # the .git suffix is added once, by bare_dir
    assert repo.path == f"{repo.owner}/{repo.name}"
    joined = posixpath.normpath(posixpath.join("/volume", repo.bare_dir))
    assert joined == f"/volume/{repo.owner}/{repo.name}.git", repo
    assert not posixpath.isabs(repo.bare_dir)


@st.composite
def repo_names(draw: st.DrawFn) -> tuple[str, str]:
    """Valid owner and name pairs, as users choose them."""
    first = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
    rest = st.text(alphabet="abcxyzABC019._-", max_size=20)
    parts = []
    for _ in range(2):
        part = draw(first) + draw(rest)
        if ".." in part or part.endswith(".git"):
            part = part.replace(".", "_")
        parts.append(part)
    return parts[0], parts[1]
