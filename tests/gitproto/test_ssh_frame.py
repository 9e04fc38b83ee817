"""The SSH-over-HTTP response framing: stdout, stderr and the exit status."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator

import pytest

from gitproto.protocol import CHUNK
from gitproto.ssh_frame import (
    HEADER_SIZE,
    MAX_PAYLOAD,
    ExitStatus,
    Frame,
    FrameDecoder,
    FrameError,
    FrameType,
    Stderr,
    Stdout,
    encode_exit,
    encode_stderr,
    encode_stdout,
    frame_header,
)

PACK = os.urandom(MAX_PAYLOAD)
SESSION = (
    encode_stdout(b"0000")
    + encode_stderr(b"remote: counting\r")
    + encode_stdout(b"")
    + encode_stdout(PACK)
    + encode_stderr(b"fatal: done\n")
    + encode_stdout(b"tail")
    + encode_exit(128)
)
EXPECTED_STDOUT = b"0000" + PACK + b"tail"
EXPECTED_STDERR = b"remote: counting\rfatal: done\n"


def whole(data: bytes) -> Iterator[bytes]:
    yield data


def byte_by_byte(data: bytes) -> Iterator[bytes]:
    return (data[i : i + 1] for i in range(len(data)))


def odd_pieces(data: bytes) -> Iterator[bytes]:
    """Pieces that straddle every header: 1, 2, 3, ... 7, then 1 again."""
    pos, step = 0, 1
    while pos < len(data):
        yield data[pos : pos + step]
        pos, step = pos + step, step % 7 + 1


def big_reads(data: bytes) -> Iterator[bytes]:
    """What a socket gives: CHUNK-sized reads, not aligned to frames."""
    return (data[i : i + CHUNK] for i in range(0, len(data), CHUNK))


Splitter = Callable[[bytes], Iterator[bytes]]
SPLITTERS = [whole, byte_by_byte, odd_pieces, big_reads]


def decode(pieces: Iterator[bytes], kind: type = bytes) -> tuple[list[Frame], FrameDecoder]:
    decoder = FrameDecoder()
    events: list[Frame] = []
    for piece in pieces:
        events += decoder.feed(kind(piece))
    decoder.finish()
    return events, decoder


def streams(events: list[Frame]) -> tuple[bytes, bytes, list[int]]:
    out = b"".join(e.data for e in events if isinstance(e, Stdout))
    err = b"".join(e.data for e in events if isinstance(e, Stderr))
    return out, err, [e.status for e in events if isinstance(e, ExitStatus)]


@pytest.mark.parametrize(
    ("split", "kind"),
    # 256 Ki single bytes once is enough; every other split with each input type.
    [(byte_by_byte, bytes)]
    + [
        (split, kind)
        for split in SPLITTERS
        if split is not byte_by_byte
        for kind in (bytes, bytearray, memoryview)
    ],
)
def test_a_session_decodes_the_same_however_it_arrives(split: Splitter, kind: type) -> None:
    events, decoder = decode(split(SESSION), kind)
    assert streams(events) == (EXPECTED_STDOUT, EXPECTED_STDERR, [128])
    assert decoder.done and decoder.status == 128
    assert isinstance(events[-1], ExitStatus)
    assert all(
        isinstance(e.data, bytes) and e.data for e in events if not isinstance(e, ExitStatus)
    )


def test_order_of_stdout_and_stderr_is_kept() -> None:
    events, _ = decode(whole(SESSION))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["Stdout", "Stderr", "Stdout", "Stderr", "Stdout", "ExitStatus"]


def test_a_whole_frame_in_one_read_is_passed_through_without_a_copy() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame_header(FrameType.STDOUT, len(PACK))) == []
    (event,) = decoder.feed(PACK)
    assert isinstance(event, Stdout) and event.data is PACK


def test_header_overhead_is_five_bytes_per_frame() -> None:
    assert HEADER_SIZE == 5
    assert len(encode_stdout(PACK)) == MAX_PAYLOAD + 5 and MAX_PAYLOAD == CHUNK
    assert len(encode_exit(0)) == 9


@pytest.mark.parametrize("status", [0, 1, 128, 255, 2**32 - 1])
def test_exit_status_round_trips(status: int) -> None:
    assert decode(whole(encode_exit(status)))[0] == [ExitStatus(status)]


# -- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITTERS)
def test_trailing_bytes_after_the_exit_status_are_an_error(split: Splitter) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="after the exit status"):
        for piece in split(SESSION + b"\x01"):
            decoder.feed(piece)
    # Whatever came before the extra byte was decoded.
    assert decoder.status == 128


def test_a_frame_after_the_exit_status_is_an_error() -> None:
    with pytest.raises(FrameError, match="after the exit status"):
        FrameDecoder().feed(encode_exit(0) + encode_stdout(b"late"))


@pytest.mark.parametrize("cut", [1, 4, 5, 6, len(SESSION) - 8, len(SESSION) - 1])
def test_truncation_is_an_error_at_eof(cut: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(SESSION[:cut])
    with pytest.raises(FrameError, match="ended in the middle of a frame"):
        decoder.finish()


def test_no_exit_status_is_an_error_at_eof() -> None:
    decoder = FrameDecoder()
    decoder.feed(SESSION[: -len(encode_exit(0))])  # every frame whole, but the last
    with pytest.raises(FrameError, match="without an exit status"):
        decoder.finish()
    with pytest.raises(FrameError, match="without an exit status"):
        FrameDecoder().finish()


@pytest.mark.parametrize("raw_kind", [0, 4, 255])
def test_unknown_frame_types_are_an_error(raw_kind: int) -> None:
    with pytest.raises(FrameError, match=f"unknown frame type {raw_kind}"):
        FrameDecoder().feed(struct.pack(">BI", raw_kind, 1) + b"x")


@pytest.mark.parametrize("kind", [FrameType.STDOUT, FrameType.STDERR])
def test_oversized_frames_are_an_error_from_their_header_alone(kind: FrameType) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="more than"):
        # Refused before any of the payload arrives: nothing is buffered for it.
        for byte in byte_by_byte(struct.pack(">BI", kind, MAX_PAYLOAD + 1)):
            decoder.feed(byte)


@pytest.mark.parametrize("length", [0, 3, 5, 2**31])
def test_exit_frames_carry_exactly_four_bytes(length: int) -> None:
    with pytest.raises(FrameError, match="exit-status frame"):
        FrameDecoder().feed(struct.pack(">BI", FrameType.EXIT, length))


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ValueError):
        encode_stdout(b"x" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        encode_exit(-1)
    with pytest.raises(ValueError):
        frame_header(FrameType.EXIT, 1)
