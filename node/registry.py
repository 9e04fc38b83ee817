"""The node in etcd: its volume's identity, and its registration under a lease.

- `volumes/<id>`: durable, written without a lease. The id is made once and
  kept in `<volume_dir>/.gitedge-volume.json`, so the repositories that etcd
  places on this volume find it again after a restart.
- `nodes/<id>`: under a lease kept alive every ttl/3, so a dead node vanishes
  from routing within `lease_ttl`; revoked on a clean shutdown so it vanishes
  at once. Re-put every ~30 s with fresh free space. With SSH on, it carries
  the SSH address and host public key: edges pin the host key from here.
  With TLS on (an https `http_url`), it carries the SHA-256 of the node's
  certificate, which edges pin the same way.

etcd being down never stops git serving: the node logs and keeps trying, and
re-registers with a new lease once etcd is back (the old one has expired).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from routing.etcd import EtcdClient, EtcdError
from routing.model import (
    InvalidRegion,
    NodeId,
    NodeRecord,
    Region,
    VolumeId,
    VolumeInfo,
    VolumeRecord,
    parse_region,
)
from routing.schema import Keys, encode_node, encode_volume

log = logging.getLogger(__name__)

VOLUME_FILE = ".gitedge-volume.json"
_VOLUME_ID = re.compile(r"v-[0-9a-f]{16}")
REFRESH_INTERVAL = 30.0
RETRY_MIN, RETRY_MAX = 0.2, 2.0
REVOKE_TIMEOUT = 2.0


class VolumeError(Exception):
    """The volume dir cannot be served by this node as configured."""


@dataclass(frozen=True)
class VolumeIdentity:
    volume_id: VolumeId
    region: Region


def load_or_create_volume(volume_dir: Path, region: Region) -> VolumeIdentity:
    """The volume's identity, made on first use. Blocking; call it in a thread."""
    volume_dir.mkdir(parents=True, exist_ok=True)
    path = volume_dir / VOLUME_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        identity = VolumeIdentity(VolumeId("v-" + secrets.token_hex(8)), region)
        _write_atomically(path, {"volume_id": identity.volume_id, "region": identity.region})
        log.info("new volume %s in %s at %s", identity.volume_id, region, volume_dir)
        return identity
    identity = _parse_identity(path, raw)
    if identity.region != region:
        # Serving it would route another region's repositories through this one.
        raise VolumeError(
            f"{path}: volume {identity.volume_id} belongs to region {identity.region!r},"
            f" but this node is configured for {region!r}"
        )
    return identity


def _parse_identity(path: Path, raw: bytes) -> VolumeIdentity:
    try:
        data = json.loads(raw)
        volume_id, region = data["volume_id"], data["region"]
        if not isinstance(volume_id, str) or not _VOLUME_ID.fullmatch(volume_id):
            raise ValueError(f"bad volume_id {volume_id!r}")
        return VolumeIdentity(VolumeId(volume_id), parse_region(region))
    except (ValueError, KeyError, TypeError, InvalidRegion) as exc:
        raise VolumeError(f"{path}: not a gitedge volume file: {exc}") from None


def _write_atomically(path: Path, data: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        json.dump(data, out, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(path)


class Registration:
    """Keeps `nodes/<id>` alive in etcd for as long as `run` runs."""

    def __init__(
        self,
        etcd: EtcdClient,
        keys: Keys,
        *,
        node_id: NodeId,
        volume: VolumeIdentity,
        volume_dir: Path,
        http_url: str,
        lease_ttl: int,
        refresh_interval: float = REFRESH_INTERVAL,
        tls_cert_sha256: str | None = None,
    ) -> None:
        if http_url.startswith("https://") != (tls_cert_sha256 is not None):
            # An https node without a pin is one no edge can verify, so none would use it.
            raise ValueError("an https:// http_url and tls_cert_sha256 go together")
        self._etcd = etcd
        self._keys = keys
        self._node_id = node_id
        self._volume = volume
        self._volume_dir = volume_dir
        self._http_url = http_url
        self._tls_cert_sha256 = tls_cert_sha256
        self._ttl = lease_ttl
        self._refresh_interval = refresh_interval
        # A hung etcd must not stall the loop for a whole TTL: by then the lease
        # is gone anyway and the next attempt registers afresh.
        self._step_timeout = max(2.0, lease_ttl / 2)
        self._lease = 0
        self._etcd_down = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Register (retrying while etcd is down), report started, then keep alive."""
        delay = RETRY_MIN
        while not await self._attempt(self._register):
            await trio.sleep(delay)
            delay = min(RETRY_MAX, delay * 2)
        task_status.started()
        await self._keep_alive()

    async def revoke(self) -> None:
        """Drop the lease so the node leaves routing now rather than in `lease_ttl`."""
        if not self._lease:
            return
        lease, self._lease = self._lease, 0
        with trio.move_on_after(REVOKE_TIMEOUT, shield=True):
            try:
                await self._etcd.lease_revoke(lease)
                log.info("lease %x revoked; node %s unregistered", lease, self._node_id)
                return
            except EtcdError as exc:
                log.warning("could not revoke lease %x: %s", lease, exc)
                return
        log.warning("could not revoke lease %x in %ss", lease, REVOKE_TIMEOUT)

    async def _keep_alive(self) -> None:
        next_refresh = trio.current_time() + self._refresh_interval
        while True:
            await trio.sleep(self._ttl / 3)
            if trio.current_time() >= next_refresh:
                if await self._attempt(self._refresh):
                    next_refresh = trio.current_time() + self._refresh_interval
            else:
                await self._attempt(self._renew)

    async def _attempt(self, step: Callable[[], Awaitable[None]]) -> bool:
        """Run one step against etcd; log a failure (once per outage) instead of raising."""
        try:
            with trio.fail_after(self._step_timeout):
                await step()
        except (EtcdError, trio.TooSlowError) as exc:
            if not self._etcd_down:
                log.warning("etcd unreachable; serving on and retrying: %s", exc or "timeout")
            self._etcd_down = True
            return False
        if self._etcd_down:
            log.info("etcd reachable again; node %s registered", self._node_id)
            self._etcd_down = False
        return True

    async def _register(self) -> None:
        """A new lease, the durable volume key, then the node key under the lease."""
        lease = await self._etcd.lease_grant(self._ttl)
        volume = VolumeRecord(self._volume.volume_id, self._volume.region, self._node_id)
        await self._etcd.put(self._keys.volume(volume.volume_id), encode_volume(volume))
        await self._put_node(lease)
        self._lease = lease
        log.info(
            "registered node %s (%s, volume %s) at %s, lease %x",
            self._node_id,
            self._volume.region,
            self._volume.volume_id,
            self._http_url,
            lease,
        )

    async def _renew(self) -> None:
        if not self._lease or await self._etcd.lease_keepalive(self._lease) <= 0:
            if self._lease:
                log.warning("lease %x expired (etcd outage?): registering again", self._lease)
            self._lease = 0
            await self._register()

    async def _refresh(self) -> None:
        """Keep alive and re-put the node key with the current free space."""
        await self._renew()
        await self._put_node(self._lease)

    async def _put_node(self, lease: int) -> None:
        free = shutil.disk_usage(self._volume_dir).free
        record = NodeRecord(
            self._node_id,
            self._volume.region,
            self._http_url,
            (VolumeInfo(self._volume.volume_id, free),),
            tls_cert_sha256=self._tls_cert_sha256,
        )
        await self._etcd.put(self._keys.node(self._node_id), encode_node(record), lease=lease)
