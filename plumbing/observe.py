"""`[admin]` and `[log]`: the tables the edge and the node share for being watched.

```toml
[admin]                      # optional: without it there is no admin listener
listen = "127.0.0.1:9464"    # host:port or a list; loopback by default, 0 = any free port
[log]
format = "text"              # "text" (default) or "json": one JSON object per line
```

The admin listener serves `GET /metrics` (plumbing/admin_http.py) and nothing
a client of the service may reach: keep it on loopback or a private network.

`log_git_operation` writes the one record per git operation that edges
(edge/metrics.py) and nodes (node/metrics.py) both log, with the same keys.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Mapping
from dataclasses import dataclass

from plumbing.logsafe import printable
from plumbing.tomlconf import Table

DEFAULT_ADMIN_LISTEN = "127.0.0.1:9464"
"""9464: the port OpenTelemetry's Prometheus exporter uses; loopback only."""


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


@dataclass(frozen=True)
class Observability:
    admin_listen: tuple[tuple[str, int], ...] = ()
    """`[admin] listen`: where `/metrics` is served; empty (no `[admin]`): nowhere."""
    log_format: LogFormat = LogFormat.TEXT
    """`[log] format`."""


def load_observability(root: Table) -> Observability:
    """`[admin]` and `[log]` of `root`; both tables are checked for unknown keys."""
    admin, log = root.table("admin"), root.table("log")
    listen: tuple[tuple[str, int], ...] = ()
    if root.has("admin"):
        listen = (
            tuple(admin.host_ports("listen"))
            if admin.has("listen")
            else (admin.host_port("listen", DEFAULT_ADMIN_LISTEN),)
        )
    raw = log.str("format", LogFormat.TEXT.value)
    try:
        log_format = LogFormat(raw)
    except ValueError:
        raise log.error("format", f"must be 'text' or 'json', got {raw!r}") from None
    admin.check_unknown()
    log.check_unknown()
    return Observability(listen, log_format)


# Client-chosen text in a git operation's record, and how much of it is kept.
_CLIENT_TEXT = {"user": 64, "repo": 200, "client": 100}
_IN_MESSAGE = ("event", "service", "repo", "result")


def log_git_operation(
    logger: logging.Logger, fields: Mapping[str, object], *, in_text_log: bool
) -> None:
    """One INFO record for a git operation that ended: `"event": "git_operation"`
    and `fields` in the JSON log (plumbing/logsafe.py's JsonLineFormatter).

    `user`, `repo` and `client` are escaped and capped here (a client chose them).
    `in_text_log`: whether the text log shows it too, as `key=value` after the
    message; an edge's text log has an access line per operation already.
    """
    entry: dict[str, object] = {"event": "git_operation", **fields}
    for key, limit in _CLIENT_TEXT.items():
        if key in entry:
            value = entry[key]
            entry[key] = printable(value if isinstance(value, str) and value else None, limit)
    extra: dict[str, object] = {"fields": entry}
    if in_text_log:
        extra["text_fields"] = tuple(key for key in entry if key not in _IN_MESSAGE)
    service, repo, result = entry.get("service", "-"), entry.get("repo", "-"), entry["result"]
    logger.info("git %s %s %s", service, repo, result, extra=extra)


def protocol_version(git_protocol: str | bytes | None) -> str:
    """ "2" for `version=2` (gitprotocol-v2: colon-separated key=value), else "0"."""
    text = git_protocol.decode("latin-1") if isinstance(git_protocol, bytes) else git_protocol
    for item in (text or "").split(":"):
        key, _, value = item.partition("=")
        if key == "version" and value in ("1", "2"):
            return value
    return "0"
