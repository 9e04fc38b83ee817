"""The edge's calls to a node's internal API: repository init, and the replica-set
changes, repair and verify (node/repl_api.py) that routing/replica_changes.py
and routing/consistency.py drive.

They go over the node pool like git does, so they carry the same credential
line and reach a TLS node only after its certificate matched the pin in etcd
(edge/http/pool.py); `[nodes] require_tls` applies to them too.
"""

from __future__ import annotations

import json
from typing import Any

import trio

from edge.errors import NodeUnavailable
from edge.http.pool import NodePool
from edge.http.stream import HeadTimeout
from edge.proto.body import BodyError
from edge.proto.exchange import response_framer
from edge.proto.http_head import HeadError, parse_response_head
from routing.model import NodeRecord, RepoName, VolumeId
from routing.replica_changes import ReplicaChangeRefused

# An answer is a line of JSON; an error's text is kept for the log, this much of it.
MAX_ANSWER = 4096
MAX_REFS_ANSWER = 64 * 1024 * 1024  # every ref of a replica: ~70 bytes a ref
APPLY_TIMEOUT = 120.0  # a catch-up may fetch the whole repository
OPTIMIZE_TIMEOUT = 300.0  # a full repack of a large repository (the node's own limit is longer)
_FAILED = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, HeadError, BodyError)
_REPL = b"/_gitedge/repl/"


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
        """Delete a replica (rollback of a failed create, a removed replica)."""
        await self._call(node, name, b"DELETE", b"/_gitedge/repos/" + name.path.encode(), None)

    async def optimize(self, node: NodeRecord, name: RepoName) -> dict[str, Any]:
        """Optimize one copy now (node/admin_api.py); its report."""
        target = b"/_gitedge/repos/" + name.path.encode() + b"/optimize"
        raw = await self._call(node, name, b"POST", target, None, OPTIMIZE_TIMEOUT)
        try:
            answer = json.loads(raw)
        except ValueError:
            raise NodeUnavailable(f"optimize {name} on {node.node_id}: bad answer") from None
        if not isinstance(answer, dict):
            raise NodeUnavailable(f"optimize {name} on {node.node_id}: not a JSON object")
        return answer

    async def seed(
        self, node: NodeRecord, name: RepoName, added: VolumeId, sync_replicas: int
    ) -> int:
        body = {"name": name.path, "add": added, "sync_replicas": sync_replicas}
        return int(await self._repl(node, name, b"seed", body, "generation"))

    async def apply(self, node: NodeRecord, name: RepoName) -> int:
        answer = await self._repl(node, name, b"apply", {"name": name.path}, "generation")
        return int(answer)

    async def unhook(self, node: NodeRecord, name: RepoName) -> None:
        await self._repl(node, name, b"unhook", {"name": name.path}, None)

    async def repair(self, node: NodeRecord, name: RepoName, by: str) -> tuple[int, int]:
        body = {"name": name.path, "by": by}
        answer = await self._repl(node, name, b"repair", body, None)
        return int(answer["generation"]), int(answer["moved"])

    async def replica_refs(self, node: NodeRecord, name: RepoName) -> dict[str, str]:
        answer = await self._repl(node, name, b"refs", {"name": name.path}, "refs")
        if not isinstance(answer, dict):
            raise NodeUnavailable(f"refs of {name} on {node.node_id}: not a JSON object")
        return {str(ref): str(oid) for ref, oid in answer.items()}

    async def _repl(
        self,
        node: NodeRecord,
        name: RepoName,
        action: bytes,
        body: dict[str, Any],
        field: str | None,
    ) -> Any:
        """A replication op; its JSON answer (or one field of it)."""
        timeout = APPLY_TIMEOUT if action == b"apply" else 3 * self._timeout
        limit = MAX_REFS_ANSWER if action == b"refs" else MAX_ANSWER
        raw = await self._call(node, name, b"POST", _REPL + action, body, timeout, limit)
        try:
            answer = json.loads(raw)
            return answer if field is None else answer[field]
        except (ValueError, KeyError, TypeError):
            raise NodeUnavailable(
                f"{action.decode()} {name} on {node.node_id}: bad answer"
            ) from None

    async def _call(
        self,
        node: NodeRecord,
        name: RepoName,
        method: bytes,
        target: bytes,
        payload: dict[str, object] | None,
        timeout: float | None = None,
        limit: int = MAX_ANSWER,
    ) -> bytes:
        """The answer's body (at most `limit` bytes); NodeUnavailable on any failure,
        ReplicaChangeRefused with the node's sentence on a 409."""
        timeout = timeout or self._timeout
        what = f"{target.decode()} {name} on {node.node_id}"
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
            with trio.fail_after(timeout):
                await conn.stream.send_all(b"\r\n".join(lines))
                raw = await conn.stream.read_head(timeout)
                if raw is None:
                    raise NodeUnavailable(f"{what}: closed without answer")
                response = parse_response_head(raw)
                framer = response_framer(response, method)
                pieces: list[bytes] = []
                size = 0
                while not framer.done and size < limit:
                    data = await conn.stream.receive()
                    if not data:
                        break
                    pieces.append(data[: framer.feed(data)])
                    size += len(pieces[-1])
                answer = b"".join(pieces)
        except (*_FAILED, HeadTimeout, trio.TooSlowError) as exc:
            raise NodeUnavailable(f"{what}: {exc!r}") from None
        finally:
            await conn.stream.aclose()
        if response.status == 409:
            raise ReplicaChangeRefused(answer[:500].decode("utf-8", "replace").strip())
        if response.status not in (200, 201, 204):
            text = answer[:200].decode("utf-8", "replace")
            raise NodeUnavailable(f"{what}: HTTP {response.status} {text}")
        return answer
