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
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import asyncssh
from asyncssh.constants import MSG_CHANNEL_DATA, MSG_IGNORE, MSG_NEWKEYS
from asyncssh.crypto import ChachaCipher

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
    return True


def _seal_data(conn: Connection, payload: bytes, kwargs: dict[str, Any]) -> bool:
    """Send one CHANNEL_DATA packet the way `SSHConnection.send_packet` would, built
    and encrypted in one buffer (SodiumChacha.seal); False, nothing sent, wherever
    asyncssh's own path has more to do: before or during a key exchange or
    authentication, when a rekey is due, with compression, without our cipher,
    or with the packet log on. No empty IGNORE goes first (skip_empty_ignore_packets).
    """
    c: Any = conn  # asyncssh's private state, read as its send_packet reads it
    cipher = getattr(c._send_encryption, "_cipher", None)
    if (
        type(cipher) is not SodiumChacha
        or not (c._kex_complete and c._auth_complete)
        or c._compressor is not None
        or c._rekey_bytes_sent >= c._rekey_bytes
        or (c._rekey_seconds and time.monotonic() >= c._rekey_time)
    ):
        return False
    handler = kwargs.get("handler") or conn
    if handler.logger.isEnabledFor(logging.DEBUG):
        return False
    blocksize: int = c._send_blocksize
    padlen = -(c._send_enchdrlen + 1 + len(payload)) % blocksize
    if padlen < 4:
        padlen += blocksize
    seq: int = c._send_seq
    c._send(cipher.seal(MSG_CHANNEL_DATA, payload, os.urandom(padlen), seq.to_bytes(8, "big")))
    c._send_seq = (seq + 1) & 0xFFFFFFFF
    c._rekey_bytes_sent += 2 + len(payload) + padlen
    return True


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
    flush = chan._flush_send_buf  # the class's, bound to this channel
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
