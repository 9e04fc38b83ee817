"""RepoName.parse and parse_region: every repo path a client sends goes through here."""

from __future__ import annotations

import pytest

from routing.model import (
    MAX_COMPONENT_LEN,
    InvalidRegion,
    InvalidRepoName,
    NodeId,
    Region,
    RepoLocation,
    RepoName,
    VolumeId,
    parse_region,
)


@pytest.mark.parametrize(
    ("raw", "owner", "name"),
    [
        ("alice/project", "alice", "project"),
        ("alice/project.git", "alice", "project"),
        ("A_1/b-2.c", "A_1", "b-2.c"),
        ("0/9", "0", "9"),
        ("_x/_y", "_x", "_y"),
        ("o/name.", "o", "name."),
        ("o/n.gitx", "o", "n.gitx"),
        ("o/n.GIT", "o", "n.GIT"),
        ("git/git.git", "git", "git"),
    ],
)
def test_valid_names(raw: str, owner: str, name: str) -> None:
    repo = RepoName.parse(raw)
    assert (repo.owner, repo.name) == (owner, name)
    assert repo.path == f"{owner}/{name}"
    assert str(repo) == repo.path
    assert repo.bare_dir == f"{owner}/{name}.git"


def test_git_suffix_is_optional_and_names_compare_equal() -> None:
    assert RepoName.parse("a/b.git") == RepoName.parse("a/b")
    assert hash(RepoName.parse("a/b.git")) == hash(RepoName.parse("a/b"))


def test_names_are_case_sensitive() -> None:
    assert RepoName.parse("A/B") != RepoName.parse("a/b")


def test_names_order_by_owner_then_name() -> None:
    names = [RepoName.parse(r) for r in ("b/a", "a/z", "a/b")]
    assert [n.path for n in sorted(names)] == ["a/b", "a/z", "b/a"]


def test_git_suffix_is_stripped_only_once() -> None:
    with pytest.raises(InvalidRepoName, match=r"\.git twice"):
        RepoName.parse("a/b.git.git")


def test_component_at_max_length_is_accepted() -> None:
    owner = "o" * MAX_COMPONENT_LEN
    name = "n" * MAX_COMPONENT_LEN
    assert RepoName.parse(f"{owner}/{name}.git") == RepoName(owner, name)


@pytest.mark.parametrize(
    "raw",
    [
        "o" * (MAX_COMPONENT_LEN + 1) + "/x",
        "x/" + "n" * (MAX_COMPONENT_LEN + 1),
        "x/" + "n" * (MAX_COMPONENT_LEN + 1) + ".git",
    ],
)
def test_over_long_component_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRepoName, match="longer than"):
        RepoName.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "../x",
        "a/..",
        "../..",
        "a/b/../c",
        "a/..b",
        "a/b..",
        "a/b..c",
        "a..b/c",
        "./x",
        "a/.",
        "a/..git",
    ],
)
def test_traversal_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRepoName):
        RepoName.parse(raw)


@pytest.mark.parametrize("raw", ["-x/y", "x/-y", "x/--upload-pack=evil", ".x/y", "x/.y", "x/.git"])
def test_leading_dash_or_dot_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRepoName):
        RepoName.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "ålice/x",
        "alice/ẋ",
        "\uff41lice/x",  # fullwidth 'a'
        "alice\uff0fx",  # fullwidth solidus is not a separator
        "a/b\u2024git",  # one-dot leader, looks like '.'
        "alice/x\u200b",  # zero-width space
    ],
)
def test_non_ascii_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRepoName, match="ASCII"):
        RepoName.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".git",
        "/",
        "a/",
        "/b",
        "a/.git",
        "a//b",
    ],
)
def test_empty_component_or_name_is_refused(raw: str) -> None:
    with pytest.raises(InvalidRepoName):
        RepoName.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        " a/b",
        "a/b ",
        "a /b",
        "a/b\n",
        "a/b\r",
        "a\t/b",
        "a/b\x00",
        "a\x00/b",
        "a/b\x00.git",
    ],
)
def test_whitespace_and_control_characters_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRepoName):
        RepoName.parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "a",
        "a.git",
        "a/b/c",
        "a/b/c.git",
        "/a/b",
        "/a/b.git",
        "a/b/",
        "a\\b",
        "a/b\\c",
        "a/b:c",
        "a/b?c",
        "a/b%2fc",
        "a/%2e%2e",
        "~a/b",
        "a/b*",
    ],
)
def test_wrong_shape_or_characters_are_refused(raw: str) -> None:
    with pytest.raises(InvalidRepoName):
        RepoName.parse(raw)


def test_invalid_repo_name_is_a_value_error() -> None:
    # Callers that catch ValueError (the cache's delete path) rely on this.
    with pytest.raises(ValueError):
        RepoName.parse("../x")


@pytest.mark.parametrize("raw", ["iad", "us-east-1", "a", "0", "a" * 32, "9-z"])
def test_valid_regions(raw: str) -> None:
    assert parse_region(raw) == raw


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "IAD",
        "Iad",
        "-iad",
        "us_east",
        "us east",
        "iad\n",
        " iad",
        "a" * 33,
        "ïad",
        "iad.1",
        "iad/x",
    ],
)
def test_invalid_regions(raw: str) -> None:
    with pytest.raises(InvalidRegion):
        parse_region(raw)


def test_invalid_region_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_region("NOPE")


def test_repo_location_to_json_names_every_field() -> None:
    location = RepoLocation(
        repo=RepoName.parse("alice/project.git"),
        region=Region("iad"),
        volume_id=VolumeId("vol-1"),
        node_id=NodeId("node-a"),
        node_url="http://10.0.0.1:8080",
    )
    assert location.to_json() == {
        "repo": "alice/project",
        "region": "iad",
        "volume": "vol-1",
        "node": "node-a",
    }
