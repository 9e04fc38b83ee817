"""Small responses the edge writes itself (errors, health, API JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import h11

from edge.http.stream import BufferedStream


@dataclass
class Outcome:
    """How a request ended: for the access log, and whether the connection lives on."""

    status: int
    keep_alive: bool
    note: str = ""


def simple_response(
    status: int,
    body: bytes,
    content_type: bytes = b"text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
    close: bool = False,
) -> bytes:
    headers = [
        (b"content-type", content_type),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-cache"),
        *(extra or []),
    ]
    if close:
        headers.append((b"connection", b"close"))
    conn = h11.Connection(h11.SERVER)
    # h11 validates what we write; it needs to have "seen" a request first.
    conn.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    conn.next_event()
    out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
    return out + body


async def send_text(
    client: BufferedStream,
    status: int,
    text: str,
    *,
    close: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    await client.send_all(simple_response(status, (text + "\n").encode(), extra=extra, close=close))


async def send_json(client: BufferedStream, status: int, obj: Any, *, close: bool = False) -> None:
    body = json.dumps(obj, sort_keys=True).encode() + b"\n"
    await client.send_all(simple_response(status, body, b"application/json", close=close))
