"""The edge's own answers (errors, health, API JSON), written through the exchange."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge.http.stream import BufferedStream, drain_body
from edge.proto.exchange import Exchange


@dataclass
class Outcome:
    """How a request ended, for the access log. Whether the connection lives on
    is the exchange's to say (`Exchange.client_reusable`)."""

    status: int
    note: str = ""


@dataclass
class Reply:
    """Answers one exchange from the edge itself.

    Before the answer, the rest of a small request body nobody read is drained
    (within `drain_timeout`), so the connection can be reused; a larger one is
    left, and the exchange's answer says `connection: close`.
    """

    client: BufferedStream
    exchange: Exchange
    drain_timeout: float

    async def send(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"text/plain; charset=utf-8",
        extra: list[tuple[bytes, bytes]] | None = None,
        note: str = "",
    ) -> Outcome:
        exchange = self.exchange
        if exchange.response_started:
            # Too late for an answer (a relay broke off midway): end the connection.
            exchange.fail(f"no answer possible after a started response: {status} {note}")
            return Outcome(exchange.status, note)
        if budget := exchange.drain_budget:
            await drain_body(self.client, exchange.request_body, budget, self.drain_timeout)
        await self.client.send_all(exchange.answer(status, body, content_type, extra))
        return Outcome(status, note)

    async def text(
        self,
        status: int,
        text: str,
        extra: list[tuple[bytes, bytes]] | None = None,
        note: str = "",
    ) -> Outcome:
        return await self.send(status, (text + "\n").encode(), extra=extra, note=note)

    async def json(self, status: int, obj: Any, note: str = "") -> Outcome:
        body = json.dumps(obj, sort_keys=True).encode() + b"\n"
        return await self.send(status, body, b"application/json", note=note)
