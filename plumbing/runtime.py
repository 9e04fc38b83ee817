"""Process plumbing shared by `gitedge edge` and `gitedge node`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from plumbing.logsafe import JsonLineFormatter, OneLineFormatter
from plumbing.observe import LogFormat


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Atomically write the JSON a supervisor waits for once we serve."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid()}, sort_keys=True))
    tmp.replace(path)


def setup_logging(level: str = "INFO", log_format: LogFormat = LogFormat.TEXT) -> None:
    """Called again once the config is read (`[log] format`): replaces the handler."""
    handler = logging.StreamHandler()
    # One line per message, no credentials, whatever a call site passed in.
    if log_format is LogFormat.JSON:
        handler.setFormatter(JsonLineFormatter())
    else:
        handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        # A record with fields (a git operation, plumbing/observe.py) shows in text
        # only if it names the fields to show: the edge's have an access line already.
        handler.addFilter(
            lambda record: hasattr(record, "text_fields") or not hasattr(record, "fields")
        )
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True
    )
    # httpx logs every request at INFO: one line per etcd keepalive is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
