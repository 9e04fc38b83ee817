"""The node's replication endpoints, called by its own hooks, peer nodes and edges.

    POST /_gitedge/repl/vote    {"git_dir", "updates", "quarantine", "push_id", "user"}
                                                                       (pre-receive)
    POST /_gitedge/repl/done    the same body                                   (post-receive)
    POST /_gitedge/repl/apply   {"name": "owner/name"}        -> {"generation"}  (a peer, an edge)
    POST /_gitedge/repl/seed    {"name", "add": volume, "sync_replicas": W} -> {"generation"}
    POST /_gitedge/repl/repair  {"name", "by": who}           -> {"generation", "moved"}
    POST /_gitedge/repl/unhook  {"name"}                      -> {}
    POST /_gitedge/repl/refs    {"name"}                      -> {"refs", "checksum"}
    /_gitedge/repl/git/<owner>/<name>.git/...  receive-pack of a push's objects (a peer's
                                primary; served by node/git_http.py with the transfer hooks)

All behind EdgeAuth (the node credential). A refused vote is 409 with the
sentence the pusher sees; so is an operation that does not apply (OpRefused).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h11
import trio

from node.http_conn import BodyTooLarge, HttpConn
from node.repl_git import REPL_PATH, TRANSFER_PATH, GitFailed
from node.repl_ops import OpRefused, ReplicaOps
from node.replication import ApplyError, HookCall, NotAReplica, Replicator
from node.repos import TMP_DIR_NAME
from routing.consensus import PushRefused, RefUpdate
from routing.etcd import EtcdError
from routing.model import InvalidRepoName, RepoName, VolumeId
from routing.schema import SchemaError

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024  # a 10,000-ref push's updates are ~1 MB
HOOK_ACTIONS = (b"vote", b"done")
OPS = (b"apply", b"seed", b"repair", b"unhook", b"refs")
_FAILED = (ApplyError, EtcdError, SchemaError, OSError, GitFailed, trio.TooSlowError)


def is_repl_target(target: bytes) -> bool:
    return target.partition(b"?")[0].startswith(REPL_PATH)


def transfer_git_target(target: bytes) -> bytes | None:
    """`/_gitedge/repl/git/<owner>/<name>.git/...` -> `/<owner>/<name>.git/...`; None if
    `target` is not a transfer. Only nodes send these: an edge routes only git URLs,
    whose owner names cannot start with `_`, and EdgeAuth admits only the node credential."""
    if not target.startswith(TRANSFER_PATH + b"/"):
        return None
    return target[len(TRANSFER_PATH) :]


class CopyGone(Exception):
    """The hook's repository was moved or removed from this volume while its push ran."""

    MESSAGE = (
        "this copy of the repository was moved or removed while the push ran;"
        " nothing was changed: push again"
    )


class ReplApi:
    def __init__(self, replicator: Replicator, ops: ReplicaOps, volume_root: Path) -> None:
        self._replicator = replicator
        self._ops = ops
        self._root = volume_root
        self._tmp_name = TMP_DIR_NAME

    async def handle(self, conn: HttpConn, request: h11.Request) -> None:
        action = request.target.partition(b"?")[0].removeprefix(REPL_PATH)
        if request.method != b"POST" or action not in HOOK_ACTIONS + OPS:
            await conn.respond_text(404, "not found")
            return
        try:
            body = json.loads(await conn.read_body(MAX_BODY))
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            if action in OPS:
                name = RepoName.parse(str(body.get("name")))
            else:
                call = self._hook_call(body)
        except CopyGone:
            await conn.respond_text(409, CopyGone.MESSAGE)
            return
        except (BodyTooLarge, ValueError, InvalidRepoName) as exc:
            await conn.respond_text(400, f"bad request: {exc}")
            return
        if action in OPS:
            await self._op(conn, action, name, body)
            return
        try:
            if action == b"vote":
                await self._replicator.vote(call)
            else:
                await self._replicator.done(call)
        except PushRefused as exc:
            log.info("%s: push refused: %s", call.name, exc)
            await conn.respond_text(409, str(exc))
            return
        except EtcdError as exc:
            log.warning("%s: vote failed, etcd: %r", call.name, exc)
            await conn.respond_text(
                503,
                "the consensus store is unreachable: pushes to replicated repositories are"
                " refused until it is back; nothing was changed",
            )
            return
        except _FAILED as exc:
            if not call.git_dir.is_dir():
                # Moved or removed under the push (a repo move deletes the old home's
                # copy once it left the set): git in it fails first, say why.
                log.info("%s: %s: the copy went away under the push", call.name, action.decode())
                await conn.respond_text(409, CopyGone.MESSAGE)
                return
            log.warning("%s: %s failed: %r", call.name, action.decode(), exc)
            await conn.respond_text(503, "the replica could not take part in the vote; try again")
            return
        await conn.respond_text(200, "ok")

    async def _op(
        self, conn: HttpConn, action: bytes, name: RepoName, body: dict[str, Any]
    ) -> None:
        try:
            answer = await self._run_op(action, name, body)
        except ValueError as exc:
            await conn.respond_text(400, f"bad request: {exc}")
            return
        except (OpRefused, NotAReplica) as exc:
            await conn.respond_text(409, str(exc))
            return
        except _FAILED as exc:
            log.warning("%s: %s failed: %r", name, action.decode(), exc)
            await conn.respond_text(503, f"{action.decode()} failed; try again")
            return
        await conn.respond(200, json.dumps(answer).encode(), content_type="application/json")

    async def _run_op(self, action: bytes, name: RepoName, body: dict[str, Any]) -> dict[str, Any]:
        if action == b"apply":
            return {"generation": await self._replicator.apply(name)}
        if action == b"seed":
            sync = body.get("sync_replicas")
            if not isinstance(sync, int) or isinstance(sync, bool):
                raise ValueError("sync_replicas must be a whole number")
            added = VolumeId(str(body.get("add") or ""))
            if not added:
                raise ValueError("add must name a volume")
            return {"generation": await self._ops.seed(name, added, sync)}
        if action == b"repair":
            generation, moved = await self._ops.repair(name, str(body.get("by") or "?")[:100])
            return {"generation": generation, "moved": moved}
        if action == b"unhook":
            await self._ops.unhook(name)
            return {}
        return await self._ops.refs(name)

    def _hook_call(self, body: dict[str, Any]) -> HookCall:
        git_dir = Path(str(body.get("git_dir", ""))).resolve()
        relative = git_dir.relative_to(self._root.resolve())  # ValueError outside the volume
        try:
            name = RepoName.parse(relative.as_posix())
        except InvalidRepoName:
            if relative.parts[:1] == (self._tmp_name,) or not git_dir.is_dir():
                # Renamed away under the push (a move or removal deletes a copy by
                # renaming it into the volume's temp dir first).
                raise CopyGone() from None
            raise
        updates = body.get("updates")
        if not isinstance(updates, list):
            raise ValueError("updates must be a list")
        return HookCall(
            name,
            git_dir,
            str(body.get("push_id", "")),
            tuple(RefUpdate.parse(str(line)) for line in updates if line),
            str(body.get("quarantine", "")),
            str(body.get("user", "")),
        )
