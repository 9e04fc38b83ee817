"""parse_command: the exec requests git's ssh transport sends, and everything else refused.

git sends `git-upload-pack '/owner/name.git'` (gitprotocol-pack, "SSH Transport";
the path quoted by quote.c's sq_quote). Each refusal is checked by its message,
because that line is what the client sees on stderr.
"""

from __future__ import annotations

import pytest

from gitproto.protocol import Service
from gitproto.ssh_command import (
    MAX_COMMAND,
    CommandRefused,
    GitCommand,
    parse_command,
)
from routing.model import RepoName

HELLO = RepoName("alice", "hello")


def _refused(raw: str | bytes | None) -> str:
    """The one-line reason parse_command gives for refusing `raw`."""
    with pytest.raises(CommandRefused) as info:
        parse_command(raw)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message
    return message


# -- what git sends ----------------------------------------------------------------


@pytest.mark.parametrize("service", list(Service))
@pytest.mark.parametrize(
    "argument",
    [
        "'/alice/hello.git'",  # what git sends for ssh://host/alice/hello.git
        "'alice/hello.git'",  # scp-style host:alice/hello.git
        "'/alice/hello'",  # without .git
        "'alice/hello'",
        "/alice/hello.git",  # unquoted, as typed by hand: `ssh host git-upload-pack a/b`
        "alice/hello",
    ],
)
def test_accepts_each_service_and_path_form(service: Service, argument: str) -> None:
    assert parse_command(f"{service} {argument}") == GitCommand(service, HELLO)


@pytest.mark.parametrize("service", list(Service))
def test_accepts_the_spaced_git_form(service: Service) -> None:
    sub = service.removeprefix("git-")
    assert parse_command(f"git {sub} 'alice/hello.git'") == GitCommand(service, HELLO)
    assert parse_command(f"git {sub} '/alice/hello'") == GitCommand(service, HELLO)


@pytest.mark.parametrize("service", list(Service))
def test_accepts_bytes(service: Service) -> None:
    raw = f"{service} '/alice/hello.git'".encode()
    assert parse_command(raw) == GitCommand(service, HELLO)


def test_only_receive_pack_writes() -> None:
    assert parse_command("git-receive-pack 'alice/hello'").service.writes
    assert not parse_command("git-upload-pack 'alice/hello'").service.writes
    assert not parse_command("git-upload-archive 'alice/hello'").service.writes


def test_names_with_every_allowed_character() -> None:
    command = parse_command("git-upload-pack '/Al_ice-9/my.repo_v2-x.git'")
    assert command.repo == RepoName("Al_ice-9", "my.repo_v2-x")


# -- to_wire -----------------------------------------------------------------------


@pytest.mark.parametrize("service", list(Service))
@pytest.mark.parametrize("raw", ["'/alice/hello.git'", "alice/hello", "'Al_ice-9/my.repo_v2-x'"])
def test_to_wire_round_trips(service: Service, raw: str) -> None:
    command = parse_command(f"{service} {raw}")
    wire = command.to_wire()
    assert parse_command(wire) == command
    assert parse_command(wire.encode()) == command
    # Canonical: the form git itself sends to a node, quoted, with `.git`.
    assert wire == f"{service} '{command.repo.owner}/{command.repo.name}.git'"


def test_to_wire_of_a_constructed_command() -> None:
    command = GitCommand(Service.RECEIVE_PACK, HELLO)
    assert command.to_wire() == "git-receive-pack 'alice/hello.git'"
    assert parse_command(command.to_wire()) == command


# -- truncated and with trailing bytes ------------------------------------------------

QUOTED = "git-upload-pack '/alice/hello.git'"


@pytest.mark.parametrize("cut", range(len(QUOTED)))
def test_every_truncation_of_a_quoted_command_is_refused(cut: int) -> None:
    _refused(QUOTED[:cut])
    _refused(QUOTED[:cut].encode())


@pytest.mark.parametrize(
    "trailer",
    [" ", "x", "'", "\\'", " 'c/d'", ";", " ;id", "&", "|", "`", "$(id)", "#", "\t"],
)
def test_anything_after_the_closing_quote_is_refused(trailer: str) -> None:
    message = _refused(QUOTED + trailer)
    assert message == "exactly one repository path is allowed"


# -- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", b""])
def test_no_command_is_a_shell_request(raw: str | bytes | None) -> None:
    assert _refused(raw) == "interactive shells are not supported"


@pytest.mark.parametrize(
    ("raw", "verb"),
    [
        ("sh", "sh"),
        ("sh -c id", "sh"),
        ("id", "id"),
        ("git-shell -c 'git-upload-pack a/b'", "git-shell"),
        ("scp -t /", "scp"),
        ("git-upload-packs 'a/b'", "git-upload-packs"),
        ("GIT-UPLOAD-PACK 'a/b'", "GIT-UPLOAD-PACK"),
        ("git-upload-pack\t'a/b'", "git-upload-pack\t'a/b'"),
        ("git config 'a/b'", "git-config"),
        ("git ", "git-"),
        ("git  upload-pack 'a/b'", "git-"),
        ("git git-upload-pack 'a/b'", "git-git-upload-pack"),
        ("git", "git"),
        (" git-upload-pack 'a/b'", ""),
        ("rm -rf /", "rm"),
    ],
)
def test_unknown_verbs_are_refused(raw: str, verb: str) -> None:
    assert _refused(raw) == f"command not allowed: {verb!r}"


def test_unknown_verb_is_shown_shortened() -> None:
    verb = "x" * 200
    assert _refused(verb + " 'a/b'") == f"command not allowed: {'x' * 40!r}"


@pytest.mark.parametrize(
    ("raw", "service"),
    [
        ("git-upload-pack", "git-upload-pack"),
        ("git-upload-pack ", "git-upload-pack"),
        ("git-receive-pack", "git-receive-pack"),
        ("git upload-archive", "git-upload-archive"),
        ("git upload-pack ", "git-upload-pack"),
    ],
)
def test_missing_path_is_refused(raw: str, service: str) -> None:
    assert _refused(raw) == f"{service} needs a repository path"


@pytest.mark.parametrize(
    "raw",
    [
        "git-upload-pack 'a/b.git' 'c/d.git'",
        "git-upload-pack 'a/b.git''c/d.git'",
        "git-upload-pack a/b.git c/d.git",
        "git-upload-pack  'a/b.git'",  # two spaces: the argument is ` 'a/b.git'`
        "git-upload-pack a/b.git\tc/d.git",
    ],
)
def test_two_paths_are_refused(raw: str) -> None:
    assert _refused(raw) == "exactly one repository path is allowed"


@pytest.mark.parametrize(
    "raw",
    [
        "git-upload-pack 'a/b.git' ; id",
        "git-upload-pack 'a/b.git';id",
        "git-upload-pack 'a/b.git' && id",
        "git-upload-pack 'a/b.git'&&id",
        "git-upload-pack 'a/b.git' | id",
        "git-upload-pack 'a/b.git'`id`",
        "git-upload-pack 'a/b.git'$(id)",
        "git-upload-pack a/b.git;id",
        "git-upload-pack a/b.git ; id",
        "git-upload-pack a/b.git&&id",
        "git-upload-pack a/b.git|id",
        "git-upload-pack a/b.git`id`",
        "git-upload-pack a/b.git$(id)",
        "git-upload-pack a/b.git>/tmp/x",
        "git-upload-pack a/*",
        "git-upload-pack ~/b.git",
        'git-upload-pack "a/b.git"',
        "git-upload-pack a/b\\.git",
    ],
)
def test_shell_syntax_outside_quotes_is_refused(raw: str) -> None:
    assert _refused(raw) == "exactly one repository path is allowed"


@pytest.mark.parametrize(
    "raw",
    [
        "git-upload-pack 'a/b.git;id'",
        "git-upload-pack 'a/b.git && id'",
        "git-upload-pack 'a/b.git|id'",
        "git-upload-pack 'a/`id`'",
        "git-upload-pack 'a/$(id)'",
        "git-upload-pack '$(id)/b'",
        "git-upload-pack 'a/b c'",
        "git-upload-pack '~alice/b'",
        "git-upload-pack 'a/*'",
    ],
)
def test_shell_syntax_inside_quotes_is_a_bad_name(raw: str) -> None:
    assert _refused(raw).startswith("bad repository path: ")


@pytest.mark.parametrize(
    "raw", ["git-upload-pack '/alice/hello.git", "git-upload-pack '", "git-upload-pack 'a/b'\\''c"]
)
def test_unterminated_quote_is_refused(raw: str) -> None:
    assert _refused(raw) == "unterminated quote in repository path"


@pytest.mark.parametrize(
    "raw",
    [
        "git-upload-pack 'a/b'\\''c'",  # sq_quote of a/b'c
        "git-upload-pack 'a/b'\\!'c'",  # sq_quote of a/b!c
        "git-upload-pack 'a/b'\\'''",  # sq_quote of a/b'
        "git-upload-pack ''\\''a/b'",  # sq_quote of 'a/b
    ],
)
def test_sq_quote_escapes_are_undone_then_judged_as_a_name(raw: str) -> None:
    assert _refused(raw) == (
        "bad repository path: use ASCII letters, digits and ._- (not leading . or -, no ..)"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "git-upload-pack 'a/b'\\'",  # an escape must be followed by a new quote
        "git-upload-pack 'a/b'\\x'c'",  # only \' and \! are sq_quote escapes
        "git-upload-pack 'a/b'\\\\'c'",
    ],
)
def test_escapes_sq_quote_never_writes_are_refused(raw: str) -> None:
    assert _refused(raw) == "exactly one repository path is allowed"


@pytest.mark.parametrize(
    "path",
    [
        "../etc/passwd",
        "alice/..",
        "alice/../bob",
        "alice/a..b",
        "../../b.git",
        "alice/.hidden",
        ".alice/b",
        "-alice/b",
        "alice/-b",
        "alice/--upload-pack=touch",
        "--help",
        "alice",
        "alice/",
        "/alice",
        "//alice/hello",
        "alice/hello/",
        "alice/hello/extra",
        "alice/hello.git.git",
        "alice//hello",
        "",
        "a/" + "b" * 101,
    ],
)
@pytest.mark.parametrize("quoted", [True, False])
def test_bad_names_are_refused(path: str, quoted: bool) -> None:
    argument = f"'{path}'" if quoted else path
    message = _refused(f"git-upload-pack {argument}")
    if not quoted and path == "":
        assert message == "git-upload-pack needs a repository path"
    else:
        assert message.startswith("bad repository path: ")


def test_non_ascii_text_is_a_bad_name() -> None:
    assert _refused("git-upload-pack 'alice/h\u00e9llo'") == (
        "bad repository path: repository names are ASCII only"
    )
    assert _refused("git-upload-pack 'alice/hello\u2044x'") == (
        "bad repository path: repository names are ASCII only"
    )


@pytest.mark.parametrize(
    "raw",
    [
        "git-upload-pack 'alice/h\u00e9llo'".encode(),
        b"git-upload-pack 'alice/hello\xff'",
        b"\xffgit-upload-pack 'alice/hello'",
        b"git-upload-pack '\xc0\xafalice/hello'",  # overlong UTF-8 for '/'
    ],
)
def test_non_ascii_bytes_are_refused(raw: bytes) -> None:
    assert _refused(raw) == "command is not ASCII"


@pytest.mark.parametrize("char", ["\r", "\n", "\0"])
@pytest.mark.parametrize(
    "template",
    [
        "git-upload-pack 'alice/hello.git'{c}",
        "git-upload-pack 'alice/hello.git'{c}id",
        "git-upload-pack 'alice/{c}hello.git'",
        "git-upload-pack alice/hello.git{c}",
        "{c}git-upload-pack 'alice/hello.git'",
        "git-upload-pack{c}'alice/hello.git'",
    ],
)
def test_cr_lf_nul_are_refused(char: str, template: str) -> None:
    raw = template.format(c=char)
    assert _refused(raw) == "command contains control characters"
    assert _refused(raw.encode()) == "command contains control characters"


def test_other_control_characters_are_a_bad_name() -> None:
    assert _refused("git-upload-pack 'alice/hel\x1blo'").startswith("bad repository path: ")
    assert _refused("git-upload-pack 'alice/hel\x7flo'").startswith("bad repository path: ")


def test_over_long_commands_are_refused() -> None:
    prefix = "git-upload-pack 'alice/"
    longest = prefix + "x" * (MAX_COMMAND - len(prefix) - 1) + "'"
    assert len(longest) == MAX_COMMAND
    # At the limit the length is not the reason (the name is: components are <= 100).
    assert _refused(longest) != "command too long"
    assert _refused(longest + "x") == "command too long"
    assert _refused((longest + "x").encode()) == "command too long"
    assert _refused("git-upload-pack '" + "a/" * 100_000 + "'") == "command too long"


def test_refusal_is_a_value_error() -> None:
    # Callers that only know ValueError (e.g. generic validation) still catch it.
    with pytest.raises(ValueError):
        parse_command("id")
