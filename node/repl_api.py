"""The node's replication endpoints, called by its own hooks and by peer nodes.

    POST /_gitedge/repl/vote   {"git_dir", "updates", "quarantine", "push_id", "user"}
                                                                               (pre-receive)
    POST /_gitedge/repl/done   the same body                                   (post-receive)
    POST /_gitedge/repl/apply  {"name": "owner/name"}                          (a peer's primary)

All behind EdgeAuth (the node credential). A refused vote is 409 with the
sentence the pusher sees.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import h11

from node.http_conn import BodyTooLarge, HttpConn
from node.replication import ApplyError, HookCall, Replicator
from routing.consensus import PushRefused, RefUpdate
from routing.etcd import EtcdError
from routing.model import InvalidRepoName, RepoName
from routing.schema import SchemaError

log = logging.getLogger(__name__)

REPL_PATH = b"/_gitedge/repl/"
MAX_BODY = 64 * 1024 * 1024  # a 10,000-ref push's updates are ~1 MB


def is_repl_target(target: bytes) -> bool:
    return target.partition(b"?")[0].startswith(REPL_PATH)


class ReplApi:
    def __init__(self, replicator: Replicator, volume_root: Path) -> None:
        self._replicator = replicator
        self._root = volume_root

    async def handle(self, conn: HttpConn, request: h11.Request) -> None:
        action = request.target.partition(b"?")[0].removeprefix(REPL_PATH)
        if request.method != b"POST" or action not in (b"vote", b"done", b"apply"):
            await conn.respond_text(404, "not found")
            return
        try:
            body = json.loads(await conn.read_body(MAX_BODY))
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            if action == b"apply":
                generation = await self._replicator.apply(RepoName.parse(str(body.get("name"))))
                await conn.respond(200, json.dumps({"generation": generation}).encode())
                return
            call = self._hook_call(body)
        except (BodyTooLarge, ValueError, InvalidRepoName) as exc:
            await conn.respond_text(400, f"bad request: {exc}")
            return
        except (ApplyError, EtcdError, SchemaError, OSError) as exc:
            log.warning("apply failed: %s", exc)
            await conn.respond_text(503, "apply failed")
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
        except (ApplyError, SchemaError, OSError) as exc:
            log.warning("%s: vote failed: %r", call.name, exc)
            await conn.respond_text(503, "the replica could not take part in the vote; try again")
            return
        await conn.respond_text(200, "ok")

    def _hook_call(self, body: dict[str, Any]) -> HookCall:
        git_dir = Path(str(body.get("git_dir", ""))).resolve()
        relative = git_dir.relative_to(self._root.resolve())  # ValueError outside the volume
        name = RepoName.parse(relative.as_posix())
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
