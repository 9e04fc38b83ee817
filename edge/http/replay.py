"""Replay (docs/web.md): a frontend answers with `Gitedge-Replay: region=<r>` or
`node=<id>`, and the edge re-sends the same request to the upstream of that
region instead of relaying the answer.

To re-send a body, the edge reads up to `[web] replay_max_body` of it before
the first send (`buffer_body`). A larger body streams as usual, and if its
answer asks for a replay, the client gets 413: the body is gone. At most one
replay: a replayed request's answer is relayed as it is, its own
`Gitedge-Replay` header dropped. The header never reaches the client.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import trio

from edge.http.stream import BodyTimeout, BufferedStream
from edge.proto.exchange import Exchange
from edge.proto.http_head import ResponseHead
from routing.cache import RoutingCache

HEADER = b"gitedge-replay"


class ReplayRequested(Exception):
    """The upstream's answer asked for a replay (it is discarded)."""

    def __init__(self, value: bytes) -> None:
        super().__init__(value)
        self.value = value


@dataclass(frozen=True)
class Buffered:
    body: bytes
    """The framed body bytes read so far (all of it when `complete`)."""
    complete: bool
    """All of the body, and no larger than the limit: a replay may re-send it."""


def strip(response: ResponseHead) -> ResponseHead:
    """The head without any `Gitedge-Replay` header."""
    if response.header(HEADER) is None:
        return response
    return replace(response, headers=[(k, v) for k, v in response.headers if k != HEADER])


def asks_replay(response: ResponseHead) -> ResponseHead:
    """A `ResponseHook` for a first send: raises ReplayRequested if asked."""
    value = response.header(HEADER)
    if value is not None:
        raise ReplayRequested(value)
    return response


def target_region(value: bytes, cache: RoutingCache, known: set[str]) -> str | None:
    """The region a `Gitedge-Replay` value names, or None if it names none we know:
    `region=R` for a region with an upstream or a node, `node=ID` for a live node."""
    key, sep, name = value.decode("latin-1").strip().partition("=")
    key, name = key.strip().lower(), name.strip()
    if not sep or not name:
        return None
    if key == "region":
        regions = known | {str(node.region) for node in cache.nodes.values()}
        return name if name in regions else None
    if key == "node":
        for node_id, node in cache.nodes.items():
            if str(node_id) == name:
                return str(node.region)
    return None


async def buffer_body(
    client: BufferedStream, exchange: Exchange, limit: int, idle: float
) -> Buffered:
    """Read the request body from `client` through its framer, up to `limit` bytes
    (one receive more at most): what was read, and whether that was all of it.

    Errors as the relay's: a malformed body raises BodyError, a stall BodyTimeout;
    an early EOF leaves it incomplete, for the relay to find."""
    if (go_ahead := exchange.continue_head()) is not None:
        await client.send_all(go_ahead)
    framer = exchange.request_body
    parts = [client.take(framer.feed(client.pending))]
    size = len(parts[0])
    while not framer.done and size <= limit:
        with trio.move_on_after(idle) as waited:
            data = await client.receive()
        if waited.cancelled_caught:
            raise BodyTimeout("client stalled in its request body")
        if not data:
            break
        client.unread(data)
        part = client.take(framer.feed(client.pending))
        parts.append(part)
        size += len(part)
    # What arrived with the head may be more than the limit: not replayable either.
    return Buffered(b"".join(parts), framer.done and size <= limit)
