"""bench/curl_trace.py reads a real git 2.39 / libcurl-gnutls 7.88 trace (trimmed)."""

from __future__ import annotations

import pytest

from bench.curl_trace import parse_trace

# git ls-remote https://alice:TOKEN@127.0.0.1:45765/alice/small.git, token in the URL:
# GIT_TRACE and GIT_TRACE_CURL (GIT_TRACE_CURL_NO_DATA=1) into one file.
TRACE = """\
02:19:20.558710 git.c:460               trace: built-in: git ls-remote https://alice:TOKEN@127.0.0.1:45765/alice/small.git
02:19:20.568224 http.c:725              == Info:   Trying 127.0.0.1:45765...
02:19:20.568452 http.c:725              == Info: Connected to 127.0.0.1 (127.0.0.1) port 45765 (#0)
02:19:20.568628 http.c:725              == Info: found 1 certificates in /tmp/lat/net/ca.pem
02:19:20.622358 http.c:725              == Info: found 432 certificates in /etc/ssl/certs
02:19:20.622400 http.c:725              == Info: GnuTLS ciphers: NORMAL:-ARCFOUR-128:-CTYPE-ALL
02:19:20.625128 http.c:725              == Info: SSL connection using TLS1.3 / ECDHE_RSA_AES_256_GCM_SHA384
02:19:20.626120 http.c:672              => Send header, 0000000241 bytes (0x000000f1)
02:19:20.626127 http.c:684              => Send header: GET /alice/small.git/info/refs?service=git-upload-pack HTTP/1.1
02:19:20.627149 http.c:684              <= Recv header: HTTP/1.1 401
02:19:20.627211 http.c:725              == Info: Connection #0 to host 127.0.0.1 left intact
02:19:20.627308 http.c:672              => Send header, 0000000352 bytes (0x00000160)
02:19:20.627312 http.c:684              => Send header: GET /alice/small.git/info/refs?service=git-upload-pack HTTP/1.1
02:19:20.633904 http.c:684              <= Recv header: HTTP/1.1 200 OK
02:19:20.633973 http.c:725              == Info: Connection #0 to host 127.0.0.1 left intact
02:19:20.634281 http.c:672              => Send header, 0000000424 bytes (0x000001a8)
02:19:20.634299 http.c:684              => Send header: POST /alice/small.git/git-upload-pack HTTP/1.1
02:19:20.639676 http.c:684              <= Recv header: HTTP/1.1 200 OK
02:19:20.639855 http.c:725              == Info: Connection #0 to host 127.0.0.1 left intact
"""  # noqa: E501


def test_phases_of_an_https_ls_remote_with_its_401_retry() -> None:
    p = parse_trace(TRACE)
    assert p.to_connect == pytest.approx(0.009514)
    assert p.tls_setup == pytest.approx(0.056676)
    assert p.ca_loading["/etc/ssl/certs"] == pytest.approx(0.053730)
    assert p.ca_certificates == {"/tmp/lat/net/ca.pem": 1, "/etc/ssl/certs": 432}
    assert [(r.request.split()[0], r.status) for r in p.requests] == [
        ("GET", 401), ("GET", 200), ("POST", 200),
    ]  # fmt: skip
    assert p.requests[1].seconds == pytest.approx(0.006665)
    assert p.traced == pytest.approx(0.081145)


def test_plain_http_has_no_tls_phase() -> None:
    lines = [
        line
        for line in TRACE.splitlines()
        if "certificates" not in line and "SSL" not in line and "GnuTLS" not in line
    ]
    p = parse_trace("\n".join(lines))
    assert p.tls_setup is None and not p.ca_loading
    assert len(p.requests) == 3


def test_a_trace_across_midnight() -> None:
    p = parse_trace("23:59:59.990000 x trace: a\n00:00:00.010000 x == Info:   Trying 1\n")
    assert p.to_connect == pytest.approx(0.02)


def test_no_trace_lines_is_an_error() -> None:
    with pytest.raises(ValueError):
        parse_trace("fatal: nothing\n")
