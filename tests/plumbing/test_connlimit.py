"""Per-listener and per-address connection counting (plumbing/connlimit.py)."""

from __future__ import annotations

import pytest

from plumbing.connlimit import ConnLimiter, Refusal, address_key


def test_per_address_cap_refuses_only_that_address() -> None:
    limiter = ConnLimiter(10, 2)
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is None
    assert limiter.admit("192.0.2.1") is Refusal.ADDRESS_FULL
    assert limiter.admit("192.0.2.2") is None
    limiter.release("192.0.2.1")
    assert limiter.admit("192.0.2.1") is None
    assert limiter.refused[Refusal.ADDRESS_FULL] == 1


def test_listener_cap_counts_every_address() -> None:
    limiter = ConnLimiter(3, 2)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert limiter.admit(ip) is None
    assert limiter.admit("192.0.2.4") is Refusal.LISTENER_FULL
    limiter.release("192.0.2.2")
    assert limiter.admit("192.0.2.4") is None


def test_a_refused_connection_is_not_counted() -> None:
    limiter = ConnLimiter(2, 1)
    assert limiter.admit("192.0.2.1") is None
    for _ in range(100):
        assert limiter.admit("192.0.2.1") is Refusal.ADDRESS_FULL
    assert (limiter.total, limiter.held_by("192.0.2.1")) == (1, 1)


def test_memory_is_bounded_by_the_open_connections() -> None:
    limiter = ConnLimiter(50, 5)
    for i in range(10_000):
        ip = f"10.{i // 65536}.{i // 256 % 256}.{i % 256}"
        if limiter.admit(ip) is None:
            limiter.release(ip)
    assert limiter.addresses == 0 and limiter.total == 0
    for i in range(10_000):
        limiter.admit(f"2001:db8:{i:x}::1")
    assert limiter.addresses <= 50


def test_ipv6_is_counted_per_prefix() -> None:
    limiter = ConnLimiter(100, 2)
    assert limiter.admit("2001:db8::1") is None
    assert limiter.admit("2001:db8::2") is None
    # Another address of the same /64: the same host, as far as anyone can tell.
    assert limiter.admit("2001:db8::ffff:1") is Refusal.ADDRESS_FULL
    assert limiter.admit("2001:db8:0:1::1") is None


def test_v4_mapped_counts_as_the_ipv4_address() -> None:
    assert address_key("::ffff:192.0.2.1", 64) == "192.0.2.1"
    assert address_key("2001:db8::1", 128) == "2001:db8::1/128"
    assert address_key("2001:db8::1", 64) == "2001:db8::/64"


def test_exempt_peers_count_only_toward_the_listener_cap() -> None:
    limiter = ConnLimiter(3, 1, exempt=lambda ip: ip == "10.0.0.1")
    for _ in range(3):
        assert limiter.admit("10.0.0.1") is None
    assert limiter.admit("10.0.0.1") is Refusal.LISTENER_FULL
    assert limiter.addresses == 0
    limiter.release("10.0.0.1")
    assert limiter.admit("192.0.2.1") is None


@pytest.mark.parametrize(("total", "per_address"), [(0, 1), (1, 0)])
def test_limits_must_be_positive(total: int, per_address: int) -> None:
    with pytest.raises(ValueError):
        ConnLimiter(total, per_address)
