"""chacha20-poly1305@openssh.com on libsodium: the same bytes as asyncssh's, cheaper per packet.

OpenSSH's construction (PROTOCOL.chacha20poly1305): two ChaCha20 keys, the
packet's sequence number as the 64-bit nonce; the length is encrypted with the
second key at block counter 0, the payload with the first key from counter 1,
and the Poly1305 tag of both is keyed by the first 32 bytes of the first key's
block 0. That is libsodium's original-ChaCha20 `crypto_stream_chacha20_xor_ic`
(64-bit nonce, 64-bit block counter) and `crypto_onetimeauth_poly1305`, one C
call each.

Why: asyncssh builds it from `cryptography`'s `Cipher(ChaCha20(...))`, one
object per call, three per packet each way, about 8 us each in Python. A clone
makes OpenSSH send the edge one window adjust per data packet or so (3,600 per
100 MiB through the edge; 8,900 from a bare asyncssh server to
`ssh | git index-pack`), each a 36-byte packet: decrypting them was 30 % of the
edge's CPU in py-spy. Measured here (best of 7): a packet up to 1 KiB costs 5 us
to encrypt or decrypt against 12-16 us; at 16 KiB both are even, and for a
32 KiB packet OpenSSL's ChaCha20 is faster (30 against 38 us to decrypt), so
packets from LARGE up go to asyncssh's own cipher.

`SodiumChacha` has the interface of asyncssh's `ChachaCipher`; edge.ssh.asyncssh_gap
puts it under a connection's chacha encryption objects. `load()` is None when
libsodium (Debian: libsodium23) is not installed; then nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hmac
import struct

from asyncssh.crypto import ChachaCipher

LARGE = 16384
"""Payloads from this size up are left to asyncssh's cipher (OpenSSL's ChaCha20)."""
_KEY = 32
_TAG = 16
_LEN = ctypes.c_ulonglong
_PTR = ctypes.c_void_p
_HEAD = struct.Struct(">IBB")  # packet length, padding length, message type
_DATA_HEAD = struct.Struct(">IBBII")  # ... then CHANNEL_DATA's recipient and data length
_CHANNEL_DATA = 94  # SSH_MSG_CHANNEL_DATA (RFC 4254 section 5.2)


class _Sodium:
    """The two functions, on raw addresses (or bytes), so that packets are built
    and encrypted in place."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.xor_at = lib.crypto_stream_chacha20_xor_ic  # (out, in, len, nonce, counter, key)
        self.xor_at.argtypes = [_PTR, _PTR, _LEN, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_char_p]
        self.xor_at.restype = ctypes.c_int
        self.poly1305_at = lib.crypto_onetimeauth_poly1305  # (tag, in, len, key)
        self.poly1305_at.argtypes = [_PTR, _PTR, _LEN, _PTR]
        self.poly1305_at.restype = ctypes.c_int


@functools.cache
def load() -> _Sodium | None:
    """libsodium's two functions, or None without a usable libsodium."""
    name = ctypes.util.find_library("sodium")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        if lib.sodium_init() < 0:
            return None
        return _Sodium(lib)
    except (OSError, AttributeError):
        return None


class SodiumChacha:
    """asyncssh's `ChachaCipher` interface: `key` is the 64 bytes asyncssh derives
    (the payload key, then the length key); `large` (asyncssh's own cipher for the
    same key) takes the packets of LARGE bytes and more."""

    def __init__(self, sodium: _Sodium, key: bytes, large: ChachaCipher) -> None:
        if len(key) != 2 * _KEY:
            raise ValueError("chacha20-poly1305 takes a 64-byte key")
        self._na = sodium
        self._key = key[:_KEY]
        self._adkey = key[_KEY:]
        self._large = large

    def _tag_at(self, tag_at: int, data_at: int, size: int, nonce: bytes) -> None:
        """The Poly1305 tag of `size` bytes at `data_at`, written at `tag_at`."""
        poly_key = bytearray(_KEY)
        key_at = _address(poly_key)
        self._na.xor_at(key_at, key_at, _KEY, nonce, 0, self._key)
        self._na.poly1305_at(tag_at, data_at, size, key_at)

    def encrypt_and_sign(self, header: bytes, data: bytes, nonce: bytes) -> tuple[bytes, bytes]:
        if len(data) >= LARGE:
            return self._large.encrypt_and_sign(header, data, nonce)
        hlen, size = len(header), len(header) + len(data)
        out = bytearray(size + _TAG)
        at = _address(out)
        self._na.xor_at(at, header, hlen, nonce, 0, self._adkey)
        self._na.xor_at(at + hlen, data, len(data), nonce, 1, self._key)
        self._tag_at(at + size, at, size, nonce)
        return bytes(out[:size]), bytes(out[size:])

    def seal(self, pkttype: int, payload: bytes, padding: bytes, nonce: bytes) -> bytearray:
        """A whole packet as it goes on the wire: `uint32 length, byte padding length,
        byte type, payload, padding`, encrypted, then its tag, built in one buffer.

        What asyncssh's `send_packet` makes of the same fields with this cipher,
        byte for byte, without its five copies of the payload and three cipher
        objects (tests/edge/test_sodium_chacha.py compares them).
        """
        size = 2 + len(payload) + len(padding)
        end = 4 + size
        out = bytearray(end + _TAG)
        _HEAD.pack_into(out, 0, size, len(padding), pkttype)
        out[6 : 6 + len(payload)] = payload
        out[6 + len(payload) : end] = padding
        self._seal_at(_address(out), size, nonce)
        return out

    def seal_data_run(
        self, recipient: int, data: memoryview, count: int, padding: bytes, seq: int
    ) -> bytearray:
        """`count` CHANNEL_DATA packets to channel `recipient`, each carrying the next
        len(data) // count bytes of `data` and len(padding) // count bytes of
        `padding`, with sequence numbers from `seq`: laid out and sealed back to
        back in one buffer, each as `seal` builds it.
        """
        chunk, padlen = len(data) // count, len(padding) // count
        size = 2 + _DATA_HEAD.size - 6 + chunk + padlen  # the length field: all after it
        stride = 4 + size + _TAG
        out = bytearray(count * stride)
        at = _address(out)
        for i in range(count):
            start = i * stride
            _DATA_HEAD.pack_into(out, start, size, padlen, _CHANNEL_DATA, recipient, chunk)
            body = start + _DATA_HEAD.size
            out[body : body + chunk] = data[i * chunk : (i + 1) * chunk]
            out[body + chunk : start + 4 + size] = padding[i * padlen : (i + 1) * padlen]
            self._seal_at(at + start, size, ((seq + i) & 0xFFFFFFFF).to_bytes(8, "big"))
        return out

    def _seal_at(self, at: int, size: int, nonce: bytes) -> None:
        """Encrypt in place the packet at address `at` (its length field, then `size`
        bytes) and write its tag right after it."""
        na = self._na
        na.xor_at(at, at, 4, nonce, 0, self._adkey)
        na.xor_at(at + 4, at + 4, size, nonce, 1, self._key)
        self._tag_at(at + 4 + size, at, 4 + size, nonce)

    def decrypt_header(self, header: bytes, nonce: bytes) -> bytes:
        out = bytearray(len(header))
        self._na.xor_at(_address(out), header, len(header), nonce, 0, self._adkey)
        return bytes(out)

    def verify_and_decrypt(
        self, header: bytes, data: bytes, nonce: bytes, tag: bytes
    ) -> bytes | None:
        if len(data) >= LARGE:
            return self._large.verify_and_decrypt(header, data, nonce, tag)
        size = len(header) + len(data)
        work = bytearray(size + _TAG)  # the signed bytes, then the tag they should have
        work[: len(header)] = header
        work[len(header) : size] = data
        at = _address(work)
        self._tag_at(at + size, at, size, nonce)
        if not hmac.compare_digest(work[size:], tag):
            return None
        # Decrypted in place over the ciphertext.
        self._na.xor_at(at + len(header), at + len(header), len(data), nonce, 1, self._key)
        return bytes(work[len(header) : size])


def _address(buf: bytearray) -> int:
    """Where `buf`'s bytes are; valid while it is alive and not resized (and only
    ever used so here)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))
