"""The edge's JSON API: create a repository, say where one lives."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import h11
import httpx
import trio

from edge.errors import BadRequest, NoCapacity, NodeUnavailable, RepoExists, RoutingUnavailable
from edge.proto.http_head import RequestHead
from edge.stream import BufferedStream, relay_body
from routing.cache import RoutingCache
from routing.etcd import EtcdClient, EtcdError
from routing.model import (
    InvalidRegion,
    InvalidRepoName,
    NodeRecord,
    Region,
    RepoLocation,
    RepoName,
    RepoRecord,
    parse_region,
)
from routing.placement import PlacementError
from routing.schema import encode_repo

log = logging.getLogger(__name__)

MAX_JSON_BODY = 64 * 1024


class _Collector:
    """A sink for relay_body that keeps the bytes, up to a limit."""

    def __init__(self, limit: int) -> None:
        self.data = bytearray()
        self._limit = limit

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.data += data
        if len(self.data) > self._limit:
            raise BadRequest(f"request body over {self._limit} bytes")


async def read_json_body(
    client: BufferedStream, raw_head: bytes, head: RequestHead, timeout: float
) -> Any:
    """The request's JSON body, decoded (chunked or not) with h11; BadRequest otherwise."""
    framer = head.new_body_framer()
    sink = _Collector(MAX_JSON_BODY + 4096)
    await relay_body(client, sink, framer, timeout)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw_head + bytes(sink.data))
    body = bytearray()
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) or event is h11.NEED_DATA:
            break
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest("request body must be JSON") from None


def parse_create_request(payload: Any) -> RepoName:
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
        raise BadRequest('expected JSON {"name": "owner/name"}')
    try:
        return RepoName.parse(payload["name"])
    except InvalidRepoName as exc:
        raise BadRequest(f"bad repository name: {exc}") from None


def client_region(header_value: bytes | None, trusted: bool, own_region: Region) -> Region:
    """The region header counts only from a trusted proxy; else the edge's own region."""
    if header_value is None or not trusted:
        return own_region
    try:
        return parse_region(header_value.decode("ascii", "replace").strip())
    except InvalidRegion as exc:
        raise BadRequest(str(exc)) from None


async def create_repo(
    name: RepoName,
    region: Region,
    fallback: Region | None,
    cache: RoutingCache,
    etcd: EtcdClient,
    node_admin: NodeAdmin,
) -> RepoLocation:
    """Place, record (create-if-absent), then init on the node; roll back on failure."""
    try:
        volume, node = cache.place(region, fallback)
    except PlacementError as exc:
        raise NoCapacity(str(exc)) from None
    record = RepoRecord(name, volume.volume_id, volume.region, round(time.time(), 3))
    key = cache.keys.repo(name)
    try:
        txn = await etcd.create(key, encode_repo(record))
    except EtcdError as exc:
        raise RoutingUnavailable(f"create {key}: {exc}") from None
    if not txn.succeeded:
        raise RepoExists(name.path)
    try:
        await node_admin.init_repo(node, name)
    except NodeUnavailable:
        with trio.move_on_after(5, shield=True):
            try:
                rolled_back = (await etcd.delete_if_unchanged(key, txn.revision)).succeeded
            except EtcdError as exc:
                rolled_back = False
                log.error("rollback of %s failed: %s", key, exc)
            log.warning(
                "init of %s on %s failed; record rolled back: %s", name, node.node_id, rolled_back
            )
        raise
    cache.add_created(record)
    return RepoLocation(name, volume.region, volume.volume_id, node.node_id, node.http_url)


class NodeAdmin:
    """Calls to a node's internal API, authenticated with the shared secret."""

    def __init__(self, client: httpx.AsyncClient, secret: str) -> None:
        self._client = client
        self._auth = {"authorization": f"Bearer {secret}"}

    async def init_repo(self, node: NodeRecord, name: RepoName) -> None:
        url = node.http_url.rstrip("/") + "/_gitedge/repos"
        try:
            response = await self._client.post(url, json={"name": name.path}, headers=self._auth)
        except httpx.HTTPError as exc:
            raise NodeUnavailable(f"init {name} on {node.node_id}: {exc!r}") from None
        if response.status_code not in (200, 201):
            raise NodeUnavailable(
                f"init {name} on {node.node_id}: HTTP {response.status_code} {response.text[:200]}"
            )
