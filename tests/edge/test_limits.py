"""The limits on git operations: buckets, queues, waits, fair share, eviction.

The bookkeeping (edge/quotas.py) is fed the time by hand; `Limits`
(edge/limits.py) runs on trio's autojump clock, so a 10 s queue wait costs no
real time. The end-to-end refusals are in tests/e2e/test_limits.py.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from edge.api.node_admin import NodeAdmin
from edge.config import (
    ConfigError,
    EdgeConfig,
    Listener,
    OpLimits,
    RateRule,
    SlotRule,
    load_edge_config,
)
from edge.errors import RateLimited, TooManyOperations
from edge.http.front import serve_connection
from edge.http.pool import NodePool
from edge.limits import Limits
from edge.quotas import BucketTable, Slots, SlotTable, Ticket, TokenBucket
from edge.state import EdgeState
from node.config import load_node_config
from node.git_proto import limit_push
from routing.cache import RoutingCache
from routing.etcd import EtcdClient
from routing.model import Region
from routing.schema import Keys

# -- token buckets -------------------------------------------------------------------


def test_bucket_allows_a_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(per_second=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)  # refused: one token in 0.5 s
    assert bucket.take(0.25) == pytest.approx(0.25)
    assert bucket.take(0.5) == 0.0
    assert bucket.full(100.0)
    assert bucket.tokens == 3  # never above the burst


def test_bucket_table_keeps_keys_apart_and_zero_rate_is_no_limit() -> None:
    table = BucketTable(per_minute=60, burst=1, max_keys=100)
    assert table.take("alice", 0.0) == 0.0
    assert table.take("alice", 0.0) == pytest.approx(1.0)
    assert table.take("bob", 0.0) == 0.0
    assert table.wait_for("carol", 0.0) == 0.0  # unseen: full, and nothing stored
    assert len(table) == 2
    unlimited = BucketTable(per_minute=0, burst=1, max_keys=100)
    assert all(unlimited.take("alice", 0.0) == 0.0 for _ in range(1000))
    assert len(unlimited) == 0


def test_a_flood_of_addresses_costs_a_bounded_table() -> None:
    table = BucketTable(per_minute=60, burst=5, max_keys=1000)
    for i in range(100_000):
        table.take(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}", now=i / 1000)
        assert len(table) <= 1000
    assert table.evicted > 0  # the flood was faster than the refill: state was dropped


def test_full_buckets_go_first_so_a_busy_key_keeps_its_state() -> None:
    table = BucketTable(per_minute=60, burst=2, max_keys=3)  # one token a second
    table.take("busy", 0.0)
    table.take("busy", 0.0)  # empty: full again at 2 s
    table.take("idle-1", 0.0)
    table.take("idle-2", 0.0)  # full again at 1 s
    table.take("new", 1.5)  # no room: the full ones go, losing nothing
    assert len(table) == 2 and table.evicted == 0
    assert table.take("busy", 1.5) == 0.0
    assert table.take("busy", 1.5) > 0  # its state was kept: 0.5 tokens left


# -- slots and queues -----------------------------------------------------------------


def _slots(limit: int, queue: int, cap: int = 0, queue_cap: int = 0) -> tuple[Slots, list[Ticket]]:
    woken: list[Ticket] = []
    return Slots(limit, queue, woken.append, owner_cap=cap, owner_queue_cap=queue_cap), woken


def test_slots_grant_up_to_the_limit_queue_up_to_the_queue_then_refuse() -> None:
    slots, woken = _slots(limit=2, queue=1)
    a, b = slots.request("x"), slots.request("y")
    assert a and a.granted and b and b.granted
    waiting = slots.request("z")
    assert waiting is not None and not waiting.granted
    assert slots.request("w") is None  # queue full: refused
    slots.finish(a)
    assert woken == [waiting] and waiting.granted
    slots.finish(b)
    slots.finish(waiting)
    assert slots.idle


def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    slots, woken = _slots(limit=1, queue=2)
    holder = slots.request("x")
    first, second = slots.request("y"), slots.request("z")
    assert holder and first and second
    slots.finish(first)  # its wait ran out
    slots.finish(holder)
    assert woken == [second]
    slots.finish(first)  # twice is harmless
    assert slots.held == 1


def test_fair_share_one_owner_cannot_take_every_slot() -> None:
    slots, _ = _slots(limit=4, queue=8, cap=2, queue_cap=4)
    flood = [slots.request("alice") for _ in range(6)]
    assert [t is not None and t.granted for t in flood] == [True, True] + [False] * 4
    assert slots.request("alice") is None  # her share of the queue is full
    bob = slots.request("bob")
    assert bob is not None and bob.granted  # the slots she may not take are his


def test_a_freed_slot_goes_to_the_waiting_owner_who_holds_fewest() -> None:
    slots, woken = _slots(limit=3, queue=10)
    held = [slots.request("alice") for _ in range(2)] + [slots.request("bob")]
    alice_waits = slots.request("alice")
    carol_waits = slots.request("carol")  # later, but holds nothing
    assert alice_waits and carol_waits and not carol_waits.granted
    first = held[0]
    assert first is not None
    slots.finish(first)
    assert woken == [carol_waits]


def test_slot_table_drops_idle_keys() -> None:
    table = SlotTable(2, 2, lambda ticket: None)
    tickets = [(f"repo-{i}", table.request(f"repo-{i}", "alice")) for i in range(1000)]
    assert len(table) == 1000
    for key, ticket in tickets:
        assert ticket is not None
        table.finish(key, ticket)
    assert len(table) == 0


def test_node_share_is_a_fraction_of_slots_and_queue_at_least_one() -> None:
    table = SlotTable(4, 4, lambda ticket: None, owner_share=0.5)
    grants = [table.request("node", "user:alice") for _ in range(4)]
    assert [t is not None and t.granted for t in grants] == [True, True, False, False]
    assert table.request("node", "user:alice") is None
    tiny = SlotTable(1, 1, lambda ticket: None, owner_share=0.1)
    assert (t := tiny.request("n", "a")) is not None and t.granted


# -- Limits on trio -------------------------------------------------------------------


def _limits(**changes: Any) -> Limits:
    base = OpLimits(
        per_user=SlotRule(2, 1),
        per_repo=SlotRule(3, 1),
        per_address=SlotRule(1, 0),
        per_node=SlotRule(4, 4),
        node_user_share=0.5,
        queue_wait=10.0,
    )
    return Limits(dataclasses.replace(base, **changes))


async def _hold(limits: Limits, user: str | None, repo: str, release: trio.Event) -> None:
    async with limits.git_operation(user=user, client_ip="192.0.2.1", repo=repo, node_id="n1"):
        await release.wait()


async def test_an_operation_waits_for_a_slot_then_runs(autojump_clock: trio.abc.Clock) -> None:
    limits = _limits()
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for repo in ("a/1", "a/2"):
            nursery.start_soon(_hold, limits, "alice", repo, release)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        nursery.start_soon(_release_after, release, 3)
        async with limits.git_operation(
            user="alice", client_ip="192.0.2.1", repo="a/3", node_id="n1"
        ):
            assert trio.current_time() - started == pytest.approx(3)
    assert limits.active == 0 and limits.stats_dict()["limits_ops_queued"] == 0


async def _release_after(event: trio.Event, seconds: float) -> None:
    await trio.sleep(seconds)
    event.set()


async def test_the_queue_wait_ends_in_a_refusal(autojump_clock: trio.abc.Clock) -> None:
    limits = _limits()
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for repo in ("a/1", "a/2"):
            nursery.start_soon(_hold, limits, "alice", repo, release)
        await trio.testing.wait_all_tasks_blocked()
        started = trio.current_time()
        with pytest.raises(TooManyOperations) as refused:
            async with limits.git_operation(
                user="alice", client_ip="192.0.2.1", repo="a/3", node_id="n1"
            ):
                raise AssertionError("admitted past the per-user limit")
        assert trio.current_time() - started == pytest.approx(10)
        # A full queue refuses at once.
        nursery.start_soon(_hold, limits, "alice", "a/4", release)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(TooManyOperations):
            async with limits.git_operation(
                user="alice", client_ip="192.0.2.1", repo="a/5", node_id="n1"
            ):
                pass
        release.set()
    error = refused.value
    assert error.http_status == 429 and dict(error.headers)[b"retry-after"] == b"5"
    assert error.ssh_message == "ERROR: too many concurrent operations, try again later"
    assert limits.active == 0 and limits.stats_dict()["limits_node_slots_held"] == 0


async def test_anonymous_operations_are_limited_per_address(
    autojump_clock: trio.abc.Clock,
) -> None:
    limits = _limits()
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold, limits, None, "pub/1", release)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(TooManyOperations):  # per_address = 1, no queue
            async with limits.git_operation(
                user=None, client_ip="192.0.2.1", repo="pub/2", node_id="n1"
            ):
                pass
        async with limits.git_operation(
            user=None, client_ip="198.51.100.7", repo="pub/2", node_id="n1"
        ):
            pass  # another address is not held up
        release.set()


async def test_a_flooding_user_leaves_node_slots_for_others(
    autojump_clock: trio.abc.Clock,
) -> None:
    limits = _limits(per_user=SlotRule(100, 100), per_repo=SlotRule(100, 100))
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(4):  # two hold (half of 4 node slots), two wait
            nursery.start_soon(_hold, limits, "alice", f"alice/{i}", release)
        await trio.testing.wait_all_tasks_blocked()
        assert limits.node_slots_of("n1", "alice", "192.0.2.1") == 2
        with pytest.raises(TooManyOperations):  # her share of the queue is full too
            async with limits.git_operation(
                user="alice", client_ip="192.0.2.1", repo="alice/9", node_id="n1"
            ):
                pass
        async with limits.git_operation(
            user="bob", client_ip="192.0.2.1", repo="bob/1", node_id="n1"
        ):
            assert limits.node_slots_of("n1", "bob", "192.0.2.1") == 1
        release.set()
    assert limits.active == 0


async def test_a_cancelled_waiter_frees_its_place(autojump_clock: trio.abc.Clock) -> None:
    limits = _limits(per_user=SlotRule(1, 1))
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold, limits, "alice", "a/1", release)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(1):  # the client went away while queued
            await _hold(limits, "alice", "a/2", release)
        assert limits.stats_dict()["limits_ops_queued"] == 0
        nursery.start_soon(_hold, limits, "alice", "a/3", release)  # the place is free
        await trio.testing.wait_all_tasks_blocked()
        assert limits.stats_dict()["limits_ops_queued"] == 1
        release.set()
    assert limits.active == 0


async def test_git_rate_per_user_and_per_address(autojump_clock: trio.abc.Clock) -> None:
    limits = _limits(git_rate_per_user=RateRule(60, 2), git_rate_per_address=RateRule(600, 3))
    limits.check_git_rate("alice", "192.0.2.1")
    limits.check_git_rate("alice", "192.0.2.1")
    with pytest.raises(RateLimited) as refused:
        limits.check_git_rate("alice", "192.0.2.1")
    assert refused.value.http_status == 429
    assert dict(refused.value.headers)[b"retry-after"] == b"1"
    assert refused.value.ssh_message == ("ERROR: too many git operations, try again in 1 seconds")
    limits.check_git_rate("bob", "192.0.2.1")  # alice's refusal cost the address nothing
    with pytest.raises(RateLimited):
        limits.check_git_rate("carol", "192.0.2.1")  # the address's 3 are spent
    await trio.sleep(1)
    limits.check_git_rate("alice", "192.0.2.1")


async def test_failed_auth_and_api_writes(autojump_clock: trio.abc.Clock) -> None:
    limits = _limits(auth_fail_rate_per_address=RateRule(6, 2), api_write_rate=RateRule(60, 1))
    for _ in range(2):
        limits.check_auth_allowed("192.0.2.1")
        limits.auth_failed("192.0.2.1")
    assert limits.auth_blocked("192.0.2.1") and not limits.auth_blocked("192.0.2.2")
    with pytest.raises(RateLimited) as refused:
        limits.check_auth_allowed("192.0.2.1")
    assert (
        refused.value.public_message == "too many failed authentications, try again in 10 seconds"
    )
    limits.check_api_write("alice", "192.0.2.1")
    with pytest.raises(RateLimited, match="API writes: alice"):
        limits.check_api_write("alice", "192.0.2.9")
    with pytest.raises(RateLimited, match=r"API writes: - 192\.0\.2\.1"):
        limits.check_api_write(None, "192.0.2.1")
    await trio.sleep(10)
    assert not limits.auth_blocked("192.0.2.1")


# -- through the HTTP front: failed authentications --------------------------------


def _state(limits: OpLimits) -> EdgeState:
    config = EdgeConfig(
        region=Region("fra"),
        etcd_endpoints=("http://127.0.0.1:1",),
        http=(Listener("127.0.0.1", 0),),
        ops=limits,
    )
    etcd = cast(EtcdClient, None)
    return EdgeState(
        config, etcd, RoutingCache(Keys(), etcd), NodePool(1.0, 1.0, 1), cast(NodeAdmin, None)
    )


async def test_the_front_answers_429_once_an_address_failed_too_often() -> None:
    state = _state(OpLimits(auth_fail_rate_per_address=RateRule(1, 3)))
    # A malformed token fails without a lookup (no etcd in this test).
    bad = base64.b64encode(b"alice:not-a-token").decode()
    request = (
        f"GET /api/user/keys HTTP/1.1\r\nHost: edge\r\nAuthorization: Basic {bad}\r\n\r\n"
    ).encode()
    client, server = trio.testing.memory_stream_pair()
    answer = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, state, server, "192.0.2.1", "http")
        await client.send_all(request * 4 + b"GET /healthz HTTP/1.1\r\nHost: e\r\n\r\n")
        with trio.fail_after(10):
            while answer.count(b"HTTP/1.1 ") < 5:
                answer += await client.receive_some(65536)
        nursery.cancel_scope.cancel()
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"401", b"401", b"401", b"429", b"200"]
    assert b"retry-after: 60" in answer.lower()
    assert b"too many failed authentications, try again in 60 seconds" in answer


async def test_the_front_charges_api_writes_before_the_handler_runs() -> None:
    state = _state(OpLimits(api_write_rate=RateRule(1, 1)))
    # An anonymous key upload is refused by its handler (401) after taking the address's token.
    add_key = b"POST /api/user/keys HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n"
    client, server = trio.testing.memory_stream_pair()
    answer = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, state, server, "192.0.2.1", "http")
        await client.send_all(add_key * 2)
        with trio.fail_after(10):
            while answer.count(b"HTTP/1.1 ") < 2:
                answer += await client.receive_some(65536)
        nursery.cancel_scope.cancel()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"401", b"429"]
    assert b"too many API writes, try again in 60 seconds" in answer


# -- config -----------------------------------------------------------------------


def _config(tmp_path: Path, limits: str) -> EdgeConfig:
    (tmp_path / "edge.toml").write_text(
        '[edge]\nregion = "fra"\n[http]\nlisten = "127.0.0.1:0"\n'
        '[nodes]\nadmin_secret = "s"\n[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n'
        f"[limits]\n{limits}\n"
    )
    return load_edge_config(tmp_path / "edge.toml")


def test_limits_config_keys_and_defaults(tmp_path: Path) -> None:
    assert _config(tmp_path, "").ops == OpLimits()
    ops = _config(
        tmp_path,
        "git_per_repo = 5\ngit_per_repo_queue = 0\ngit_node_user_share = 0.25\n"
        "git_rate_per_user = 0\nauth_fail_burst_per_address = 3\nheader_timeout = 5.0",
    ).ops
    assert ops.per_repo == SlotRule(5, 0) and ops.node_user_share == 0.25
    assert ops.git_rate_per_user == RateRule(0, 600)
    assert ops.auth_fail_rate_per_address == RateRule(10, 3)
    assert OpLimits().git_rate_per_user == RateRule(600, 600)  # GitLab's anchor


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("git_node_user_share = 0", "git_node_user_share"),
        ("git_per_user = -1", "git_per_user"),
        ("git_burst_per_user = 0", "git_burst_per_user"),
        ("git_queue_wait = 'long'", "git_queue_wait"),
        ("git_per_usr = 3", "git_per_usr: unknown key"),
    ],
)
def test_limits_config_refuses_bad_values(tmp_path: Path, line: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        _config(tmp_path, line)


def test_node_push_size_config(tmp_path: Path) -> None:
    base = '[node]\nid = "fra-1"\nregion = "fra"\nvolume_dir = "v"\nadmin_secret = "s"\n'
    (tmp_path / "node.toml").write_text(base)
    assert load_node_config(tmp_path / "node.toml").max_push_size == 2 * 2**30
    (tmp_path / "node.toml").write_text(base + "[limits]\nmax_push_size = 1000\n")
    assert load_node_config(tmp_path / "node.toml").max_push_size == 1000
    assert limit_push(["git", "receive-pack", "r.git"], 1000) == [
        "git", "-c", "receive.maxInputSize=1000", "receive-pack", "r.git",
    ]  # fmt: skip
    assert limit_push(["git", "upload-pack", "r.git"], 1000) == ["git", "upload-pack", "r.git"]
    assert limit_push(["git", "receive-pack", "r.git"], 0) == ["git", "receive-pack", "r.git"]


async def test_the_admin_tokens_writes_are_not_counted() -> None:
    config = OpLimits(api_write_rate=RateRule(1, 1))
    state = _state(config)
    state.config = dataclasses.replace(state.config, admin_token="admin-token")
    # Not JSON: refused by the handler (400) before anything reaches etcd.
    admin = (
        b"POST /api/admin/users HTTP/1.1\r\nHost: edge\r\nAuthorization: Bearer admin-token\r\n"
        b"Content-Length: 1\r\n\r\nx"
    )
    anonymous = b"POST /api/user/keys HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n"
    client, server = trio.testing.memory_stream_pair()
    answer = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, state, server, "192.0.2.1", "http")
        await client.send_all(admin * 3 + anonymous * 2)
        with trio.fail_after(10):
            while answer.count(b"HTTP/1.1 ") < 5:
                answer += await client.receive_some(65536)
        nursery.cancel_scope.cancel()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", answer) == [b"400"] * 3 + [b"401", b"429"]


async def test_ipv6_clients_count_per_prefix_and_trusted_proxies_are_exempt(
    autojump_clock: trio.abc.Clock,
) -> None:
    limits = Limits(
        OpLimits(
            per_address=SlotRule(1, 0),
            git_rate_per_address=RateRule(1, 1),
            auth_fail_rate_per_address=RateRule(1, 1),
        ),
        ipv6_prefix=64,
        exempt=lambda ip: ip == "10.0.0.1",
    )
    limits.check_git_rate(None, "2001:db8::1")
    with pytest.raises(RateLimited):  # another address of the same /64
        limits.check_git_rate(None, "2001:db8::ffff:2")
    limits.check_git_rate(None, "2001:db8:0:1::1")  # another /64
    limits.auth_failed("10.0.0.1")
    for _ in range(5):  # the balancer's address: every client would share its budget
        limits.check_git_rate(None, "10.0.0.1")
        limits.check_auth_allowed("10.0.0.1")
        limits.check_api_write(None, "10.0.0.1")
    release = trio.Event()
    async with trio.open_nursery() as nursery:
        for i in range(3):  # no per-address slot for the exempt address's anonymous clients
            nursery.start_soon(_hold_from, limits, "10.0.0.1", f"pub/{i}", release)
        await trio.testing.wait_all_tasks_blocked()
        assert limits.active == 3
        release.set()


async def _hold_from(limits: Limits, client_ip: str, repo: str, release: trio.Event) -> None:
    async with limits.git_operation(user=None, client_ip=client_ip, repo=repo, node_id="n1"):
        await release.wait()
