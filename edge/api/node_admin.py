"""The edge's calls to a node's internal API (repository init).

They go over the node pool like git does, so they carry the same credential
line and reach a TLS node only after its certificate matched the pin in etcd
(edge/http/pool.py); `[nodes] require_tls` applies to them too.
"""

from __future__ import annotations

import json

import trio

from edge.errors import NodeUnavailable
from edge.http.pool import NodePool
from edge.http.stream import HeadTimeout
from edge.proto.body import BodyError
from edge.proto.exchange import response_framer
from edge.proto.http_head import HeadError, parse_response_head
from routing.model import NodeRecord, RepoName

# The answer is a line of JSON; an error's text is kept for the log, this much of it.
MAX_ANSWER = 4096
_FAILED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HeadError, BodyError)


class NodeAdmin:
    """Calls to a node's internal API, authenticated with the pool's credential."""

    def __init__(self, pool: NodePool, timeout: float = 10.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def init_repo(self, node: NodeRecord, name: RepoName) -> None:
        await self._call(node, name, b"POST", b"/_gitedge/repos", {"name": name.path})

    async def init_replica(self, node: NodeRecord, name: RepoName) -> None:
        """Init one replica of a replicated repository (the node installs its hooks)."""
        body = {"name": name.path, "replicated": True}
        await self._call(node, name, b"POST", b"/_gitedge/repos", body)

    async def drop_replica(self, node: NodeRecord, name: RepoName) -> None:
        """Delete a replica again (rollback of a failed replicated create)."""
        await self._call(node, name, b"DELETE", b"/_gitedge/repos/" + name.path.encode(), None)

    async def _call(
        self,
        node: NodeRecord,
        name: RepoName,
        method: bytes,
        target: bytes,
        payload: dict[str, object] | None,
    ) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        # fresh: a POST is never replayed, so it must not meet a pooled
        # connection that the node may be closing (DESIGN, "Pooled keep-alive").
        conn = await self._pool.acquire(node.http_url, fresh=True, node_id=node.node_id)
        lines = [method + b" " + target + b" HTTP/1.1", b"host: " + conn.host_header]
        if conn.auth_line:
            lines.append(conn.auth_line)
        if payload is not None:
            lines.append(b"content-type: application/json")
        lines += [
            b"content-length: %d" % len(body),
            b"connection: close",
            b"",
            body,
        ]
        try:
            with trio.fail_after(self._timeout):
                await conn.stream.send_all(b"\r\n".join(lines))
                raw = await conn.stream.read_head(self._timeout)
                if raw is None:
                    raise NodeUnavailable(f"init {name} on {node.node_id}: closed without answer")
                response = parse_response_head(raw)
                framer = response_framer(response, method)
                answer = b""
                while not framer.done and len(answer) < MAX_ANSWER:
                    data = await conn.stream.receive()
                    if not data:
                        break
                    answer += data[: framer.feed(data)]
        except (*_FAILED, HeadTimeout, trio.TooSlowError) as exc:
            raise NodeUnavailable(f"init {name} on {node.node_id}: {exc!r}") from None
        finally:
            await conn.stream.aclose()
        if response.status not in (200, 201, 204):
            text = answer[:200].decode("utf-8", "replace")
            raise NodeUnavailable(f"init {name} on {node.node_id}: HTTP {response.status} {text}")
