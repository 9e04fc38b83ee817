"""The SSH exec command: the only thing a git client may ask the SSH front to run.

Sans-IO. git's ssh transport sends `git-upload-pack '/owner/name.git'`: the
service, one space, and the path quoted the way git's `sq_quote` does it
(gitprotocol-pack, "SSH Transport"; quote.c). Anything else is refused with
a one-line reason, like gitlab-shell's commandargs: an allow-list of verbs,
exactly one argument, and the repo name validated like on HTTPS.
"""

from __future__ import annotations

from dataclasses import dataclass

from gitproto.protocol import Service
from routing.model import InvalidRepoName, RepoName

MAX_COMMAND = 1024


@dataclass(frozen=True)
class GitCommand:
    service: Service
    repo: RepoName

    def to_wire(self) -> str:
        """The command as the edge sends it on to a node (canonical path, quoted)."""
        return f"{self.service} '{self.repo.bare_dir}'"


class CommandRefused(ValueError):
    """A command we will not run; the message is safe to show the client."""


def parse_command(raw: str | bytes | None) -> GitCommand:
    """Parse an exec request; raise CommandRefused with a one-line reason."""
    if raw is None or raw == "" or raw == b"":
        raise CommandRefused("interactive shells are not supported")
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("ascii")
        except UnicodeDecodeError:
            raise CommandRefused("command is not ASCII") from None
    if len(raw) > MAX_COMMAND:
        raise CommandRefused("command too long")
    if any(c in raw for c in "\r\n\0"):
        raise CommandRefused("command contains control characters")
    verb, sep, rest = raw.partition(" ")
    if verb == "git" and sep:
        # `git upload-pack 'x'` (the spaced form some clients use).
        sub, sep, rest = rest.partition(" ")
        verb = f"git-{sub}"
    try:
        service = Service(verb)
    except ValueError:
        raise CommandRefused(f"command not allowed: {verb[:40]!r}") from None
    if not sep or not rest:
        raise CommandRefused(f"{service} needs a repository path")
    path = _unquote_single_argument(rest)
    try:
        repo = RepoName.parse(path.removeprefix("/"))
    except InvalidRepoName as exc:
        raise CommandRefused(f"bad repository path: {exc}") from None
    return GitCommand(service, repo)


def _unquote_single_argument(text: str) -> str:
    """Undo git's sq_quote for exactly one argument; refuse anything after it.

    sq_quote wraps in single quotes and writes a `'` or `!` as `'\\''` / `'\\!'`.
    Our names cannot contain either, but the quoting is undone faithfully so a
    crafted argument is judged on what it means, not on how it looks.
    """
    if not text.startswith("'"):
        # Unquoted paths (some clients, `ssh host git-upload-pack a/b.git`): one plain word.
        if any(c in text for c in " \t'\"\\;|&$`<>(){}*?[]~"):
            raise CommandRefused("exactly one repository path is allowed")
        return text
    out: list[str] = []
    i = 1
    while True:
        end = text.find("'", i)
        if end < 0:
            raise CommandRefused("unterminated quote in repository path")
        out.append(text[i:end])
        i = end + 1
        if i == len(text):
            return "".join(out)
        # Only the escape sequences sq_quote produces may follow a closing quote.
        if text.startswith("\\'", i) or text.startswith("\\!", i):
            out.append(text[i + 1])
            i += 2
            if not text.startswith("'", i):
                raise CommandRefused("exactly one repository path is allowed")
            i += 1
            continue
        raise CommandRefused("exactly one repository path is allowed")
