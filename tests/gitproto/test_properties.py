"""Property tests of gitproto's parsers: smart-HTTP routes, the SSH command, SSH frames.

For any input a parser returns its result or raises its own error, and no
repository path it accepts leaves `owner/name`. Example counts: tests/conftest.py.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gitproto.protocol import Service
from gitproto.routes import Health, InfoRefs, RouteError, Rpc, SshSession, parse_git_route
from gitproto.ssh_command import CommandRefused, GitCommand, parse_command
from gitproto.ssh_frame import (
    MAX_PAYLOAD,
    ExitStatus,
    Frame,
    FrameDecoder,
    FrameError,
    Stderr,
    Stdout,
    encode_exit,
    encode_stderr,
    encode_stdout,
)
from routing.model import RepoName
from tests.strategies import assert_safe_repo, nasty_path, nasty_text, repo_names

METHODS = st.one_of(
    st.sampled_from([b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS"]),
    st.binary(max_size=8),
)
TARGETS = st.one_of(
    nasty_path().map(lambda p: p.encode("utf-8", "surrogatepass")), st.binary(max_size=64)
)


# -- smart-HTTP routes (edge and node) ----------------------------------------------------


@given(METHODS, TARGETS)
def test_git_route_parses_or_raises_route_error(method: bytes, target: bytes) -> None:
    try:
        route = parse_git_route(method, target)
    except RouteError as exc:
        assert 400 <= exc.http_status < 500
        return
    assert route is None or isinstance(route, InfoRefs | Rpc | SshSession | Health)
    if isinstance(route, InfoRefs | Rpc | SshSession):
        assert_safe_repo(route.repo)


@given(repo_names(), st.sampled_from(["", ".git"]), st.sampled_from(list(Service)))
def test_every_valid_repo_routes_to_itself(
    names: tuple[str, str], suffix: str, service: Service
) -> None:
    owner, name = names
    path = f"/{owner}/{name}{suffix}"
    if service.verb in ("upload-pack", "receive-pack"):
        route = parse_git_route(b"POST", f"{path}/{service}".encode())
        assert route == Rpc(RepoName(owner, name), service)
        info = parse_git_route(b"GET", f"{path}/info/refs?service={service}".encode())
        assert info == InfoRefs(RepoName(owner, name), service)


# -- the SSH exec command -------------------------------------------------------------------


def _sq_quote(text: str) -> str:
    """git's quote.c sq_quote_buf: ' and ! as '\\'' and '\\!'."""
    return "'" + text.replace("'", "'\\''").replace("!", "'\\!'") + "'"


COMMANDS = st.one_of(
    st.tuples(
        st.sampled_from(
            [
                "git-upload-pack",
                "git-receive-pack",
                "git-upload-archive",
                "git upload-pack",
                "sh",
                "",
            ]
        ),
        st.sampled_from([" ", "  ", "\t", ""]),
        st.one_of(nasty_text(), nasty_text().map(_sq_quote)),
    ).map("".join),
    st.text(max_size=40),
)


@given(
    st.one_of(
        COMMANDS, COMMANDS.map(lambda c: c.encode("utf-8", "surrogatepass")), st.binary(max_size=40)
    )
)
def test_ssh_command_parses_or_refuses(raw: str | bytes) -> None:
    try:
        command = parse_command(raw)
    except CommandRefused as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message
        return
    assert isinstance(command, GitCommand)
    assert_safe_repo(command.repo)
    # What the node is sent is that same command, however the client spelled it.
    assert parse_command(command.to_wire()) == command


@given(repo_names(), st.sampled_from(list(Service)), st.sampled_from(["", "/"]), st.booleans())
def test_git_s_own_quoting_of_any_valid_repo_parses(
    names: tuple[str, str], service: Service, slash: str, dot_git: bool
) -> None:
    owner, name = names
    path = f"{slash}{owner}/{name}{'.git' if dot_git else ''}"
    assert parse_command(f"{service} {_sq_quote(path)}") == GitCommand(
        service, RepoName(owner, name)
    )


# -- SSH-over-HTTP frames -------------------------------------------------------------------


def _decode(stream: bytes, cuts: list[int]) -> list[Frame]:
    decoder = FrameDecoder()
    frames: list[Frame] = []
    start = 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        frames += decoder.feed(stream[start:cut])
        start = max(start, cut)
    decoder.finish()
    return frames


def _merged(frames: list[Frame]) -> tuple[bytes, bytes, list[int]]:
    out = b"".join(f.data for f in frames if isinstance(f, Stdout))
    err = b"".join(f.data for f in frames if isinstance(f, Stderr))
    return out, err, [f.status for f in frames if isinstance(f, ExitStatus)]


sent_frames = st.lists(
    st.one_of(
        st.binary(max_size=300).map(lambda b: ("out", b)),
        st.binary(max_size=100).map(lambda b: ("err", b)),
    ),
    max_size=12,
)


@given(sent_frames, st.integers(0, 2**32 - 1), st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_round_trip_through_any_split(
    sent: list[tuple[str, bytes]], status: int, cuts: list[int]
) -> None:
    stream = b"".join(encode_stdout(b) if k == "out" else encode_stderr(b) for k, b in sent)
    stream += encode_exit(status)
    out, err, statuses = _merged(_decode(stream, cuts))
    assert out == b"".join(b for k, b in sent if k == "out")
    assert err == b"".join(b for k, b in sent if k == "err")
    assert statuses == [status]


@given(st.binary(max_size=200), st.lists(st.integers(0, 300), max_size=6))
def test_any_bytes_decode_or_raise_frame_error(stream: bytes, cuts: list[int]) -> None:
    try:
        frames = _decode(stream, cuts)
    except FrameError:
        return
    # Accepted: it ended with exactly one exit status, and nothing came after it.
    assert isinstance(frames[-1], ExitStatus)
    assert sum(isinstance(f, ExitStatus) for f in frames) == 1
    assert all(len(f.data) <= MAX_PAYLOAD for f in frames if isinstance(f, Stdout | Stderr))
