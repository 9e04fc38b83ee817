"""The sans-IO half of the node's git serving: argv, prefixes, env, gzip bodies, scrubbing."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import pytest

from gitproto.protocol import CHUNK, Service, accept_git_protocol
from node import git_proto
from node.git_proto import BodyDecodeError, GzipBodyDecoder, StderrTail, session_argv
from node.scrub import PathScrubber


def test_info_refs_argv_is_http_backends() -> None:
    # git 2.39 http-backend.c get_info_refs(): {svc, "--http-backend-info-refs", dir}
    assert git_proto.info_refs_argv(Service.UPLOAD_PACK, Path("/v/o/r.git")) == [
        "git",
        "upload-pack",
        "--http-backend-info-refs",
        "/v/o/r.git",
    ]
    assert git_proto.rpc_argv(Service.RECEIVE_PACK, Path("/v/o/r.git")) == [
        "git",
        "receive-pack",
        "--stateless-rpc",
        "/v/o/r.git",
    ]


@pytest.mark.parametrize(
    ("git_protocol", "prefixed"),
    [
        (None, True),
        ("version=1", True),
        ("version=2", False),
        ("object-format=sha1:version=2", False),
        ("version=20", True),  # not version 2: git ignores unknown versions
    ],
)
def test_service_line_only_before_v0_v1_advertisements(
    git_protocol: str | None, prefixed: bool
) -> None:
    prefix = git_proto.advertisement_prefix(Service.UPLOAD_PACK, git_protocol)
    assert prefix == (b"001e# service=git-upload-pack\n0000" if prefixed else b"")


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        (None, None),
        (b"version=2", "version=2"),
        (b"version=2:object-format=sha256", "version=2:object-format=sha256"),
        (b"version=2 ; rm -rf /", None),
        (b"version=2\x00", None),
        (b"\xffversion=2", None),
        (b"v" * 257, None),
        (b"", None),
    ],
)
def test_git_protocol_header_is_checked(header: bytes | None, accepted: str | None) -> None:
    assert accept_git_protocol(header) == accepted


def test_child_env_is_clean(tmp_path: Path) -> None:
    base = {"PATH": "/bin", "LD_PRELOAD": "/evil.so", "GIT_DIR": "/elsewhere"}
    env = git_proto.child_env(base, tmp_path, "version=2")
    assert env["PATH"] == "/bin" and env["HOME"] == str(tmp_path)
    assert env["GIT_PROTOCOL"] == "version=2"
    assert "LD_PRELOAD" not in env and "GIT_DIR" not in env
    assert "GIT_PROTOCOL" not in git_proto.child_env(base, tmp_path, None)


def decode_all(decoder: GzipBodyDecoder, body: bytes, step: int) -> list[bytes]:
    pieces: list[bytes] = []
    for i in range(0, len(body), step):
        pieces.extend(decoder.feed(body[i : i + step]))
    decoder.finish()
    return pieces


@pytest.mark.parametrize("step", [1, 7, 4096, 10**9])
def test_gzip_body_decodes_whole_or_in_any_pieces(step: int) -> None:
    plain = b"".join(b"%04x have %040x\n" % (50, i) for i in range(2000))
    pieces = decode_all(GzipBodyDecoder(), gzip.compress(plain), step)
    assert b"".join(pieces) == plain


def test_gzip_bomb_comes_out_in_bounded_pieces() -> None:
    size = 64 * 1024 * 1024
    bomb = gzip.compress(bytes(size), compresslevel=9)
    assert len(bomb) < size // 500
    total = 0
    for piece in GzipBodyDecoder().feed(bomb):
        assert len(piece) <= CHUNK
        total += len(piece)
    assert total == size


def test_truncated_gzip_body_is_an_error() -> None:
    body = gzip.compress(b"0009done\n" * 1000)
    decoder = GzipBodyDecoder()
    list(decoder.feed(body[: len(body) // 2]))
    with pytest.raises(BodyDecodeError, match="middle of the gzip stream"):
        decoder.finish()


def test_corrupt_gzip_body_is_an_error() -> None:
    with pytest.raises(BodyDecodeError, match="bad gzip"):
        list(GzipBodyDecoder().feed(b"\x1f\x8b\x08\x00garbage-garbage-garbage"))


def test_bytes_after_the_gzip_stream_are_ignored_like_http_backend() -> None:
    pieces = decode_all(GzipBodyDecoder(), gzip.compress(b"0000") + b"trailing", 3)
    assert b"".join(pieces) == b"0000"


def test_raw_deflate_is_not_gzip() -> None:
    with pytest.raises(BodyDecodeError):
        list(GzipBodyDecoder().feed(zlib.compress(b"0000")))


@pytest.mark.parametrize("coding", [b"deflate", b"br", b"gzip, gzip"])
def test_other_content_encodings_are_refused(coding: bytes) -> None:
    with pytest.raises(git_proto.UnsupportedEncoding):
        git_proto.body_decoder(coding)


def test_stderr_tail_keeps_a_bounded_head() -> None:
    tail = StderrTail(limit=10)
    tail.feed(b"fatal: ")
    tail.feed(b"bad object deadbeef")
    assert tail.text() == "fatal: bad\n[16 more bytes of stderr dropped]"


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_path_scrubber_finds_paths_split_across_reads(step: int) -> None:
    scrubber = PathScrubber(Path("/srv/vol"))
    text = b"fatal: '/srv/vol/a/b.git' does not appear to be a git repository\nremote: 50%\r"
    out = b"".join(scrubber.feed(text[i : i + step]) for i in range(0, len(text), step))
    out += scrubber.finish()
    assert out == b"fatal: 'a/b.git' does not appear to be a git repository\nremote: 50%\r"


def test_path_scrubber_names_the_volume_root_itself_vaguely() -> None:
    scrubber = PathScrubber(Path("/srv/vol/"))
    out = scrubber.feed(b"error: cannot lock /srv/vol\n") + scrubber.finish()
    assert out == b"error: cannot lock <volume>\n"


def test_session_argv_is_git_shells_not_stateless_rpc() -> None:
    assert session_argv(Service.UPLOAD_ARCHIVE, Path("/v/a/b.git")) == [
        "git",
        "upload-archive",
        "/v/a/b.git",
    ]


def test_a_users_request_hides_refs_gitedge_and_names_the_user() -> None:
    env = git_proto.on_behalf_of({"PATH": "/bin"}, "alice")
    assert env["GITEDGE_USER"] == "alice"
    assert (env["GIT_CONFIG_COUNT"], env["GIT_CONFIG_KEY_0"], env["GIT_CONFIG_VALUE_0"]) == (
        "1",
        "transfer.hideRefs",
        "refs/gitedge/",
    )
    # Appended after config already in the environment, never overwriting it.
    more = git_proto.on_behalf_of({"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "a.b"}, "bob")
    assert more["GIT_CONFIG_COUNT"] == "2" and more["GIT_CONFIG_KEY_0"] == "a.b"
    assert more["GIT_CONFIG_KEY_1"] == "transfer.hideRefs"


def test_the_nodes_own_requests_carry_no_user_and_change_nothing() -> None:
    assert git_proto.on_behalf_of({"PATH": "/bin"}, None) == {"PATH": "/bin"}


@pytest.mark.parametrize("raw", [None, b"", b"-rf", b"al ice", b"\xff", b"a" * 200])
def test_a_missing_or_bad_user_header_is_no_user(raw: bytes | None) -> None:
    assert git_proto.user_from_header(raw) is None


def test_a_good_user_header_is_the_user() -> None:
    assert git_proto.user_from_header(b"alice") == "alice"
