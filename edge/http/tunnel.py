"""The byte tunnel after a `101 Switching Protocols` (WebSocket and other upgrades).

Bytes are copied both ways, one chunk in flight per direction (a read waits
for the previous chunk's send): memory is bounded by two chunks whatever
either side does. The tunnel ends when either side closes or breaks, or when
nothing has moved either way for `idle` seconds; then both connections close
(the caller's job: neither is reused). A limit on its whole life is the
caller's too (`[web] upgrade_total_timeout`, edge/http/web.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

from edge.http.stream import BufferedStream

_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, trio.TooSlowError)


@dataclass
class TunnelResult:
    up: int = 0
    """Bytes from the client to the upstream."""
    down: int = 0
    """Bytes from the upstream to the client."""
    ended: str = ""
    """Why it ended: "client closed", "upstream closed", "idle", or the error."""


async def tunnel(client: BufferedStream, upstream: BufferedStream, idle: float) -> TunnelResult:
    """Copy both ways until one side ends, or `idle` seconds pass with no traffic."""
    result = TunnelResult()
    last = trio.current_time()

    async def copy(src: BufferedStream, dst: BufferedStream, up: bool, who: str) -> None:
        nonlocal last
        try:
            while data := await src.receive():
                last = trio.current_time()
                await dst.send_all(data)
                last = trio.current_time()
                if up:
                    result.up += len(data)
                else:
                    result.down += len(data)
            result.ended = result.ended or f"{who} closed"
        except _STREAM_ERRORS as exc:
            result.ended = result.ended or f"{who}: {exc!r}"
        nursery.cancel_scope.cancel()

    async def watchdog() -> None:
        while True:
            deadline = last + idle
            if trio.current_time() >= deadline:
                result.ended = result.ended or "idle"
                nursery.cancel_scope.cancel()
                return
            await trio.sleep_until(deadline)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, client, upstream, True, "client")
        nursery.start_soon(copy, upstream, client, False, "upstream")
        if idle != math.inf:
            nursery.start_soon(watchdog)
    return result
