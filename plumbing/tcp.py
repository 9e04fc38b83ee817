"""TCP keepalive for long-lived connections between edge and node.

An SSH session's stdin may be silent for as long as its client likes, and a
pooled connection may sit idle: without keepalive a peer that vanished without
a FIN (a partition, a dead host) is noticed only by an application timeout
(the SSH front's 600 s idle timeout). With these settings a dead peer fails a
receive within ~60 s: first probe after 30 s idle, then 3 probes 10 s apart
(Linux option names; the kernel's defaults, 2 h, would leave git running).
"""

from __future__ import annotations

import socket

import trio

KEEPALIVE = (
    (socket.TCP_KEEPIDLE, 30),
    (socket.TCP_KEEPINTVL, 10),
    (socket.TCP_KEEPCNT, 3),
)


def enable_keepalive(stream: trio.SocketStream) -> None:
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    for option, value in KEEPALIVE:
        stream.setsockopt(socket.IPPROTO_TCP, option, value)
