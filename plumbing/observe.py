"""`[admin]` and `[log]`: the tables the edge and the node share for being watched.

```toml
[admin]                      # optional: without it there is no admin listener
listen = "127.0.0.1:9464"    # host:port or a list; loopback by default, 0 = any free port
[log]
format = "text"              # "text" (default) or "json": one JSON object per line
```

The admin listener serves `GET /metrics` (plumbing/admin_http.py) and nothing
a client of the service may reach: keep it on loopback or a private network.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

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
