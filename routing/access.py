"""Who may read and write a repository. Pure; one model for both fronts.

Reading needs the repo to be public, or the user to be its owner, a reader or
a writer. Writing (git-receive-pack) needs the owner or a writer.
"""

from __future__ import annotations

from routing.model import RepoRecord


def can_read(repo: RepoRecord, user: str | None) -> bool:
    if repo.public:
        return True
    return user is not None and (
        user == repo.owner_user or user in repo.readers or user in repo.writers
    )


def can_write(repo: RepoRecord, user: str | None) -> bool:
    return user is not None and (user == repo.owner_user or user in repo.writers)
