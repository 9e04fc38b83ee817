"""[admin], [log], the JSON log formatter and the admin listener's answers.

The listener is served on a real loopback socket and asked by httpx, as a
scraper would.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import pytest
import trio
from prometheus_client import CollectorRegistry, Counter

from plumbing.admin_http import admin_addresses, open_admin_listeners, serve_admin
from plumbing.logsafe import JsonLineFormatter
from plumbing.observe import DEFAULT_ADMIN_LISTEN, LogFormat, load_observability
from plumbing.tomlconf import ConfigError, Table

TOKEN = "ge_0123456789ab_c2VjcmV0LXNlY3JldC1zZWNyZXQ-_x"


def _load(tmp_path: Path, text: str) -> Table:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return Table.load(path)


def test_no_admin_table_means_no_listener_and_text_logs(tmp_path: Path) -> None:
    observe = load_observability(_load(tmp_path, ""))
    assert observe.admin_listen == () and observe.log_format is LogFormat.TEXT


def test_admin_defaults_to_loopback(tmp_path: Path) -> None:
    observe = load_observability(_load(tmp_path, '[admin]\n[log]\nformat = "json"\n'))
    host, _, port = DEFAULT_ADMIN_LISTEN.rpartition(":")
    assert observe.admin_listen == ((host, int(port)),) and host == "127.0.0.1"
    assert observe.log_format is LogFormat.JSON


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[admin]\nlisten = "nowhere"\n', "listen"),
        ('[admin]\nlisten = "127.0.0.1:1"\nport = 2\n', "port"),
        ('[log]\nformat = "xml"\n', "format"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_observability(_load(tmp_path, text))


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("edge.gitops", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(extra)
    return record


def test_json_lines_are_one_object_without_secrets_or_control_characters() -> None:
    formatter = JsonLineFormatter()
    fields = {"user": 'eve\r\n{"forged": 1}', "bytes_in": 7, "note": f"token {TOKEN}"}
    line = formatter.format(_record("auth %s\x1b[2J", "Bearer abc", fields=fields))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    entry = json.loads(line)
    assert entry["logger"] == "edge.gitops" and entry["level"] == "INFO"
    assert entry["ts"].endswith("Z")
    assert entry["user"] == 'eve\\x0d\\x0a{"forged": 1}'
    assert entry["bytes_in"] == 7
    assert TOKEN not in line and "c2VjcmV0" not in line
    assert entry["msg"] == "auth Bearer abc\\x1b[2J"


def test_json_traceback_stays_on_the_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = JsonLineFormatter().format(record)
    assert "\n" not in line and "ValueError: boom" in json.loads(line)["exc"]


async def test_admin_listener_serves_metrics_and_nothing_else() -> None:
    registry = CollectorRegistry()
    Counter("gitedge_test_things", "Things.", registry=registry).inc(3)
    listeners = open_admin_listeners((("127.0.0.1", 0),))
    url = f"http://{admin_addresses(listeners)[0]}"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_admin, listeners, registry)

        def ask() -> list[httpx.Response]:
            with httpx.Client(base_url=url, timeout=10) as client:
                return [
                    client.get("/metrics"),
                    client.get("/metrics?x=1"),
                    client.head("/metrics"),
                    client.post("/metrics"),
                    client.get("/"),
                ]

        got, query, head, post, root = await trio.to_thread.run_sync(ask)
        nursery.cancel_scope.cancel()
    assert got.status_code == 200 and "gitedge_test_things_total 3.0" in got.text
    assert got.headers["connection"] == "close"
    assert query.status_code == 200
    assert head.status_code == 200 and head.content == b""
    assert post.status_code == 405 and root.status_code == 404


async def _exchange(listeners: list[trio.SocketListener], data: bytes) -> bytes:
    """Connect, send `data` (may be nothing), read until the listener closes (a close
    with our bytes unread is a reset)."""
    host, _, port = admin_addresses(listeners)[0].rpartition(":")
    stream = await trio.open_tcp_stream(host, int(port))
    answer = b""
    async with stream:
        try:
            if data:
                await stream.send_all(data)
            while chunk := await stream.receive_some(65536):
                answer += chunk
        except trio.BrokenResourceError:
            pass
    return answer


async def test_a_silent_or_oversized_client_is_closed_unanswered(
    autojump_clock: trio.abc.Clock,
) -> None:
    listeners = open_admin_listeners((("127.0.0.1", 0),))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_admin, listeners, CollectorRegistry())
        with trio.fail_after(60):  # virtual time: the read deadline is 10 s
            assert await _exchange(listeners, b"") == b""
            huge = b"GET /metrics HTTP/1.1\r\nx: " + b"a" * 20000 + b"\r\n\r\n"
            assert await _exchange(listeners, huge) == b""
            assert await _exchange(listeners, b"\x16\x03\x01 not http\r\n\r\n") == b""
        nursery.cancel_scope.cancel()
