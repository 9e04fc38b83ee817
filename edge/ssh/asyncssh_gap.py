"""What gitedge needs from asyncssh that asyncssh's public API does not offer.

Four gaps, one function each (the fourth with a fast path for channel data),
applied per connection or per channel (never to the class):

## The empty IGNORE before each packet (`skip_empty_ignore_packets`)

asyncssh (2.x, `SSHConnection.send_packet`) precedes every post-kex packet with
an empty SSH_MSG_IGNORE, the countermeasure RFC 4251 section 9.3.1 suggests
against a chosen-plaintext attack on CBC's predictable IV. No cipher gitedge
negotiates is CBC (asyncssh's defaults have none; a test checks that), so that
packet only costs a second encryption, padding, MAC and `send()` per data
packet: 3,200 of them per 100 MiB to an OpenSSH client (32 KiB packets),
1.2-1.3x the server's CPU per byte sent (measured; numbers in
tests/edge/test_asyncssh_gap.py).

asyncssh has no option for it, and `asyncssh.listen`/`connect` build their
connection objects themselves (no connection class to pass), so the only
public place to act is the `connection_made(conn)` callback of an
`SSHServer`/`SSHClient`: call `skip_empty_ignore_packets(conn)` there. It
shadows `send_packet` on that one object, which asyncssh's own code reaches
through `self.send_packet` / `self._conn.send_packet`. The test of this module
fails if asyncssh stops sending the packet (drop this module then) or if the
shadowing stops working (asyncssh changed how it sends).

## Short packets into a nearly closed window (`send_full_packets`)

asyncssh sends `min(send window, max packet)` from its buffer whenever the
peer's window opens, however little: the silly window syndrome (RFC 813,
RFC 1122 4.2.3.4). During a clone the client is the slowest process, its
window stays nearly closed, and OpenSSH grants what its git consumed, often
8 KiB at a time: a third of the edge's data packets to it were short (6,793
packets where 3,200 full ones carry the data, counted in bench/results/
ssh_clone_cpu-work.floor.md), and each packet costs its encryption, MAC and
`send()` on the edge and the same again on the client. asyncssh has no option
for it and no public view of the send window. `send_full_packets(chan)` shadows
that one channel's `_flush_send_buf`: data waits while the window is smaller
than both one packet and what is buffered and less than half the largest
window the peer offered (then buffered writes are joined, as a packet never
spans two of them), and at most HOLD_LIMIT (the override timer RFC 1122
asks for, against a peer that waits for a closed window before it grants).
Its test fails if asyncssh stops sending short packets (drop the function) or
if the shadow stops taking effect.

## Packet log lines nobody reads (`skip_unlogged_packet_logs`)

For every packet sent and received, asyncssh formats a log line (the packet's
name, `plural(len, 'byte')`, f-strings) before its logger decides, at debug
level 3 only, whether to write it: 4,000-5,000 formatted and dropped lines per
100 MiB clone, 2-4 % of the edge's CPU in py-spy. `skip_unlogged_packet_logs(obj)`
shadows that one connection's or channel's `log_sent_packet` and
`log_received_packet`: they run as before whenever the object's logger is
enabled for DEBUG (where asyncssh's `set_debug_level(3)` writes the lines), and
do nothing otherwise. Its test fails if asyncssh stops routing packets through
those methods or if the lines stop appearing with DEBUG on.

## chacha20-poly1305 at a cost per packet that fits the traffic (`use_sodium_chacha`)

asyncssh's chacha20-poly1305 (what OpenSSH clients pick first) builds three
`cryptography` cipher objects per packet each way; for the small window-adjust
packets a clone makes OpenSSH send, one per data packet or so, that is most of
their cost (edge/ssh/sodium_chacha.py has the figures). asyncssh has no way to
supply a cipher implementation. `use_sodium_chacha(conn)` shadows that one
connection's `send_packet` to look, before the packet after each NEWKEYS it
sends (asyncssh installs the new keys, both ways, right after), at the encryption
objects asyncssh holds (`_send_encryption`, `_next_recv_encryption`,
`_recv_encryption`): a new one built on asyncssh's `ChachaCipher` gets a
`SodiumChacha` with the same key in its place. The construction is stateless
per packet (the nonce is the sequence number), so the swap is exact whenever it
happens; rekeys make new objects, which get theirs in turn. Without libsodium,
or if asyncssh's objects no longer look as expected, nothing is swapped. Its
test fails if the swap stops taking effect or the bytes ever differ.

Channel data packets on such a connection are then sent whole by `_seal_data`:
laid out, encrypted and tagged in one buffer (`SodiumChacha.seal`), where
asyncssh's `send_packet` copies the payload five times and builds three cipher
objects. It sends what asyncssh would, updating the sequence number and the
rekey byte count as it does, and leaves the packet to asyncssh whenever
asyncssh has more to do (key exchange or authentication in progress, a rekey
due, compression, packet logging). Tests: the bytes equal asyncssh's, a real
OpenSSH client takes them, and rekeys in the middle of a download.

Two more fast paths ride on the same swap, for the two kinds of packet a clone
is made of:

- The edge's channels flush through `send_full_packets` (below); there the
  full-size data packets a window allows are sealed back to back into one
  buffer and written at once (`_seal_run`, `SodiumChacha.seal_data_run`),
  where asyncssh's flush makes one `send_packet` call, one encryption and one
  `transport.write` per packet. No run carries a packet past the rekey limit:
  those go one by one, and the one that crosses it starts the key exchange.
- The connection's `data_received` first takes the CHANNEL_WINDOW_ADJUST
  packets at the head of what arrived (`_take_window_adjusts`): a clone makes
  OpenSSH send ~4,500 of them per 100 MiB. Each is verified and decrypted
  here and handed to its channel's own handler, as asyncssh's `_recv_packet`
  hands it; anything else, a partial packet, a MAC that fails (asyncssh then
  reads the same bytes and disconnects) or a key exchange leaves the rest to
  asyncssh.

Together, for an asyncssh server on trio-asyncio sending 100 MiB to an OpenSSH
client (tests/edge/bench_ssh_front.py, with and without interleaved in one
run): 0.228 against 0.269 CPU-s, 0.85x (bench/results/ssh_front_fastpaths.md;
a first run measured 0.183 against 0.272). In a clone through the edge, side by
side with f20f90b: 0.66 against 0.68 edge CPU-s (ssh_clone_runs-vs-f20f90b.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from typing import Any

import asyncssh
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_CHANNEL_WINDOW_ADJUST, MSG_IGNORE, MSG_NEWKEYS
from asyncssh.crypto import ChachaCipher
from asyncssh.misc import DisconnectError
from asyncssh.packet import SSHPacket, UInt32

from edge.ssh.sodium_chacha import SodiumChacha, load

_EMPTY_STRING = b"\0\0\0\0"  # an SSH `string` of length 0 (RFC 4251 section 5)

Connection = asyncssh.SSHServerConnection | asyncssh.SSHClientConnection


def skip_empty_ignore_packets(conn: Connection) -> None:
    """Stop `conn` from sending the empty SSH_MSG_IGNORE before each packet.

    Call it once, from `connection_made` (before key exchange). Every other
    packet, an IGNORE with data in it included, passes unchanged.
    """
    send = conn.send_packet  # the class's, bound to this connection

    def send_packet(pkttype: int, *args: bytes, **kwargs: Any) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
            return
        send(pkttype, *args, **kwargs)

    conn.send_packet = send_packet  # type: ignore[method-assign]


def skip_unlogged_packet_logs(
    obj: asyncssh.SSHServerConnection
    | asyncssh.SSHClientConnection
    | asyncssh.SSHServerChannel[Any]
    | asyncssh.SSHClientChannel[Any],
) -> None:
    """Let `obj` (a connection or a channel) format its per-packet log lines only
    while its logger is enabled for DEBUG."""
    logger = obj.logger
    sent, received = obj.log_sent_packet, obj.log_received_packet

    def log_sent_packet(*args: Any, **kwargs: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            sent(*args, **kwargs)

    def log_received_packet(*args: Any, **kwargs: Any) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            received(*args, **kwargs)

    obj.log_sent_packet = log_sent_packet  # type: ignore[method-assign]
    obj.log_received_packet = log_received_packet  # type: ignore[method-assign]


_ENCRYPTIONS = ("_send_encryption", "_next_recv_encryption", "_recv_encryption")


def use_sodium_chacha(conn: Connection) -> bool:
    """Give `conn`'s chacha20-poly1305 packets libsodium's implementation (call it
    once, from `connection_made`, after skip_empty_ignore_packets). False, and
    nothing changed, without libsodium."""
    sodium = load()
    if sodium is None:
        return False
    send = conn.send_packet  # the class's, or an earlier shadow of it

    def swap() -> None:
        for name in _ENCRYPTIONS:
            cipher = getattr(getattr(conn, name, None), "_cipher", None)
            if type(cipher) is ChachaCipher:
                encryption = getattr(conn, name)
                key = getattr(cipher, "_key", b"") + getattr(cipher, "_adkey", b"")
                if len(key) == 64:
                    encryption._cipher = SodiumChacha(sodium, key, cipher)

    new_keys = False

    def send_packet(pkttype: int, *args: bytes, **kwargs: Any) -> None:
        # asyncssh sends NEWKEYS, then installs the new encryption objects (both
        # ways): the packet after it is the first to find them.
        nonlocal new_keys
        if new_keys:
            new_keys = False
            swap()
        if pkttype == MSG_CHANNEL_DATA and len(args) == 1 and _seal_data(conn, args[0], kwargs):
            return
        send(pkttype, *args, **kwargs)
        if pkttype == MSG_NEWKEYS:
            new_keys = True

    conn.send_packet = send_packet  # type: ignore[method-assign]
    receive = conn.data_received  # the class's: it appends to the input buffer and parses

    def data_received(data: bytes, datatype: asyncssh.DataType = None) -> None:
        used = _take_window_adjusts(conn, data)
        if used < len(data):
            receive(data[used:] if used else data, datatype)
        elif used:
            conn._reset_keepalive_timer()  # what asyncssh does for each read first

    conn.data_received = data_received  # type: ignore[method-assign]
    return True


_OPEN_CHANNEL = frozenset({"open", "eof_pending", "eof"})
"""The receive states in which asyncssh takes a window adjust (`_process_window_adjust`)."""
_ADJUST = struct.Struct(">BBII")  # padding length, type, recipient channel, bytes to add
_ADJUST_PAYLOAD = 9  # its type and two uint32
_SMALL = 64
"""Packets up to this length are opened here to see whether they are window adjusts."""
_TAG = 16


def _take_window_adjusts(conn: Connection, data: bytes) -> int:
    """How many bytes at the start of `data` are whole CHANNEL_WINDOW_ADJUST packets,
    each verified, decrypted and handed to its channel's own handler here, as
    asyncssh's `_recv_packet` would hand it; 0 where asyncssh's path must read them:
    a partial packet already buffered, a key exchange, compression, the packet log
    on, another cipher, a MAC that does not verify (asyncssh then reads the same
    bytes and disconnects), an unknown or closed channel, any other packet.
    """
    c: Any = conn  # asyncssh's private state, read as its _recv_data reads it
    if c._inpbuf or c._recv_handler != c._recv_pkthdr or conn.logger.isEnabledFor(logging.DEBUG):
        return 0
    used = 0
    while len(data) - used > 4 + _TAG:
        encryption = c._recv_encryption
        cipher = getattr(encryption, "_cipher", None)
        if (
            type(cipher) is not SodiumChacha
            or not (c._kex_complete and c._auth_complete)
            or c._kex is not None
            or c._decompressor is not None
        ):
            break
        seq: int = c._recv_seq
        nonce = seq.to_bytes(8, "big")
        length = int.from_bytes(cipher.decrypt_header(data[used : used + 4], nonce), "big")
        end = used + 4 + length
        if length > _SMALL or len(data) < end + _TAG:
            break
        body = cipher.verify_and_decrypt(
            data[used : used + 4], data[used + 4 : end], nonce, data[end : end + _TAG]
        )
        if body is None or len(body) < _ADJUST.size:
            break
        padding, pkttype, recipient, adjust = _ADJUST.unpack_from(body)
        if pkttype != MSG_CHANNEL_WINDOW_ADJUST or length - 1 - padding != _ADJUST_PAYLOAD:
            break
        chan = c._channels.get(recipient)
        if chan is None or chan._recv_state not in _OPEN_CHANNEL:
            break
        try:
            chan.process_packet(pkttype, seq, SSHPacket(UInt32(adjust)))
        except DisconnectError as exc:  # as asyncssh's _recv_data handles them
            c._send_disconnect(exc.code, exc.reason, exc.lang)
            c._force_close(exc)
            return len(data)
        except Exception:
            c.internal_error()
            return len(data)
        c._auth_final = True  # what _finish_recv_packet does after a channel packet
        c._recv_seq = (seq + 1) & 0xFFFFFFFF
        used = end + _TAG
    return used


def _seal_data(conn: Connection, payload: bytes, kwargs: dict[str, Any]) -> bool:
    """Send one CHANNEL_DATA packet the way `SSHConnection.send_packet` would, built
    and encrypted in one buffer (SodiumChacha.seal); False, nothing sent, wherever
    asyncssh's own path has more to do: before or during a key exchange or
    authentication, when a rekey is due, with compression, without our cipher,
    or with the packet log on. No empty IGNORE goes first (skip_empty_ignore_packets).
    """
    c: Any = conn  # asyncssh's private state, read as its send_packet reads it
    cipher = _sealing_cipher(c, kwargs.get("handler") or conn)
    if cipher is None:
        return False
    padlen = _padding(c, len(payload))
    seq: int = c._send_seq
    c._send(cipher.seal(MSG_CHANNEL_DATA, payload, os.urandom(padlen), seq.to_bytes(8, "big")))
    c._send_seq = (seq + 1) & 0xFFFFFFFF
    c._rekey_bytes_sent += 2 + len(payload) + padlen
    return True


def _sealing_cipher(c: Any, handler: Any) -> SodiumChacha | None:
    """The SodiumChacha that may seal `c`'s next data packets itself, or None where
    asyncssh's send_packet has more to do."""
    cipher = getattr(c._send_encryption, "_cipher", None)
    if (
        type(cipher) is not SodiumChacha
        or not (c._kex_complete and c._auth_complete)
        or c._compressor is not None
        or c._rekey_bytes_sent >= c._rekey_bytes
        or (c._rekey_seconds and time.monotonic() >= c._rekey_time)
        or handler.logger.isEnabledFor(logging.DEBUG)
    ):
        return None
    return cipher


def _padding(c: Any, payload: int) -> int:
    """The padding asyncssh gives a packet of `payload` bytes after its type."""
    blocksize: int = c._send_blocksize
    header: int = c._send_enchdrlen
    padlen = -(header + 1 + payload) % blocksize
    return padlen + blocksize if padlen < 4 else padlen


def _seal_run(chan: Any) -> None:
    """Send the full-size data packets at the head of `chan`'s send buffer, as many
    as its window allows, sealed into one buffer and written at once: what
    asyncssh's `_flush_send_buf` would send of them, one `send_packet` each. Its
    own flush then sends the rest and does what follows (pausing, EOF, close)."""
    if not chan._send_buf or chan._send_chan is None:
        return
    buf, datatype = chan._send_buf[0]
    pktsize: int = chan._send_pktsize
    count = min(len(buf), chan._send_window) // pktsize if datatype is None and pktsize > 0 else 0
    if count < 2:
        return
    c: Any = chan._conn
    cipher = _sealing_cipher(c, chan)
    if cipher is None:
        return
    padlen = _padding(c, 8 + pktsize)
    size = 2 + 8 + pktsize + padlen
    # No packet may start past the rekey limit: those go one by one, and the
    # first of them starts the key exchange.
    count = min(count, (c._rekey_bytes - c._rekey_bytes_sent) // size)
    if count < 2:
        return
    taken = count * pktsize
    seq: int = c._send_seq
    with memoryview(buf) as view:  # released before the buffer shrinks
        out = cipher.seal_data_run(
            chan._send_chan, view[:taken], count, os.urandom(count * padlen), seq
        )
    del buf[:taken]
    if not buf:
        del chan._send_buf[0]
    chan._send_buf_len -= taken
    chan._send_window -= taken
    c._send(out)
    c._send_seq = (seq + count) & 0xFFFFFFFF
    c._rekey_bytes_sent += count * size


HOLD_LIMIT = 0.05
"""The longest data waits for a window worth a full packet (seconds)."""


def send_full_packets(chan: asyncssh.SSHServerChannel[Any]) -> None:
    """Make `chan` send only full-size data packets while its window is nearly closed.

    Call it from the session's `connection_made(chan)` (on asyncio's loop).
    While the peer's window is at least half the largest it offered, or all
    that is buffered fits, asyncssh's own flush runs unchanged; below that it
    runs with the window rounded down to whole packets, and the remainder is
    added back afterwards.
    """
    flush_one_by_one = chan._flush_send_buf  # the class's, bound to this channel

    def flush() -> None:
        _seal_run(chan)
        flush_one_by_one()

    loop = asyncio.get_running_loop()
    peak = 0
    timer: asyncio.TimerHandle | None = None

    def flush_held() -> None:
        nonlocal timer
        timer = None
        if chan._send_buf:
            flush()  # the override: whatever the window allows, short or not

    def flush_send_buf() -> None:
        nonlocal peak, timer
        window: int = chan._send_window
        peak = max(peak, window)
        pktsize: int = chan._send_pktsize
        if chan._send_buf_len <= window or 2 * window >= peak or pktsize <= 0:
            flush()
            return
        _join_pieces(chan._send_buf)
        usable = window - window % pktsize
        if usable == window:
            flush()
            return
        chan._send_window = usable
        try:
            flush()
        finally:
            chan._send_window += window - usable
        if timer is None and chan._send_buf and chan._send_window:
            timer = loop.call_later(HOLD_LIMIT, flush_held)

    chan._flush_send_buf = flush_send_buf  # type: ignore[method-assign]


def _join_pieces(pieces: list[tuple[bytearray, asyncssh.DataType]]) -> None:
    """Join the buffered writes of one data type: asyncssh never lets one packet
    span two writes, so each write's tail would go out as a short packet."""
    head, datatype = pieces[0]
    while len(pieces) > 1 and pieces[1][1] == datatype:
        head += pieces.pop(1)[0]
