"""Listening sockets: `::` is dual-stack, every other address binds its own family."""

from __future__ import annotations

import errno
import socket

import pytest

from devnet.procs import has_ipv6_loopback
from plumbing.listen import address_text, bind_listeners, client_ip

needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback on this machine")


def _accepts(sock: socket.socket, host: str) -> bool:
    port = sock.getsockname()[1]
    try:
        with socket.create_connection((host, port), timeout=5):
            return True
    except OSError:
        return False


@needs_ipv6
def test_wildcard_v6_is_one_dual_stack_socket() -> None:
    (sock,) = bind_listeners("::", 0)
    with sock:
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        assert _accepts(sock, "127.0.0.1")
        assert _accepts(sock, "::1")


@needs_ipv6
def test_a_specific_v6_address_is_v6_only() -> None:
    # So that "0.0.0.0:P" and "[::1]:P" can both be bound in one `listen` list. The
    # free v6 port may be taken on 127.0.0.1 by another process (CI saw it): then
    # another port is tried; a v6 socket that took the v4 port too fails every time.
    for _attempt in range(20):
        (v6,) = bind_listeners("::1", 0)
        with v6, socket.socket() as v4:
            assert v6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            try:
                v4.bind(("127.0.0.1", v6.getsockname()[1]))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            return
    raise AssertionError("every free ::1 port was also taken on 127.0.0.1")


def test_ipv4_listener_takes_ipv4() -> None:
    (sock,) = bind_listeners("127.0.0.1", 0)
    with sock:
        assert sock.family == socket.AF_INET
        assert _accepts(sock, "127.0.0.1")


def test_a_taken_port_is_an_error_and_leaks_no_socket() -> None:
    (sock,) = bind_listeners("127.0.0.1", 0)
    with sock, pytest.raises(OSError):
        bind_listeners("127.0.0.1", sock.getsockname()[1])


@pytest.mark.parametrize(
    ("peer", "seen"),
    [
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::1"),
        ("::1", "::1"),
        ("not-an-ip", "not-an-ip"),
    ],
)
def test_client_ip_unmaps_v4_mapped_addresses(peer: str, seen: str) -> None:
    assert client_ip(peer) == seen


def test_address_text_brackets_ipv6() -> None:
    assert address_text(("::", 443, 0, 0)) == "[::]:443"
    assert address_text(("127.0.0.1", 22)) == "127.0.0.1:22"
