"""Log fields: one line, no credentials, bounded."""

from __future__ import annotations

import logging

import pytest

from plumbing.logsafe import OneLineFormatter, escape_controls, printable, redact

TOKEN = "ge_0123456789ab_c2VjcmV0LXNlY3JldC1zZWNyZXQ-_x"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"GET / HTTP/1.1", "GET / HTTP/1.1"),
        (b"a\r\nb", "a\\x0d\\x0ab"),
        (b"\x1b[2J", "\\x1b[2J"),
        (b"caf\xc3\xa9", "caf\\xc3\\xa9"),
        (b"back\\x0aslash", "back\\\\x0aslash"),  # a literal backslash cannot pose as an escape
        ("bidi \u202e txt", "bidi \\u202e txt"),
        ("line\u2028sep", "line\\u2028sep"),
        ("", "''"),
        (None, "-"),
    ],
)
def test_printable_escapes(raw: str | bytes | None, shown: str) -> None:
    assert printable(raw) == shown


def test_printable_caps_and_says_how_much_was_cut() -> None:
    assert printable("x" * 250, 200) == "x" * 200 + "...(+50)"


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (f"bad token for '{TOKEN}'", "ge_0123456789ab_[redacted]", "c2VjcmV0"),
        ("Authorization: Basic YWxpY2U6c2VjcmV0", "Authorization: [redacted]", "YWxpY2U6"),
        ("proxy-authorization: Bearer abc.def", "proxy-authorization: [redacted]", "abc.def"),
        ("https://alice:pw@example.com/a", "https://[redacted]@example.com/a", "alice:pw"),
        ("/a/b.git/info/refs?service=x&private_token=s3", "private_token=[redacted]", "s3"),
        ("/x?access_token=s3&a=1", "access_token=[redacted]&a=1", "s3"),
    ],
)
def test_redact(text: str, kept: str, gone: str) -> None:
    assert kept in redact(text)
    assert gone not in redact(text)


def test_redact_leaves_ordinary_text() -> None:
    text = "GET /alice/pub.git/info/refs?service=git-upload-pack HTTP/1.1 200"
    assert redact(text) == text
    assert escape_controls("tab\tend") == "tab\\x09end"


def test_formatter_makes_every_message_one_line_without_credentials() -> None:
    formatter = OneLineFormatter("%(message)s")
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "user %s\n%s", ("x", TOKEN), None)
    line = formatter.format(record)
    assert "\n" not in line
    assert "c2VjcmV0" not in line
    assert line == "user x\\x0age_0123456789ab_[redacted]"
