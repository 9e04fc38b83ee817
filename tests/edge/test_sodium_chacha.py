"""edge.ssh.sodium_chacha against asyncssh's own chacha20-poly1305, byte for byte.

The swap in edge.ssh.asyncssh_gap is safe only if both produce the same bytes
for every packet: these compare them over sizes around block and packet edges
and sequence numbers across the 32-bit wrap, and check a forged tag is refused.
"""

from __future__ import annotations

import os

import pytest
from asyncssh.crypto.chacha import ChachaCipher

from edge.ssh.sodium_chacha import LARGE, SodiumChacha, load

SIZES = [0, 1, 4, 12, 28, 63, 64, 65, 1000, LARGE - 1, LARGE, 32768 + 13, 70_000]
SEQS = [0, 1, 255, 2**32 - 1, 2**32, 2**64 - 1]


@pytest.fixture(scope="module")
def pair() -> tuple[ChachaCipher, SodiumChacha]:
    sodium = load()
    assert sodium is not None, "libsodium (libsodium23) is installed by ./dev"
    key = os.urandom(64)
    return ChachaCipher(key), SodiumChacha(sodium, key, ChachaCipher(key))


@pytest.mark.parametrize("size", SIZES)
def test_same_packets_as_asyncssh(pair: tuple[ChachaCipher, SodiumChacha], size: int) -> None:
    theirs, ours = pair
    for seq in SEQS:
        nonce, header, data = seq.to_bytes(8, "big"), os.urandom(4), os.urandom(size)
        packet, tag = theirs.encrypt_and_sign(header, data, nonce)
        assert ours.encrypt_and_sign(header, data, nonce) == (packet, tag)
        assert ours.decrypt_header(packet[:4], nonce) == header
        assert ours.verify_and_decrypt(packet[:4], packet[4:], nonce, tag) == data


def test_a_forged_tag_or_packet_is_refused(pair: tuple[ChachaCipher, SodiumChacha]) -> None:
    theirs, ours = pair
    nonce = (7).to_bytes(8, "big")
    packet, tag = theirs.encrypt_and_sign(b"\0\0\0\x10", b"x" * 16, nonce)
    assert ours.verify_and_decrypt(packet[:4], packet[4:], nonce, bytes(16)) is None
    flipped = packet[:5] + bytes([packet[5] ^ 1]) + packet[6:]
    assert ours.verify_and_decrypt(flipped[:4], flipped[4:], nonce, tag) is None
    other_seq = (8).to_bytes(8, "big")
    assert ours.verify_and_decrypt(packet[:4], packet[4:], other_seq, tag) is None


def test_the_key_must_be_64_bytes() -> None:
    sodium = load()
    assert sodium is not None
    with pytest.raises(ValueError):
        SodiumChacha(sodium, bytes(32), ChachaCipher(bytes(64)))


@pytest.mark.parametrize("size", SIZES)
def test_a_sealed_packet_is_what_asyncssh_sends(
    pair: tuple[ChachaCipher, SodiumChacha], size: int
) -> None:
    """`seal` against asyncssh's send_packet construction: length, padding length,
    type, payload, padding; the length encrypted apart; the tag after."""
    theirs, ours = pair
    for seq in SEQS:
        nonce, payload = seq.to_bytes(8, "big"), os.urandom(size)
        padding = os.urandom(4 + size % 8)
        body = bytes([len(padding), 94]) + payload + padding
        packet, tag = theirs.encrypt_and_sign(len(body).to_bytes(4, "big"), body, nonce)
        assert ours.seal(94, payload, padding, nonce) == packet + tag
