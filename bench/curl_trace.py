"""Where one git HTTP(S) command spent its time, read from its GIT_TRACE + GIT_TRACE_CURL.

Pure: fed the trace text, returns the phases. Every trace line starts with the
wall-clock time `HH:MM:SS.ffffff` (git's trace.c), and both traces append to
one file, so the lines of `git` and of its `git-remote-https` helper interleave
in time order. The markers are libcurl's own `== Info:` lines (curl 7.88,
GnuTLS build, as Debian ships it):

- `Trying <addr>...`: the helper starts to connect; before it, process start,
  the helper's exec and libcurl/GnuTLS initialisation;
- `Connected to ...` up to `SSL connection using ...`: TLS set-up, of which the
  `found N certificates in <file or dir>` lines time the CA loading (each one
  closes the interval since the line before it);
- `=> Send header, ...` up to the next `Connection #N ... left intact`: one
  request, sent and its whole response read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d+) ")
_FOUND = re.compile(r"== Info: found (\d+) certificates in (\S+)")
_REQUEST_LINE = re.compile(r"=> Send header: ([A-Z]+ \S+) HTTP/")
_STATUS_LINE = re.compile(r"<= Recv header: HTTP/[\d.]+ (\d{3})")


@dataclass
class Request:
    request: str
    status: int
    seconds: float


@dataclass
class Phases:
    """Seconds from the first trace line; `None` where the trace has no such phase."""

    to_connect: float = 0.0
    tls_setup: float | None = None
    ca_loading: dict[str, float] = field(default_factory=dict)
    """Per CA file or directory: how long loading it took."""
    ca_certificates: dict[str, int] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    traced: float = 0.0
    """First trace line to last."""

    @property
    def requests_seconds(self) -> float:
        return sum(r.seconds for r in self.requests)


def _seconds(line: str) -> float | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def parse_trace(text: str) -> Phases:
    """The phases of one command's trace (see the module doc)."""
    stamped = [(t, line) for line in text.splitlines() if (t := _seconds(line)) is not None]
    if not stamped:
        raise ValueError("no timestamped trace lines")
    start = stamped[0][0]
    # Across midnight the clock wraps; a command takes well under a day.
    timeline = [((t - start) % 86400.0, line) for t, line in stamped]
    phases = Phases(traced=timeline[-1][0])
    connected: float | None = None
    sent: tuple[float, str, int] | None = None
    previous = 0.0
    for t, line in timeline:
        if "== Info:   Trying " in line and not phases.to_connect:
            phases.to_connect = t
        elif "== Info: Connected to " in line and connected is None:
            connected = t
        elif (found := _FOUND.search(line)) is not None:
            where = found.group(2)
            phases.ca_loading[where] = phases.ca_loading.get(where, 0.0) + t - previous
            phases.ca_certificates[where] = int(found.group(1))
        elif "== Info: SSL connection using " in line and connected is not None:
            phases.tls_setup = t - connected
        elif "=> Send header, " in line:
            sent = (t, "", 0)
        elif sent is not None and (request := _REQUEST_LINE.search(line)) is not None:
            sent = (sent[0], request.group(1), sent[2])
        elif sent is not None and (status := _STATUS_LINE.search(line)) is not None:
            sent = (sent[0], sent[1], int(status.group(1)))
        elif sent is not None and "left intact" in line:
            phases.requests.append(Request(sent[1], sent[2], t - sent[0]))
            sent = None
        previous = t
    return phases
