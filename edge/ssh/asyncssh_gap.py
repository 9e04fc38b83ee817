"""What gitedge needs from asyncssh that asyncssh's public API does not offer.

One gap, one function, applied per connection (never to the class):

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
"""

from __future__ import annotations

from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE

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
