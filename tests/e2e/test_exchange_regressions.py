"""Raw-socket regressions of one HTTP exchange, through a real edge, node and etcd.

Each test is named after a bug that was reproduced against the demo with a raw
socket (issue 7): request state (is the body read? may the connection be
reused? is this a HEAD?) used to be decided in four places, and those places
disagreed. Every conversation here ends with a `Connection: close` request, so
reading until EOF is deterministic: the edge either answers it or closes first.
"""

from __future__ import annotations

import base64
import socket
import ssl

import h11
import httpx
import pytest

from devnet.network import Devnet
from tests.e2e.conftest import create_repo, tls

Response = tuple[int, list[tuple[bytes, bytes]], bytes]
CLOSE = b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n"


def converse(net: Devnet, data: bytes, timeout: float = 20) -> bytes:
    """Send `data` over TLS at once and read until the edge closes."""
    host, port = net.edge.https_url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(net.ca_file))
    answer = bytearray()
    with (
        socket.create_connection((host, int(port)), timeout=timeout) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as conn,
    ):
        conn.sendall(data)
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass  # a close with unread request bytes may be a reset: what came first counts
    return bytes(answer)


def responses(data: bytes, methods: list[bytes]) -> tuple[list[Response], bytes]:
    """Split `data` into responses to requests made with `methods`, framed by h11.

    Raises h11.RemoteProtocolError if the bytes after a response are not a
    response (a body after a HEAD answer, say). Returns what is left over.
    """
    found: list[Response] = []
    for method in methods:
        if not data:
            break
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "edge")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(data)
        head = conn.next_event()
        assert isinstance(head, h11.Response), head
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(b"")  # a close-delimited body ends here
                continue
            if isinstance(event, h11.Data):
                body += event.data
                continue
            assert isinstance(event, h11.EndOfMessage), event
            break
        found.append((head.status_code, list(head.headers), bytes(body)))
        data = conn.trailing_data[0]
    return found, data


def basic(net: Devnet, user: str, token: str | None = None) -> bytes:
    secret = token or net.user_token(user)
    return b"Basic " + base64.b64encode(f"{user}:{secret}".encode())


def request(method: str, path: str, *headers: bytes, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: edge", *headers]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join([*lines, b"", b""]) + body


@pytest.fixture(scope="module")
def repos(net: Devnet) -> None:
    assert create_repo(net, "alice/pub", region="fra", public=True).status_code == 201
    assert create_repo(net, "alice/priv", region="lax").status_code == 201


def _error_lines(net: Devnet, since: int) -> list[str]:
    text = net.edge.process.log_path.read_bytes()[since:].decode(errors="replace")
    return [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line]


def _log_size(net: Devnet) -> int:
    return net.edge.process.log_path.stat().st_size


# -- an unread body is not the next request ------------------------------------


def throwaway_token_id(net: Devnet, user: str) -> tuple[str, str]:
    """A new token of `user`'s, made with the admin token: (its id, the token)."""
    admin = {"authorization": f"Bearer {net.admin_token}"}
    with httpx.Client(base_url=net.edge.https_url, verify=tls(net), timeout=30) as api:
        token = str(api.post(f"/api/admin/users/{user}/tokens", headers=admin).json()["token"])
    return token.split("_")[1], token


@pytest.mark.parametrize("route", ["get-repo", "list-tokens", "revoke-token"])
def test_unread_api_body_is_not_parsed_as_a_second_request(
    net: Devnet, repos: None, route: str
) -> None:
    alice = b"Authorization: " + basic(net, "alice")
    if route == "get-repo":
        method, path, headers = "GET", "/api/repos/alice/pub", []
    elif route == "list-tokens":
        method, path, headers = "GET", "/api/user/tokens", [alice]
    else:
        method, path, headers = (
            "DELETE",
            f"/api/user/tokens/{throwaway_token_id(net, 'alice')[0]}",
            [alice],
        )
    smuggled = request("GET", "/api/repos/alice/priv", alice)
    outer = request(method, path, *headers, body=smuggled)
    found, rest = responses(converse(net, outer + CLOSE), [method.encode(), b"GET", b"GET"])
    assert rest == b""
    # One answer to the API request, then (if the edge kept the connection)
    # the health check's; never an answer to the body.
    assert [status for status, _, _ in found[:1]] == [200]
    assert [body for _, _, body in found[1:]] in ([], [b"ok\n"])
    assert all(b"alice/priv" not in body for _, _, body in found)


def test_unread_api_body_does_not_revoke_a_token(net: Devnet, repos: None) -> None:
    token_id, token = throwaway_token_id(net, "alice")
    revoke = request(
        "DELETE", f"/api/user/tokens/{token_id}", b"Authorization: " + basic(net, "alice", token)
    )
    outer = request("GET", "/api/repos/alice/pub", body=revoke)
    found, _ = responses(converse(net, outer + CLOSE), [b"GET", b"GET", b"GET"])
    assert all(b"revoked" not in body for _, _, body in found)
    listed = httpx.get(
        f"{net.edge.https_url}/api/user/tokens",
        auth=("alice", net.user_token("alice")),
        verify=tls(net),
        timeout=30,
    )
    assert token_id in listed.text


def test_small_unread_body_is_drained_and_the_connection_lives_on(net: Devnet, repos: None) -> None:
    outer = request("GET", "/api/repos/alice/pub", body=b"x" * 1000)
    found, rest = responses(converse(net, outer + CLOSE), [b"GET", b"GET"])
    assert rest == b""
    assert [status for status, _, _ in found] == [200, 200]
    assert found[1][2] == b"ok\n"


# -- HEAD answers carry no body --------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/healthz",
        "/readyz",
        "/api/repos/alice/pub",
        "/alice/pub.git/info/refs?service=git-upload-pack",
    ],
)
def test_head_answer_has_no_body_on_a_keep_alive_connection(
    net: Devnet, repos: None, path: str
) -> None:
    data = converse(net, request("HEAD", path) + CLOSE)
    # With a body after the HEAD answer, the health check's status line would
    # not come next: h11 refuses the leftover bytes as a response.
    found, rest = responses(data, [b"HEAD", b"GET"])
    assert rest == b""
    assert [status for status, _, _ in found] == [200, 200]
    assert found[0][2] == b""
    assert found[1][2] == b"ok\n"


def test_head_error_answer_has_no_body(net: Devnet) -> None:
    found, rest = responses(
        converse(net, request("HEAD", "/api/repos/alice/nope") + CLOSE), [b"HEAD", b"GET"]
    )
    assert rest == b""
    assert [status for status, _, _ in found] == [404, 200]


# -- a malformed request is a 4xx, never a 500 ------------------------------------

BARE_LF_BODY = b"5\nhello\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("path", "auth"),
    [("/alice/pub.git/git-upload-pack", False), ("/api/repos", True)],
    ids=["git", "api"],
)
def test_bare_lf_chunk_line_is_400_not_500(net: Devnet, repos: None, path: str, auth: bool) -> None:
    since = _log_size(net)
    head = request(
        "POST",
        path,
        b"Transfer-Encoding: chunked",
        b"Content-Type: application/x-git-upload-pack-request",
        *([b"Authorization: " + basic(net, "alice")] if auth else []),
    )
    found, _ = responses(converse(net, head + BARE_LF_BODY), [b"POST"])
    assert found[0][0] == 400, found
    assert _error_lines(net, since) == []


# -- the framer refuses what RFC 9112 7.1 does not allow ----------------------------

REFUSED_BODIES = {
    "bare-lf-size-line": b"5\nhello\r\n0\r\n\r\n",
    "bare-lf-after-data": b"5\r\nhello\n0\r\n\r\n",
    "space-before-size": b" 5\r\nhello\r\n0\r\n\r\n",
    "space-after-size": b"5 \r\nhello\r\n0\r\n\r\n",
    "cr-cr-lf-after-data": b"5\r\nhello\r\r\n0\r\n\r\n",
    "stray-cr-in-extension": b"5;a\rb\r\nhello\r\n0\r\n\r\n",
    "bare-lf-last-chunk": b"5\r\nhello\r\n0\n\r\n",
}


@pytest.mark.parametrize("body", REFUSED_BODIES.values(), ids=REFUSED_BODIES.keys())
def test_malformed_chunked_body_is_refused_by_the_edge_not_relayed(
    net: Devnet, repos: None, body: bytes
) -> None:
    since = _log_size(net)
    head = request(
        "POST",
        "/alice/pub.git/git-upload-pack",
        b"Transfer-Encoding: chunked",
        b"Content-Type: application/x-git-upload-pack-request",
    )
    found, _ = responses(converse(net, head + body), [b"POST"])
    status, headers, text = found[0]
    assert status == 400, found
    # The edge's own sentence: the node never saw the body.
    assert text == b"malformed request body\n"
    assert (b"connection", b"close") in headers
    assert _error_lines(net, since) == []


@pytest.mark.parametrize(
    "head",
    [
        b"GET /healthz HTTP/1.1\nHost: edge\n\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\nX-Other: 1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: edge\r\nX-Other: 1\n\r\n",
    ],
    ids=["lf-only", "one-bare-lf", "bare-lf-before-the-end"],
)
def test_head_with_bare_lf_is_400(net: Devnet, head: bytes) -> None:
    found, _ = responses(converse(net, head), [b"GET"])
    assert found[0][0] == 400, found
