"""The response body of an SSH session carried over HTTP: stdout, stderr, exit status.

The edge carries each git-over-SSH session to the node as one HTTP request
(`gitproto.routes.SshSession`). The request body is the client's stdin as is;
the response body multiplexes what an SSH channel carries back, as frames:

    frame   = type:u8  length:u32be  payload[length]
    type 1  = stdout bytes           (length 0..MAX_PAYLOAD)
    type 2  = stderr bytes           (length 0..MAX_PAYLOAD)
    type 3  = exit status: u32be     (length 4), the last frame of every body

Five bytes of header per frame, about one frame per CHUNK of stdout: 20
bytes per MiB. The body ends with exactly one exit-status frame; anything
after it, an unknown type, an oversized length or an end of input before it
is a `FrameError` (the node is broken or the connection was cut).

Like h11's `Data` events, a stdout or stderr frame's payload may be handed
out in several pieces as it arrives (`Stdout`, `Stderr` events, each within
one frame): the decoder never holds more than one frame header and the
4-byte exit status, so pack data passes through without being buffered here.

Sans-IO: no trio, no asyncssh. Shared by the node (encoder) and the edge
(decoder).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from gitproto.protocol import CHUNK

HEADER = struct.Struct(">BI")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = CHUNK
"""The largest stdout or stderr frame: one pump read of git's output."""
_EXIT = struct.Struct(">I")
CONTENT_TYPE = "application/x-gitedge-ssh-frames"
"""The node's response type for an SSH session (its request body is plain stdin)."""


class FrameType(IntEnum):
    STDOUT = 1
    STDERR = 2
    EXIT = 3


class FrameError(Exception):
    """The frame stream is malformed or ended early."""


@dataclass(frozen=True, slots=True)
class Stdout:
    data: bytes


@dataclass(frozen=True, slots=True)
class Stderr:
    data: bytes


@dataclass(frozen=True, slots=True)
class ExitStatus:
    status: int


Frame = Stdout | Stderr | ExitStatus


# -- encoder ---------------------------------------------------------------------------


def frame_header(kind: FrameType, length: int) -> bytes:
    """The 5-byte header of a frame of `length` payload bytes.

    For a sender that writes header and payload separately, without copying
    a CHUNK of pack data just to put five bytes in front of it.
    """
    if kind is FrameType.EXIT:
        if length != _EXIT.size:
            raise ValueError("an exit-status frame carries exactly 4 bytes")
    elif not 0 <= length <= MAX_PAYLOAD:
        raise ValueError(f"a frame carries at most {MAX_PAYLOAD} bytes, not {length}")
    return HEADER.pack(kind, length)


def encode_stdout(data: bytes) -> bytes:
    return frame_header(FrameType.STDOUT, len(data)) + data


def encode_stderr(data: bytes) -> bytes:
    return frame_header(FrameType.STDERR, len(data)) + data


def encode_exit(status: int) -> bytes:
    """The last frame. An SSH exit status is a uint32 (RFC 4254 section 6.10)."""
    if not 0 <= status < 2**32:
        raise ValueError(f"exit status {status} is not a uint32")
    return frame_header(FrameType.EXIT, _EXIT.size) + _EXIT.pack(status)


# -- decoder ---------------------------------------------------------------------------


class FrameDecoder:
    """Incremental: `feed(bytes) -> list[Frame]`, then `finish()` at end of input."""

    def __init__(self) -> None:
        self._header = bytearray()  # a frame header (or exit payload) split across feeds
        self._kind: FrameType | None = None  # the frame whose payload comes next
        self._remaining = 0
        self.status: int | None = None
        """The exit status, once its frame has been decoded."""

    @property
    def done(self) -> bool:
        return self.status is not None

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """The events in `data`; raises FrameError on a malformed stream."""
        view = memoryview(data)
        size = len(view)
        pos = 0
        events: list[Frame] = []
        while pos < size:
            if self.status is not None:
                raise FrameError(f"{size - pos} bytes after the exit status")
            if self._kind is None:
                pos = self._read_header(view, pos)
                continue
            if self._kind is FrameType.EXIT:
                pos = self._read_exit(view, pos)
                if self.status is not None:
                    events.append(ExitStatus(self.status))
                continue
            take = min(size - pos, self._remaining)
            piece = view[pos : pos + take]
            # bytes() of the whole input when it is one piece of bytes: no copy.
            payload = data if take == size and isinstance(data, bytes) else bytes(piece)
            events.append(Stdout(payload) if self._kind is FrameType.STDOUT else Stderr(payload))
            pos += take
            self._remaining -= take
            if self._remaining == 0:
                self._kind = None
        return events

    def finish(self) -> None:
        """End of input: FrameError unless the exit status was the last thing in it."""
        if self.status is not None:
            return
        if self._kind is not None or self._header:
            raise FrameError("input ended in the middle of a frame")
        raise FrameError("input ended without an exit status")

    def _read_header(self, view: memoryview, pos: int) -> int:
        need = HEADER_SIZE - len(self._header)
        self._header += view[pos : pos + need]
        pos += min(need, len(view) - pos)
        if len(self._header) < HEADER_SIZE:
            return pos
        raw_kind, length = HEADER.unpack(self._header)
        self._header.clear()
        try:
            kind = FrameType(raw_kind)
        except ValueError:
            raise FrameError(f"unknown frame type {raw_kind}") from None
        if kind is FrameType.EXIT:
            if length != _EXIT.size:
                raise FrameError(f"exit-status frame of {length} bytes, not 4")
        elif length > MAX_PAYLOAD:
            raise FrameError(f"frame of {length} bytes, more than {MAX_PAYLOAD}")
        # An empty stdout or stderr frame is legal and carries nothing.
        self._kind = kind if length or kind is FrameType.EXIT else None
        self._remaining = length
        return pos

    def _read_exit(self, view: memoryview, pos: int) -> int:
        need = _EXIT.size - len(self._header)
        self._header += view[pos : pos + need]
        pos += min(need, len(view) - pos)
        if len(self._header) == _EXIT.size:
            (self.status,) = _EXIT.unpack(self._header)
            self._header.clear()
            self._kind = None
        return pos
