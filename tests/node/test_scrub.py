"""The volume's path is rewritten out of git's stdout text packets, and nothing else is."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from node.scrub import PktLineScrubber

VOLUME = Path("/srv/volumes/fra-1")
LEAK = b"fatal: '../x' is outside repository at '/srv/volumes/fra-1/alice/r.git/.'\n"
CLEAN = b"fatal: '../x' is outside repository at 'alice/r.git/.'\n"


def pkt(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


def scrub(stream: bytes, step: int | None = None) -> bytes:
    scrubber = PktLineScrubber(VOLUME)
    step = step or len(stream) or 1
    out = b"".join(scrubber.feed(stream[i : i + step]) for i in range(0, len(stream), step))
    return out + scrubber.finish()


def packets(stream: bytes) -> list[bytes]:
    """The stream cut back into pkt-lines (flush as b"")."""
    found, i = [], 0
    while i < len(stream):
        length = int(stream[i : i + 4], 16)
        found.append(stream[i + 4 : i + max(length, 4)])
        i += max(length, 4)
    return found


def test_upload_archive_side_band_error_is_scrubbed() -> None:
    # What git upload-archive sent an SSH client (issue 9): ACK, flush, then band 3.
    stream = pkt(b"ACK\n") + b"0000" + pkt(b"\x03" + LEAK) + b"0000"
    for step in (None, 1, 3, 7):
        assert packets(scrub(stream, step)) == [b"ACK\n", b"", b"\x03" + CLEAN, b""]


def test_err_and_nack_and_progress_are_scrubbed() -> None:
    for prefix in (b"ERR ", b"NACK ", b"\x02"):
        assert packets(scrub(pkt(prefix + LEAK))) == [prefix + CLEAN]


def test_band_one_data_is_never_touched_even_if_it_holds_the_path() -> None:
    data = b"\x01PACK" + LEAK * 3
    stream = pkt(data) + pkt(b"\x02" + LEAK) + b"0000"
    assert packets(scrub(stream, 5)) == [data, b"\x02" + CLEAN, b""]


def test_a_pack_without_side_band_passes_as_it_is() -> None:
    # v0 without side-band: the pack follows the NAK raw; "PACK" is not a pkt-line length.
    stream = pkt(b"NAK\n") + b"PACK\x00\x00\x00\x02" + pkt(b"\x02" + LEAK)
    assert scrub(stream, 2) == stream


def test_unchanged_chunks_are_returned_without_copying() -> None:
    scrubber = PktLineScrubber(VOLUME)
    assert scrubber.feed(b"fff0\x01") == b"fff0\x01"
    chunk = b"z" * 1000
    assert scrubber.feed(chunk) is chunk


payloads = st.one_of(
    st.binary(max_size=200).map(lambda b: b"\x01" + b),
    st.sampled_from([b"\x02", b"\x03", b"ERR ", b"NACK "]).flatmap(
        lambda p: st.sampled_from([LEAK, b"counting objects\r", b"/srv/volumes/fra-1\n"]).map(
            lambda t: p + t
        )
    ),
    st.sampled_from([b"ACK\n", b"NAK\n", b"packfile\n", b"E", b"N"]),
    st.just(b""),  # a flush
)


@given(st.lists(payloads, max_size=20), st.integers(1, 64))
def test_any_packet_stream_any_split(items: list[bytes], step: int) -> None:
    stream = b"".join(pkt(p) if p else b"0000" for p in items)
    out = packets(scrub(stream, step))
    assert len(out) == len(items)
    for before, after in zip(items, out, strict=True):
        if before.startswith(b"\x01") or not before.startswith(
            (b"\x02", b"\x03", b"ERR ", b"NACK ")
        ):
            assert after == before  # data and protocol packets: byte for byte
        else:
            assert b"/srv/volumes" not in after
