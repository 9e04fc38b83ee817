"""The volume's path, rewritten out of everything git sends a client. Sans-IO.

git names a repository by its path on the node (`fatal: '/srv/vol/a/b.git'
...`, `'../x' is outside repository at '/srv/vol/a/b.git/.'`); the client
asked for `a/b.git` and learns nothing about our disks. git's text reaches a
client on two streams:

- stderr (SSH sessions only; HTTP drops it): `PathScrubber`, line by line.
- stdout, inside the protocol: `ERR <text>` pkt-lines (upload-pack v0 and v2),
  `NACK <text>` (upload-archive), and side-band channels 2 (progress) and 3
  (fatal error) of upload-pack, receive-pack and upload-archive
  (gitprotocol-pack, "Packfile Data"; git's archive.c). `PktLineScrubber`
  follows the pkt-line framing and rewrites only those packets. Channel 1 and
  every other packet pass byte for byte, without being held. The first four
  bytes that are not a pkt-line length (the `PACK` of a v0 pack sent without
  side-band) switch it to passing the rest of the stream through as it is.
"""

from __future__ import annotations

from pathlib import Path

MAX_PKT_LEN = 65520  # gitprotocol-common: LARGE_PACKET_MAX, header included
_HEADER = 4
# First bytes of a packet that may carry text: side-band 2 and 3, "ERR ", "NACK ".
_TEXT_STARTS = (2, 3, ord("E"), ord("N"))
_TEXT_PREFIXES = (b"\x02", b"\x03", b"ERR ", b"NACK ")


class VolumePaths:
    """The rewrite itself: `<root>/a/b.git` -> `a/b.git`, the root alone -> `<volume>`."""

    def __init__(self, volume: Path) -> None:
        root = str(volume).rstrip("/").encode()
        self._replacements = [(root + b"/", b""), (root, b"<volume>")]

    def scrub(self, text: bytes) -> bytes:
        for old, new in self._replacements:
            text = text.replace(old, new)
        return text


class PathScrubber:
    """Rewrites the volume's path out of git's stderr.

    Text is held back to the last line end so a path split across two reads is
    still found, but never more than `hold` bytes.
    """

    def __init__(self, volume: Path, hold: int = 4096) -> None:
        self._paths = VolumePaths(volume)
        self._pending = b""
        self._hold = hold

    def feed(self, data: bytes) -> bytes:
        text = self._pending + data
        cut = max(text.rfind(b"\n"), text.rfind(b"\r")) + 1
        if cut == 0 and len(text) < self._hold:
            self._pending = text
            return b""
        if cut == 0:
            cut = len(text)
        self._pending = text[cut:]
        return self._paths.scrub(text[:cut])

    def finish(self) -> bytes:
        text, self._pending = self._pending, b""
        return self._paths.scrub(text)


class PktLineScrubber:
    """Rewrites the volume's path out of the text packets of a git stdout stream."""

    def __init__(self, volume: Path) -> None:
        self._paths = VolumePaths(volume)
        self._raw = False
        self._passing = 0
        """Bytes of the current packet still to pass as they are."""
        self._held = bytearray()
        """A header not yet whole, or a text packet not yet whole."""
        self._text_len = 0
        """With a text packet held: its whole length, header included."""

    def feed(self, data: bytes) -> bytes:
        """What may go to the client now; `data` itself when nothing was changed or held."""
        out: list[bytes | memoryview] = []
        view = memoryview(data)
        i = 0
        while i < len(data):
            if self._raw:
                out.append(view[i:])
                break
            if self._passing:
                n = min(self._passing, len(data) - i)
                out.append(view[i : i + n])
                self._passing -= n
                i += n
            elif self._text_len:
                n = min(self._text_len - len(self._held), len(data) - i)
                self._held += view[i : i + n]
                i += n
                if len(self._held) == self._text_len:
                    out.append(self._scrub_packet(bytes(self._held)))
                    self._held.clear()
                    self._text_len = 0
            elif not self._held and (j := self._skip_passing_packets(data, i)) > i:
                out.append(view[i:j])
                i = j
            else:
                i = self._read_header(view, i, out)
        if all(isinstance(piece, memoryview) for piece in out) and len(data) == sum(
            len(piece) for piece in out
        ):
            # Only passed packets, in order, nothing held: `data` as it came, no copy.
            return data
        return b"".join(out)

    def _skip_passing_packets(self, data: bytes, i: int) -> int:
        """From a packet boundary at `i`, past every whole packet that passes as it
        is; sets `_passing` for one cut off at the end. The hot path: upload-pack
        sends a pack as side-band packets of 8 KiB or so, thousands per clone, and
        this visits only their headers. Whatever needs a closer look (a text packet,
        a flush, a header not yet whole, not a pkt-line at all) stops it."""
        end = len(data)
        while i + _HEADER < end:
            length = _pkt_length(data[i : i + _HEADER])
            if length is None or length <= _HEADER or data[i + _HEADER] in _TEXT_STARTS:
                return i
            if i + length > end:
                self._passing = i + length - end
                return end
            i += length
        return i

    def finish(self) -> bytes:
        """At EOF: a packet cut short goes out as it came (the client reports it)."""
        rest, self._text_len = bytes(self._held), 0
        self._held.clear()
        return rest

    def _read_header(self, view: memoryview, i: int, out: list[bytes | memoryview]) -> int:
        # A header and the packet's first byte decide; both may straddle reads.
        need = _HEADER + 1 - len(self._held)
        take = view[i : i + need]
        self._held += take
        i += len(take)
        if len(self._held) < _HEADER:
            return i
        length = _pkt_length(bytes(self._held[:_HEADER]))
        if length is None:
            self._raw = True
            out.append(bytes(self._held))
            self._held.clear()
            return i
        if length <= _HEADER:  # flush, delim, response-end, empty: no payload
            out.append(bytes(self._held[:_HEADER]))
            del self._held[:_HEADER]  # a byte read ahead starts the next header
            return i
        if len(self._held) < _HEADER + 1:
            return i
        if self._held[_HEADER] in _TEXT_STARTS:
            self._text_len = length
            if len(self._held) == length:
                out.append(self._scrub_packet(bytes(self._held)))
                self._held.clear()
                self._text_len = 0
            return i
        out.append(bytes(self._held))
        self._passing = length - len(self._held)
        self._held.clear()
        return i

    def _scrub_packet(self, packet: bytes) -> bytes:
        payload = packet[_HEADER:]
        if not payload.startswith(_TEXT_PREFIXES):
            return packet
        scrubbed = self._paths.scrub(payload)[: MAX_PKT_LEN - _HEADER]
        if scrubbed == payload:
            return packet
        return b"%04x" % (len(scrubbed) + _HEADER) + scrubbed


def _pkt_length(header: bytes) -> int | None:
    """The length a pkt-line header gives, or None if it is not one."""
    if len(header) != _HEADER or header.strip(b"0123456789abcdefABCDEF"):
        return None  # (int(x, 16) alone would take "0x1f", " 1f" and "1_f")
    length = int(header, 16)
    if length == 3 or length > MAX_PKT_LEN:
        return None
    return length
