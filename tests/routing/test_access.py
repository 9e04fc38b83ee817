"""can_read / can_write: who may fetch from and push to a repository."""

from __future__ import annotations

import pytest

from routing.access import can_read, can_write
from routing.model import Region, RepoName, RepoRecord, VolumeId

NAME = RepoName("alice", "project")


def repo(
    *,
    owner: str = "alice",
    public: bool = False,
    readers: tuple[str, ...] = (),
    writers: tuple[str, ...] = (),
    name: RepoName = NAME,
) -> RepoRecord:
    return RepoRecord(
        name,
        VolumeId("vol-1"),
        Region("iad"),
        1700000000.0,
        owner=owner,
        public=public,
        readers=readers,
        writers=writers,
    )


SHARED = repo(readers=("rita",), writers=("walt",))


# -- private -------------------------------------------------------------------------


def test_private_repo_owner_reads_and_writes() -> None:
    assert can_read(SHARED, "alice")
    assert can_write(SHARED, "alice")


def test_private_repo_reader_reads_but_does_not_write() -> None:
    assert can_read(SHARED, "rita")
    assert not can_write(SHARED, "rita")


def test_private_repo_writer_reads_and_writes() -> None:
    # A writer need not also be listed as a reader.
    assert can_read(SHARED, "walt")
    assert can_write(SHARED, "walt")


@pytest.mark.parametrize("user", ["mallory", None, "", "Alice", "ALICE", "alice ", "rit", "walter"])
def test_private_repo_strangers_and_anonymous_get_nothing(user: str | None) -> None:
    assert not can_read(SHARED, user)
    assert not can_write(SHARED, user)


def test_private_repo_with_no_grants_is_owner_only() -> None:
    record = repo()
    assert can_read(record, "alice") and can_write(record, "alice")
    assert not can_read(record, "bob")
    assert not can_write(record, "bob")


# -- public --------------------------------------------------------------------------


@pytest.mark.parametrize("user", [None, "mallory", "rita", "walt", "alice"])
def test_public_repo_is_readable_by_everyone(user: str | None) -> None:
    assert can_read(repo(public=True, readers=("rita",), writers=("walt",)), user)


def test_public_repo_is_not_writable_by_everyone() -> None:
    record = repo(public=True, readers=("rita",), writers=("walt",))
    assert not can_write(record, None)
    assert not can_write(record, "mallory")
    assert not can_write(record, "rita")
    assert can_write(record, "walt")
    assert can_write(record, "alice")


# -- owner ---------------------------------------------------------------------------


def test_explicit_owner_is_the_owner() -> None:
    record = repo(owner="bob", name=RepoName("team", "tools"))
    assert record.owner_user == "bob"
    assert can_read(record, "bob")
    assert can_write(record, "bob")
    # The name's first component is only a stand-in for records without an owner.
    assert not can_read(record, "team")
    assert not can_write(record, "team")


def test_legacy_record_without_owner_falls_back_to_the_names_owner() -> None:
    record = repo(owner="")
    assert record.owner_user == "alice"
    assert can_read(record, "alice")
    assert can_write(record, "alice")
    assert not can_read(record, "")
    assert not can_write(record, "")
    assert not can_read(record, None)
    assert not can_write(record, None)


def test_legacy_record_keeps_its_grants() -> None:
    record = repo(owner="", readers=("rita",), writers=("walt",))
    assert can_read(record, "rita") and not can_write(record, "rita")
    assert can_read(record, "walt") and can_write(record, "walt")
    assert not can_read(record, "mallory")


def test_a_user_listed_as_reader_and_writer_writes() -> None:
    record = repo(readers=("pat",), writers=("pat",))
    assert can_read(record, "pat")
    assert can_write(record, "pat")


def test_membership_is_by_whole_name() -> None:
    # Tuples, not strings: "al" is not "in" ("alice",) the way it is in "alice".
    record = repo(readers=("alice2",), writers=("walter",))
    for user in ("al", "alice2x", "walt", "ice2", "e2"):
        assert not can_read(record, user)
        assert not can_write(record, user)
