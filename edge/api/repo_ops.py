"""The API of replica-set changes, repair and verify (routes: edge/proto/http_route.RepoOp).

The work is routing's (routing/replica_changes.py, routing/consistency.py), the
node calls NodeAdmin's. Who may: the edge's admin token, or the repository's
owner; each change is logged with who asked. A change that does not apply now
is 409 with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from edge.api.handlers import read_json_body, readable_record
from edge.auth import http_user, is_admin
from edge.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NoCapacity,
    RepoNotFound,
    RoutingUnavailable,
)
from edge.http.respond import Outcome, Reply
from edge.proto.http_route import RepoOp
from edge.state import EdgeState
from routing.consistency import repair_repo, verify_repo
from routing.errors import ChangedMeanwhile, NotFound, StoreUnavailable
from routing.model import InvalidRegion, Region, VolumeId, parse_region
from routing.placement import PlacementError
from routing.replica_changes import (
    ReplicaChangeRefused,
    add_replica,
    live_node,
    move_repo,
    remove_replica,
)

log = logging.getLogger(__name__)

REPAIR_NEEDS_CONFIRM = (
    "repair replaces the agreed refs with that replica's refs: pushes it does not hold are"
    ' dropped from the consensus; confirm with "confirm": true (gitedge repo repair --yes)'
)


@contextmanager
def op_errors() -> Iterator[None]:
    """routing's outcomes in their wire form."""
    try:
        yield
    except (ReplicaChangeRefused, ChangedMeanwhile) as exc:
        raise Conflict(str(exc)) from None
    except PlacementError as exc:
        raise NoCapacity(str(exc)) from None
    except NotFound as exc:
        raise RepoNotFound(str(exc)) from None
    except StoreUnavailable as exc:
        raise RoutingUnavailable(str(exc)) from None


async def handle_repo_op(state: EdgeState, reply: Reply, route: RepoOp) -> Outcome:
    cfg = state.config
    authorization = reply.exchange.head.header(b"authorization")
    admin = is_admin(authorization, cfg.admin_token)
    user = None if admin else await http_user(state.cache, authorization)
    record = await readable_record(state, route.repo, user, admin)
    if not admin and record.owner_user != user:
        raise Forbidden("only the repository's owner or an admin may do this")
    who = "admin" if admin else str(user)
    name, nodes = route.repo, state.node_admin
    payload: Any = {}
    if route.op in ("replicas-add", "move", "repair"):
        payload = await read_json_body(reply, cfg.header_timeout)
        if not isinstance(payload, dict):
            raise BadRequest("expected a JSON object")
    with op_errors():
        match route.op:
            case "replicas-add":
                region = _region(payload)
                log.info("%s: replica in %s requested by %s", name, region, who)
                added = await add_replica(state.etcd, state.cache, nodes, name, region)
                return await reply.json(200, added.to_json(), f"added={added.volume}")
            case "replicas-remove":
                log.info("%s: removal of its replica in %s requested by %s", name, route.where, who)
                removed = await remove_replica(state.etcd, state.cache, nodes, name, route.where)
                return await reply.json(200, removed.to_json(), f"removed={removed.volume}")
            case "move":
                region = _region(payload)
                log.info("%s: move to %s requested by %s", name, region, who)
                moved = await move_repo(state.etcd, state.cache, nodes, name, region)
                return await reply.json(200, moved.to_json(), f"moved-from={moved.volume}")
            case "repair":
                volume = payload.get("volume")
                if not isinstance(volume, str) or not volume:
                    raise BadRequest('expected JSON {"volume": "<volume id>", "confirm": true}')
                if payload.get("confirm") is not True:
                    raise BadRequest(REPAIR_NEEDS_CONFIRM)
                repaired = await repair_repo(
                    state.etcd, state.cache, nodes, name, VolumeId(volume), who
                )
                return await reply.json(200, repaired, f"repaired-from={volume}")
            case "verify":
                report = await verify_repo(state.etcd, state.cache, nodes, name)
                return await reply.json(200, report)
            case "optimize":
                log.info("%s: optimization requested by %s", name, who)
                copies = []
                for volume in record.replica_volumes:
                    node = live_node(state.cache, volume)
                    if node is None:
                        copies.append({"volume": volume, "error": "its node is not live"})
                        continue
                    answer = await nodes.optimize(node, name)
                    copies.append({"volume": volume, "node": node.node_id, **answer})
                return await reply.json(200, {"copies": copies})
    raise AssertionError(route.op)


def _region(payload: dict[str, Any]) -> Region:
    try:
        return parse_region(str(payload.get("region") or ""))
    except InvalidRegion as exc:
        raise BadRequest(f"region: {exc}") from None
