"""Process plumbing shared by `gitedge edge` and `gitedge node`."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from plumbing.logsafe import OneLineFormatter


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Atomically write the JSON a supervisor waits for once we serve."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**info, "pid": os.getpid()}, sort_keys=True))
    tmp.replace(path)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler()
    # One line per message, no credentials, whatever a call site passed in.
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    # httpx logs every request at INFO: one line per etcd keepalive is noise.
    logging.getLogger("httpx").setLevel(logging.WARNING)
