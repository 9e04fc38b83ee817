"""EtcdClient and mirror_prefix against a real etcd (no mocks).

Network faults between the client and etcd come from `Relay`, a TCP relay the
test can cut (connections reset, new ones refused) or black-hole (connections
accepted, nothing forwarded: a hung etcd).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio

import routing.etcd
from devnet.procs import EtcdServer, free_port, http_ok, spawn, start_etcd, wait_until
from routing.etcd import (
    EtcdClient,
    EtcdError,
    EtcdOutcomeUnknown,
    EtcdUnavailable,
    KeyValue,
    WatchCompacted,
    WatchEvent,
)
from routing.mirror import mirror_prefix

# --- helpers ------------------------------------------------------------------------


class Relay:
    """127.0.0.1:<port> -> etcd, with faults on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode = "forward"  # or "refuse", "blackhole"
        self._flowing = trio.Event()
        self._flowing.set()
        self._connections: set[trio.CancelScope] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        """Reset every connection and refuse new ones (etcd gone)."""
        self.mode = "refuse"
        for scope in self._connections:
            scope.cancel()

    def blackhole(self) -> None:
        """Keep connections open and accept new ones, but forward nothing (etcd hung)."""
        self.mode = "blackhole"
        self._flowing = trio.Event()

    def restore(self) -> None:
        self.mode = "forward"
        self._flowing.set()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            if self.mode == "refuse":
                return
            with trio.CancelScope() as scope:
                self._connections.add(scope)
                try:
                    upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
                    async with upstream, trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope)
                        nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope)
                except (trio.BrokenResourceError, OSError):
                    pass
                finally:
                    self._connections.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, pair: trio.CancelScope
    ) -> None:
        try:
            while data := await source.receive_some(65536):
                await self._flowing.wait()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        pair.cancel()


class RecordingMirror:
    """A PrefixMirror that keeps a dict and a log of everything it was told."""

    def __init__(self) -> None:
        self.state: dict[str, bytes] = {}
        self.revision = 0
        self.resets: list[int] = []
        self.applied: list[WatchEvent] = []
        self.synced_history: list[bool] = []
        self._changed = trio.Event()

    def reset(self, kvs: list[KeyValue], revision: int) -> None:
        self.state = {kv.key: kv.value for kv in kvs}
        self.revision = revision
        self.resets.append(revision)
        self._notify()

    def apply(self, events: list[WatchEvent], revision: int) -> None:
        for event in events:
            # No duplicates and no going back: each event is newer than all we have.
            assert event.kv.mod_revision > self.revision
            if event.kind == "PUT":
                self.state[event.kv.key] = event.kv.value
            else:
                self.state.pop(event.kv.key, None)
        assert revision >= self.revision
        self.revision = revision
        self.applied.extend(events)
        self._notify()

    def set_synced(self, synced: bool) -> None:
        self.synced_history.append(synced)
        self._notify()

    @property
    def synced(self) -> bool:
        return bool(self.synced_history) and self.synced_history[-1]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await self._changed.wait()


async def wait_polling(condition: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """For state only etcd knows (lease expiry): poll, with a deadline."""
    with trio.fail_after(timeout):
        while not await condition():
            await trio.sleep(0.1)


async def until_watch_is_live(etcd: EtcdClient, mirror: RecordingMirror, prefix: str) -> int:
    """`started` comes after the list, before the watch: prove the watch delivers."""
    revision = await etcd.put(prefix + "live", b"")
    await mirror.wait_for(lambda: mirror.revision == revision)
    return revision


def restart_etcd(server: EtcdServer) -> None:
    """Stop etcd and start it again with the same argv: same ports, same data dir."""
    argv = [str(arg) for arg in server.process.popen.args]  # type: ignore[union-attr]
    server.stop()
    process = spawn(server.process.name, argv, server.process.log_path.parent)
    server.process = process
    wait_until(process, http_ok(server.url + "/health"), 30, "etcd health after restart")


@pytest.fixture
async def relay(etcd_server: EtcdServer) -> AsyncIterator[Relay]:
    port = int(etcd_server.url.rsplit(":", 1)[1])
    relay = Relay(port)
    async with trio.open_nursery() as nursery:
        await nursery.start(relay.serve)
        yield relay
        nursery.cancel_scope.cancel()


@pytest.fixture
def own_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd this test may restart without disturbing the others."""
    server = start_etcd(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def leaderless_member(tmp_path: Path) -> Iterator[str]:
    """The client URL of the one member left of a three-member cluster: it has no leader."""
    etcd = shutil.which("etcd")
    assert etcd is not None
    names = ["m1", "m2", "m3"]
    clients = {name: f"http://127.0.0.1:{free_port()}" for name in names}
    peers = {name: f"http://127.0.0.1:{free_port()}" for name in names}
    cluster = ",".join(f"{name}={peers[name]}" for name in names)
    members = [
        spawn(
            name,
            [
                etcd,
                "--name",
                name,
                "--data-dir",
                str(tmp_path / name),
                "--listen-client-urls",
                clients[name],
                "--advertise-client-urls",
                clients[name],
                "--listen-peer-urls",
                peers[name],
                "--initial-advertise-peer-urls",
                peers[name],
                "--initial-cluster",
                cluster,
                "--initial-cluster-state",
                "new",
                "--log-level",
                "warn",
            ],
            tmp_path,
        )
        for name in names
    ]
    try:
        for member, name in zip(members, names, strict=True):
            wait_until(member, http_ok(clients[name] + "/health"), 30, "cluster health")
        for member in members[1:]:
            member.kill()  # not stop(): a stopping leader hands its leadership over first
        survivor = clients["m1"]
        wait_until(members[0], lambda: not has_leader(survivor), 30, "loss of leader")
        yield survivor
    finally:
        for member in members:
            member.stop()


def has_leader(url: str) -> bool:
    try:
        status = httpx.post(url + "/v3/maintenance/status", json={}, timeout=1.0).json()
    except (httpx.HTTPError, ValueError):
        return True  # cannot tell yet
    return bool(status.get("leader"))


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- keys -------------------------------------------------------------------------


async def test_put_get_range_delete(etcd: EtcdClient, key_prefix: str) -> None:
    rev_a = await etcd.put(key_prefix + "a", b"1")
    rev_b = await etcd.put(key_prefix + "b", b"2")
    await etcd.put(key_prefix.rstrip("/") + "x", b"outside the prefix")
    assert rev_b > rev_a

    kv = await etcd.get(key_prefix + "a")
    assert kv is not None
    assert (kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        key_prefix + "a",
        b"1",
        rev_a,
        rev_a,
        1,
        0,
    )
    assert await etcd.get(key_prefix + "missing") is None

    listed = await etcd.range(key_prefix, prefix=True)
    assert [(kv.key, kv.value) for kv in listed.kvs] == [
        (key_prefix + "a", b"1"),
        (key_prefix + "b", b"2"),
    ]
    assert listed.revision >= rev_b + 1
    single = await etcd.range(key_prefix + "b")
    assert [kv.value for kv in single.kvs] == [b"2"]

    assert await etcd.delete(key_prefix + "a") == 1
    assert await etcd.delete(key_prefix + "a") == 0
    await etcd.put(key_prefix + "c", b"3")
    assert await etcd.delete(key_prefix, prefix=True) == 2
    assert (await etcd.range(key_prefix, prefix=True)).kvs == []
    assert await etcd.get(key_prefix.rstrip("/") + "x") is not None


async def test_binary_values_and_non_ascii_keys(etcd: EtcdClient, key_prefix: str) -> None:
    key = key_prefix + "ключ/名前"
    value = bytes(range(256))
    await etcd.put(key, value)
    kv = await etcd.get(key)
    assert kv is not None
    assert (kv.key, kv.value) == (key, value)
    assert [kv.key for kv in (await etcd.range(key_prefix + "ключ/", prefix=True)).kvs] == [key]


async def test_prefix_range_is_paged_at_one_revision(
    etcd: EtcdClient, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(routing.etcd, "RANGE_PAGE_SIZE", 2)
    keys = [f"{key_prefix}{i}" for i in range(5)]
    for key in keys:
        last = await etcd.put(key, key.encode())
    before = etcd.requests_made
    listed = await etcd.range(key_prefix, prefix=True)
    assert etcd.requests_made - before == 3
    assert [kv.key for kv in listed.kvs] == keys
    assert listed.revision == last


async def test_create_if_absent(etcd: EtcdClient, key_prefix: str) -> None:
    first = await etcd.create(key_prefix + "repo", b"first")
    assert first.succeeded
    second = await etcd.create(key_prefix + "repo", b"second")
    assert not second.succeeded
    assert second.revision == first.revision
    kv = await etcd.get(key_prefix + "repo")
    assert kv is not None
    assert kv.value == b"first"


async def test_put_if_unchanged(etcd: EtcdClient, key_prefix: str) -> None:
    key = key_prefix + "k"
    rev = await etcd.put(key, b"v1")
    assert (await etcd.put_if_unchanged(key, b"v2", rev)).succeeded
    stale = await etcd.put_if_unchanged(key, b"v3", rev)
    assert not stale.succeeded
    kv = await etcd.get(key)
    assert kv is not None
    assert (kv.value, kv.version) == (b"v2", 2)


async def test_delete_if_unchanged(etcd: EtcdClient, key_prefix: str) -> None:
    key = key_prefix + "k"
    rev = await etcd.put(key, b"v1")
    await etcd.put(key, b"v2")
    assert not (await etcd.delete_if_unchanged(key, rev)).succeeded
    assert await etcd.get(key) is not None
    current = await etcd.get(key)
    assert current is not None
    assert (await etcd.delete_if_unchanged(key, current.mod_revision)).succeeded
    assert await etcd.get(key) is None


async def test_etcd_error_carries_etcds_message(etcd: EtcdClient) -> None:
    with pytest.raises(EtcdError, match="future revision") as info:
        await etcd.compact(10**12)
    assert not isinstance(info.value, EtcdUnavailable)


# --- leases -----------------------------------------------------------------------
# etcd's minimum TTL with default timing is 2 s; a 1 s grant becomes 2 s.


async def test_lease_expiry_removes_leased_key(etcd: EtcdClient, key_prefix: str) -> None:
    lease = await etcd.lease_grant(2)
    await etcd.put(key_prefix + "node", b"alive", lease=lease)
    kv = await etcd.get(key_prefix + "node")
    assert kv is not None
    assert kv.lease == lease

    async def gone() -> bool:
        return await etcd.get(key_prefix + "node") is None

    await wait_polling(gone, timeout=10)
    assert await etcd.lease_keepalive(lease) == 0


async def test_keepalive_extends_lease(etcd: EtcdClient, key_prefix: str) -> None:
    lease = await etcd.lease_grant(2)
    await etcd.put(key_prefix + "node", b"alive", lease=lease)
    granted_at = time.monotonic()
    # Outlive the original TTL by half again, renewing twice a second.
    while time.monotonic() - granted_at < 3.0:
        assert await etcd.lease_keepalive(lease) == 2
        await trio.sleep(0.5)
    assert await etcd.get(key_prefix + "node") is not None
    await etcd.lease_revoke(lease)


async def test_revoke_removes_at_once_and_is_idempotent(etcd: EtcdClient, key_prefix: str) -> None:
    lease = await etcd.lease_grant(60)
    await etcd.put(key_prefix + "a", b"1", lease=lease)
    await etcd.put(key_prefix + "b", b"2", lease=lease)
    await etcd.lease_revoke(lease)
    assert (await etcd.range(key_prefix, prefix=True)).kvs == []
    assert await etcd.lease_keepalive(lease) == 0
    await etcd.lease_revoke(lease)  # gone already: not an error


# --- watch ------------------------------------------------------------------------


async def test_watch_yields_puts_and_deletes_in_order(etcd: EtcdClient, key_prefix: str) -> None:
    start = await etcd.put(key_prefix.rstrip("/") + "-sibling", b"not watched")
    seen: list[WatchEvent] = []
    with trio.fail_after(10):
        async with etcd.open_watch(key_prefix, start + 1) as watch:
            assert watch.created_revision >= start
            r1 = await etcd.put(key_prefix + "a", b"1")
            r2 = await etcd.put(key_prefix + "a", b"2")
            await etcd.put(key_prefix.rstrip("/") + "-sibling", b"still not watched")
            assert await etcd.delete(key_prefix + "a") == 1
            r3 = (await etcd.range(key_prefix, prefix=True)).revision
            async for batch in watch:
                assert batch.revision >= batch.events[-1].kv.mod_revision
                seen.extend(batch.events)
                if len(seen) >= 3:
                    break
    assert [(e.kind, e.kv.key, e.kv.value, e.kv.mod_revision) for e in seen] == [
        ("PUT", key_prefix + "a", b"1", r1),
        ("PUT", key_prefix + "a", b"2", r2),
        ("DELETE", key_prefix + "a", b"", r3),
    ]
    assert seen[1].kv.version == 2


async def test_watch_from_compacted_revision(etcd: EtcdClient, key_prefix: str) -> None:
    old = await etcd.put(key_prefix + "k", b"1")
    latest = await etcd.put(key_prefix + "k", b"2")
    await etcd.compact(latest)
    await etcd.compact(latest)  # already compacted: not an error
    with trio.fail_after(10), pytest.raises(WatchCompacted) as info:
        async with etcd.open_watch(key_prefix, old) as watch:
            async for _ in watch:
                pytest.fail("a compacted watch yielded events")
    assert info.value.compact_revision == latest


async def test_watch_catch_up_batch_header_runs_ahead_of_its_events(
    etcd: EtcdClient, key_prefix: str
) -> None:
    """Why mirror_prefix resumes after the last *event*: etcd sends a catch-up of more
    than 1000 revisions in pieces, each stamped with the store's current revision."""
    first = await etcd.put(key_prefix + "0", b"")
    async with trio.open_nursery() as nursery:
        limiter = trio.CapacityLimiter(32)  # etcd batches concurrent writes into fewer fsyncs

        async def put(i: int) -> None:
            async with limiter:
                await etcd.put(f"{key_prefix}{i}", b"")

        for i in range(1, 1100):
            nursery.start_soon(put, i)
    with trio.fail_after(10):
        async with etcd.open_watch(key_prefix, first) as watch:
            batch = await anext(watch)
    assert len(batch.events) == 1000
    assert batch.revision > batch.events[-1].kv.mod_revision


async def test_watch_refused_by_member_without_leader(leaderless_member: str) -> None:
    """Without etcd's require-leader metadata a cut-off member confirms the watch and
    then stays silent; with it, the watch fails at once and can go elsewhere."""
    async with EtcdClient(leaderless_member, timeout=2.0) as client:
        with trio.fail_after(2), pytest.raises(EtcdUnavailable, match="no leader"):
            async with client.open_watch("/k/", 1):
                pytest.fail("a member without a leader confirmed the watch")


async def test_closed_watches_give_their_connection_back(etcd: EtcdClient, key_prefix: str) -> None:
    """More watches than the pool has connections (100): a leaked response would stall."""
    revision = await etcd.put(key_prefix + "k", b"v")
    with trio.fail_after(10):
        for _ in range(120):
            # Waits for etcd's confirmation only: catching up from an old revision
            # would cost etcd's 100 ms sync tick per watch.
            async with etcd.open_watch(key_prefix, revision + 1) as watch:
                assert watch.created_revision >= revision
        assert await etcd.get(key_prefix + "k") is not None


async def test_watch_check_member_fails_on_a_hung_member_and_demotes_it(
    etcd_server: EtcdServer, relay: Relay, key_prefix: str
) -> None:
    """A hung member keeps the watch's connection open and silent: only the probe tells."""
    async with EtcdClient([relay.url, etcd_server.url], timeout=0.5) as client:
        with trio.fail_after(5):
            async with client.open_watch(key_prefix, 1) as watch:
                assert watch.endpoint == relay.url
                await watch.check_member()  # healthy: returns
                relay.blackhole()
                with pytest.raises(EtcdUnavailable, match="health check"):
                    await watch.check_member()
            before = client.requests_made
            await client.get(key_prefix + "k")
        assert client.requests_made == before + 1  # straight to the other member
    relay.restore()


# --- endpoints --------------------------------------------------------------------


async def test_unavailable_quickly_when_nothing_listens() -> None:
    url = dead_url()
    async with EtcdClient(url, timeout=2.0) as client:
        started = trio.current_time()
        with pytest.raises(EtcdUnavailable, match=f"127.0.0.1:{url.rsplit(':', 1)[1]}"):
            await client.get("/k")
        with pytest.raises(EtcdUnavailable):
            await client.put("/k", b"v")
        with pytest.raises(EtcdUnavailable):
            async with client.open_watch("/k/", 1):
                pytest.fail("a watch opened with nothing listening")
        assert trio.current_time() - started < 2.0
        assert client.requests_made == 3


async def _gateway_503(*, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """A proxy in front of a member that is down: 503 with a plain-text body."""

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request and (data := await stream.receive_some()):
                request += data
            body = b"upstream unavailable\n"
            head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            await stream.send_all(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
    await trio.serve_listeners(answer, listeners)


async def test_watch_moves_past_a_gateway_answering_503(
    etcd_server: EtcdServer, key_prefix: str
) -> None:
    async with trio.open_nursery() as nursery:
        gateway = await nursery.start(_gateway_503)
        async with EtcdClient([gateway, etcd_server.url], timeout=2.0) as client:
            with trio.fail_after(5):
                async with client.open_watch(key_prefix, 1) as watch:
                    assert watch.endpoint == etcd_server.url
            async with EtcdClient(gateway, timeout=2.0) as alone:
                with pytest.raises(EtcdUnavailable, match="503"):
                    async with alone.open_watch(key_prefix, 1):
                        pytest.fail("a gateway answering 503 confirmed the watch")
        nursery.cancel_scope.cancel()


async def test_failover_to_second_endpoint(etcd_server: EtcdServer, key_prefix: str) -> None:
    async with EtcdClient([dead_url(), etcd_server.url], timeout=2.0) as client:
        revision = await client.put(key_prefix + "k", b"v")
        assert client.requests_made == 2  # refused, then answered
        kv = await client.get(key_prefix + "k")
        assert kv is not None
        assert kv.mod_revision == revision
        assert client.requests_made == 3  # sticks with the endpoint that works


async def test_hung_endpoint_times_out_and_mutations_are_not_replayed(
    relay: Relay, etcd_server: EtcdServer, key_prefix: str
) -> None:
    relay.blackhole()
    async with EtcdClient([relay.url, etcd_server.url], timeout=0.5) as client:
        with trio.fail_after(2):
            # The put reached a connection and may have been applied: not replayed.
            with pytest.raises(EtcdUnavailable, match="may or may not have been applied"):
                await client.put(key_prefix + "k", b"v")
            # A read is harmless to replay: it fails over.
            assert await client.get(key_prefix + "k") is None
    relay.restore()


# --- mirror_prefix ----------------------------------------------------------------


async def test_mirror_snapshot_then_live_updates(etcd: EtcdClient, key_prefix: str) -> None:
    await etcd.put(key_prefix + "a", b"1")
    listed_at = await etcd.put(key_prefix + "b", b"2")
    mirror = RecordingMirror()
    async with trio.open_nursery() as nursery:
        with trio.fail_after(5):
            await nursery.start(mirror_prefix, etcd, key_prefix, mirror)
        assert mirror.state == {key_prefix + "a": b"1", key_prefix + "b": b"2"}
        assert mirror.resets == [listed_at]
        assert mirror.synced_history == [True]

        await etcd.put(key_prefix + "c", b"3")
        await etcd.delete(key_prefix + "a")
        last = await etcd.put(key_prefix + "b", b"22")
        await mirror.wait_for(lambda: mirror.revision == last)
        assert mirror.state == {key_prefix + "b": b"22", key_prefix + "c": b"3"}
        nursery.cancel_scope.cancel()


async def test_mirror_resumes_after_etcd_restart(
    own_etcd: EtcdServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="routing")
    prefix = "/restart/"
    async with (
        EtcdClient(own_etcd.url, timeout=2.0) as writer,
        EtcdClient(own_etcd.url, timeout=2.0) as watcher,
    ):
        await writer.put(prefix + "before", b"0")
        mirror = RecordingMirror()
        async with trio.open_nursery() as nursery:
            await nursery.start(
                lambda task_status: mirror_prefix(
                    watcher, prefix, mirror, retry_min=0.05, retry_max=0.2, task_status=task_status
                )
            )
            first = await writer.put(prefix + "k", b"1")
            await mirror.wait_for(lambda: mirror.revision == first)

            await trio.to_thread.run_sync(own_etcd.stop)
            await mirror.wait_for(lambda: not mirror.synced)
            await trio.to_thread.run_sync(restart_etcd, own_etcd)
            written = [await writer.put(f"{prefix}after-{i}", str(i).encode()) for i in range(3)]
            await writer.delete(prefix + "before")
            last = await writer.put(prefix + "k", b"2")

            await mirror.wait_for(lambda: mirror.revision == last and mirror.synced)
            nursery.cancel_scope.cancel()

    assert mirror.state == {
        prefix + "k": b"2",
        prefix + "after-0": b"0",
        prefix + "after-1": b"1",
        prefix + "after-2": b"2",
    }
    # Resumed, not relisted; if not, the mirror's log says what made it relist.
    assert len(mirror.resets) == 1, caplog.text
    assert [e.kv.mod_revision for e in mirror.applied] == [first, *written, last - 1, last]
    assert mirror.synced_history[:3] == [True, False, True]


async def test_mirror_resumes_after_dropped_stream_without_relist(
    etcd: EtcdClient, relay: Relay, key_prefix: str
) -> None:
    mirror = RecordingMirror()
    async with EtcdClient(relay.url, timeout=1.0) as watcher, trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: mirror_prefix(
                watcher, key_prefix, mirror, retry_min=0.05, retry_max=0.2, task_status=task_status
            )
        )
        live = await until_watch_is_live(etcd, mirror, key_prefix)
        relay.cut()
        await mirror.wait_for(lambda: not mirror.synced)
        # Written while the mirror cannot see etcd: must arrive through the resumed watch.
        revisions = [await etcd.put(f"{key_prefix}{i}", b"x") for i in range(5)]
        relay.restore()
        await mirror.wait_for(lambda: mirror.revision == revisions[-1] and mirror.synced)
        nursery.cancel_scope.cancel()
    assert len(mirror.resets) == 1
    assert [e.kv.mod_revision for e in mirror.applied] == [live, *revisions]
    assert mirror.synced_history == [True, False, True]


async def test_mirror_relists_after_compaction(
    etcd: EtcdClient, relay: Relay, key_prefix: str
) -> None:
    await etcd.put(key_prefix + "doomed", b"1")
    mirror = RecordingMirror()
    async with EtcdClient(relay.url, timeout=1.0) as watcher, trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: mirror_prefix(
                watcher, key_prefix, mirror, retry_min=0.05, retry_max=0.2, task_status=task_status
            )
        )
        await until_watch_is_live(etcd, mirror, key_prefix)
        relay.cut()
        await mirror.wait_for(lambda: not mirror.synced)
        await etcd.delete(key_prefix + "doomed")
        await etcd.put(key_prefix + "new", b"2")
        latest = await etcd.put(key_prefix + "new", b"3")
        await etcd.compact(latest)  # the deletion is no longer in etcd's history
        relay.restore()
        await mirror.wait_for(lambda: len(mirror.resets) == 2 and mirror.synced)
        nursery.cancel_scope.cancel()
    assert mirror.resets[1] >= latest
    assert mirror.state == {key_prefix + "new": b"3", key_prefix + "live": b""}
    # etcd confirms the resumed watch, then cancels it as compacted on its next sync
    # pass (~100 ms later), so a True may sit between the False and the relist.
    assert mirror.synced_history[:2] == [True, False]
    assert mirror.synced_history[-1] is True


async def test_mirror_health_check_catches_hung_etcd(
    etcd: EtcdClient, relay: Relay, key_prefix: str
) -> None:
    mirror = RecordingMirror()
    async with EtcdClient(relay.url, timeout=0.5) as watcher, trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: mirror_prefix(
                watcher,
                key_prefix,
                mirror,
                retry_min=0.05,
                retry_max=0.2,
                health_interval=0.3,
                task_status=task_status,
            )
        )
        await until_watch_is_live(etcd, mirror, key_prefix)
        relay.blackhole()  # the watch's TCP connection stays open, silent
        hung_at = trio.current_time()
        await mirror.wait_for(lambda: not mirror.synced, timeout=5)
        # One health interval plus one request timeout, with slack for scheduling.
        assert trio.current_time() - hung_at < 0.3 + 0.5 + 0.5
        written = await etcd.put(key_prefix + "k", b"v")
        relay.restore()
        await mirror.wait_for(lambda: mirror.revision == written and mirror.synced)
        nursery.cancel_scope.cancel()
    assert mirror.state == {key_prefix + "k": b"v", key_prefix + "live": b""}
    assert len(mirror.resets) == 1


async def test_mirror_moves_to_another_endpoint_when_one_hangs(
    etcd_server: EtcdServer, etcd: EtcdClient, relay: Relay, key_prefix: str
) -> None:
    mirror = RecordingMirror()
    watcher = EtcdClient([relay.url, etcd_server.url], timeout=0.5)
    async with watcher, trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: mirror_prefix(
                watcher,
                key_prefix,
                mirror,
                retry_min=0.05,
                retry_max=0.2,
                health_interval=0.3,
                task_status=task_status,
            )
        )
        await until_watch_is_live(etcd, mirror, key_prefix)
        relay.blackhole()  # and it stays hung: the mirror must leave it
        await mirror.wait_for(lambda: not mirror.synced, timeout=5)
        written = await etcd.put(key_prefix + "k", b"v")
        await mirror.wait_for(lambda: mirror.revision == written and mirror.synced)
        nursery.cancel_scope.cancel()
    relay.restore()
    assert mirror.state == {key_prefix + "k": b"v", key_prefix + "live": b""}
    assert len(mirror.resets) == 1


async def test_mirror_waits_for_etcd_at_startup(relay: Relay, key_prefix: str) -> None:
    relay.cut()
    mirror = RecordingMirror()
    async with EtcdClient(relay.url, timeout=1.0) as watcher, trio.open_nursery() as nursery:
        started = trio.Event()

        async def run_mirror() -> None:
            await nursery.start(
                lambda task_status: mirror_prefix(
                    watcher,
                    key_prefix,
                    mirror,
                    retry_min=0.05,
                    retry_max=0.1,
                    task_status=task_status,
                )
            )
            started.set()

        nursery.start_soon(run_mirror)
        with trio.fail_after(5):
            while watcher.requests_made < 3:  # it keeps retrying...
                await trio.sleep(0.02)
        assert not started.is_set()  # ...and has not claimed to be ready
        assert mirror.synced_history == [False]
        relay.restore()
        with trio.fail_after(5):
            await started.wait()
        assert mirror.synced_history == [False, True]
        assert mirror.resets
        nursery.cancel_scope.cancel()


async def test_reads_and_writes_move_past_a_member_without_leader(
    leaderless_member: str, etcd_server: EtcdServer, key_prefix: str
) -> None:
    """A member cut off from its quorum refuses at once ("no leader", asked for with
    the require-leader metadata on every request), and nothing was proposed: reads
    and writes alike go on to the next member instead of waiting or failing."""
    async with EtcdClient([leaderless_member, etcd_server.url], timeout=2.0) as client:
        with trio.fail_after(2):
            created = await client.create(key_prefix + "k", b"v")
            assert created.succeeded
            found = await client.get(key_prefix + "k")
        assert found is not None and found.value == b"v"
    async with EtcdClient(leaderless_member, timeout=2.0) as alone:
        with trio.fail_after(2), pytest.raises(EtcdUnavailable, match="no leader") as refused:
            await alone.create(key_prefix + "other", b"v")
        assert not isinstance(refused.value, EtcdOutcomeUnknown)  # known: not applied
