"""Client-supplied text made safe for a log line: one line, no credentials, bounded.

A log line is read by people and by programs that split on line ends. Text a
client chose (a request line, a target, a user name, an SSH command, git's
stderr about a client's push) is escaped here before it is logged: a CR or LF
in it cannot start a line of its own (a forged entry), an ESC cannot drive
the operator's terminal, and a 16 KiB header cannot fill the log. Credentials
never reach a log: `Authorization` values, gitedge tokens (`ge_<id>_<secret>`
keeps its id, loses its secret), URL user info and credential-like query
parameters are replaced with `[redacted]`.

`OneLineFormatter` applies the escaping and the redaction to every message
the edge and the node log, as a second line of defence behind the call
sites; tracebacks keep their lines.
"""

from __future__ import annotations

import datetime
import json
import logging
import re

REDACTED = "[redacted]"
DEFAULT_LIMIT = 200

_TOKEN = re.compile(r"\bge_([0-9a-f]{12})_[A-Za-z0-9_-]+")
_AUTHORIZATION = re.compile(r"(?i)\b((?:proxy-)?authorization\s*[:=]\s*)(?:\S+\s+)?[^\s\\'\"]+")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
# A query parameter whose name says it carries a secret (GitLab's private_token,
# OAuth's access_token, signed URLs' sig, ...): the value goes.
_SECRET_PARAM = re.compile(
    r"(?i)([?&;](?:[a-z0-9_.-]*(?:token|passw(?:or)?d|secret|auth|sig(?:nature)?|key)"
    r"[a-z0-9_.-]*)=)[^&;#\s]*"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def redact(text: str) -> str:
    """`text` with every credential it carries replaced by `[redacted]`."""
    text = _TOKEN.sub(rf"ge_\1_{REDACTED}", text)
    text = _AUTHORIZATION.sub(rf"\1{REDACTED}", text)
    text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
    return _SECRET_PARAM.sub(rf"\1{REDACTED}", text)


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def escape_controls(text: str) -> str:
    """Control and line-breaking characters as `\\xNN` / `\\uNNNN`; the rest as it is."""
    return _CONTROL.sub(_escape, text)


def printable(value: str | bytes | None, limit: int = DEFAULT_LIMIT) -> str:
    """Client text as one safe log field: decoded, redacted, escaped, capped at `limit`.

    Bytes that are not ASCII show as `\\xNN`; a backslash is doubled, so what
    the log shows maps back to exactly one input. Longer input is cut and says
    how much was cut.
    """
    if value is None:
        return "-"
    if isinstance(value, bytes):
        text = value.decode("latin-1")
        text = "".join(c if c < "\x80" else f"\\x{ord(c):02x}" for c in text.replace("\\", "\\\\"))
    else:
        text = value.replace("\\", "\\\\")
    text = escape_controls(redact(text))
    if len(text) > limit:
        return f"{text[:limit]}...(+{len(text) - limit})"
    return text or "''"


class OneLineFormatter(logging.Formatter):
    """Every log message on one line and without credentials (tracebacks stay whole)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        message = record.message
        fields, shown = getattr(record, "fields", None), getattr(record, "text_fields", ())
        if isinstance(fields, dict):
            # A git operation's record (plumbing/observe.py): `key=value` after the message.
            message += "".join(f" {key}={fields[key]}" for key in shown if key in fields)
        record.message = escape_controls(redact(message))
        return super().formatMessage(record)


class JsonLineFormatter(logging.Formatter):
    """`[log] format = "json"`: one JSON object per line, redacted and escaped as above.

    Keys: `ts` (UTC, RFC 3339), `level`, `logger`, `msg`, and a git operation's
    fields when the record carries them (`extra={"fields": {...}}`); a traceback
    goes in `exc`. json.dumps escapes what escape_controls left (quotes,
    backslashes, non-ASCII), so a line end never appears inside an entry.
    """

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, object] = {
            "ts": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": escape_controls(redact(record.getMessage())),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry[str(key)] = (
                    escape_controls(redact(value)) if isinstance(value, str) else value
                )
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
