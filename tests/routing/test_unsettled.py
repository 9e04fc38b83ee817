"""Creates with an unknown outcome are deleted once etcd answers, if they were applied."""

from __future__ import annotations

from routing.etcd import EtcdClient
from routing.unsettled import UnsettledWrites


async def test_an_applied_create_is_deleted_and_another_value_kept(
    etcd: EtcdClient, key_prefix: str
) -> None:
    ours, theirs = key_prefix + "ours", key_prefix + "theirs"
    # As if etcd applied our timed-out create after all (with a key it put alongside).
    await etcd.put(ours, b"our record")
    await etcd.put(ours + "/applied", b"0")
    # Never applied; someone else created the name meanwhile.
    await etcd.put(theirs, b"their record")
    unsettled = UnsettledWrites()
    unsettled.add(ours, b"our record", (ours, ours + "/applied"))
    unsettled.add(theirs, b"our record", (theirs,))
    assert len(unsettled) == 2
    await unsettled.settle(etcd)
    assert len(unsettled) == 0
    assert await etcd.get(ours) is None and await etcd.get(ours + "/applied") is None
    kept = await etcd.get(theirs)
    assert kept is not None and kept.value == b"their record"


async def test_unreachable_etcd_keeps_them_for_later(key_prefix: str) -> None:
    unsettled = UnsettledWrites()
    unsettled.add(key_prefix + "k", b"v", (key_prefix + "k",))
    async with EtcdClient("http://127.0.0.1:9", timeout=0.5) as dead:
        await unsettled.settle(dead)
    assert len(unsettled) == 1
