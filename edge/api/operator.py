"""The operator's API (admin token only): nodes, volumes, repository listing, drain.

The listings are the routing cache's tables as routing/inventory.py shows them
(no etcd read: what this edge routes by); a drain writes its flag and moves
every copy off it with routing/drain.py.
"""

from __future__ import annotations

import logging

from edge.auth import is_admin
from edge.errors import BadRequest, Forbidden, NoCapacity, RoutingUnavailable
from edge.http.respond import Outcome, Reply
from edge.proto.admin_route import DrainNode, Inventory
from edge.state import EdgeState
from routing.drain import UnknownNode, clear_drain, move_copies_off, set_drain
from routing.errors import StoreUnavailable
from routing.inventory import node_rows, repo_rows, volume_rows
from routing.model import NodeId, Region
from routing.placement import PlacementError
from routing.replica_changes import CATCH_UP_TIMEOUT

log = logging.getLogger(__name__)


async def handle_operator(state: EdgeState, reply: Reply, route: Inventory | DrainNode) -> Outcome:
    if not is_admin(reply.exchange.head.header(b"authorization"), state.config.admin_token):
        raise Forbidden("admin token required")
    cache = state.cache
    drained = cache.drains
    match route:
        case Inventory(kind="nodes"):
            rows = node_rows(cache.volumes.values(), cache.nodes, cache.repo_counts, drained)
            return await reply.json(200, {"nodes": [r.to_json() for r in rows]})
        case Inventory(kind="volumes"):
            vols = volume_rows(cache.volumes.values(), cache.nodes, cache.repo_counts, drained)
            return await reply.json(200, {"volumes": [r.to_json() for r in vols]})
        case Inventory(kind="repos", region=region, node=node):
            repos = repo_rows(
                cache.repos.values(),
                cache.volumes,
                Region(region) if region else None,
                NodeId(node) if node else None,
            )
            return await reply.json(200, {"repos": repos})
        case DrainNode(node_id=node_id, drain=drain, catch_up_timeout=timeout):
            try:
                if not drain:
                    was = await clear_drain(state.etcd, cache, NodeId(node_id))
                    log.info("node %s undrained by admin (was drained: %s)", node_id, was)
                    return await reply.json(200, {"node": node_id, "drained": False, "was": was})
                await set_drain(state.etcd, cache, NodeId(node_id), "admin")
                report = await move_copies_off(
                    state.etcd,
                    cache,
                    state.node_admin,
                    NodeId(node_id),
                    catch_up_timeout=timeout or CATCH_UP_TIMEOUT,
                )
            except UnknownNode:
                raise BadRequest(f"unknown node {node_id!r}") from None
            except PlacementError as exc:
                raise NoCapacity(str(exc)) from None
            except StoreUnavailable as exc:
                raise RoutingUnavailable(str(exc)) from None
            return await reply.json(200, report.to_json(), f"drained={node_id}")
    raise AssertionError(route)
