"""The node's internal API, called by the edge (with the secret node/edge_auth.py checks).

    POST   /_gitedge/repos                {"name": "owner/name"[, "replicated": true]}
                                                              -> 201 / 200 {"created": bool}
    DELETE /_gitedge/repos/<owner>/<name>                         -> 204 / 404
    POST   /_gitedge/repos/<owner>/<name>/optimize   -> 200 {"ran": ..., "before": ..., ...}
                                                        / 404 / 409 (already running) / 500

The edge creates a repository by first writing its record to etcd, then asking
the owning node to init it; DELETE rolls that back.
"""

from __future__ import annotations

import json
import logging

import h11

from node.housekeeper import Housekeeper, OptimizeBusy, OptimizeFailed, OptimizeYielded
from node.http_conn import BodyTooLarge, HttpConn
from node.repos import RepoStore, RepoStoreError
from routing.model import InvalidRepoName, RepoName

log = logging.getLogger(__name__)

ADMIN_PATH = b"/_gitedge/repos"
OPTIMIZE_SUFFIX = b"/optimize"
MAX_BODY = 64 * 1024


def is_admin_target(target: bytes) -> bool:
    path = target.partition(b"?")[0]
    return path == ADMIN_PATH or path.startswith(ADMIN_PATH + b"/")


class AdminApi:
    def __init__(self, store: RepoStore, housekeeper: Housekeeper) -> None:
        self._store = store
        self._housekeeper = housekeeper

    async def handle(self, conn: HttpConn, request: h11.Request) -> None:
        """One internal-API request, already admitted by `EdgeAuth`."""
        path = request.target.partition(b"?")[0]
        if path == ADMIN_PATH:
            if request.method != b"POST":
                await conn.respond_text(405, "method not allowed", [("allow", "POST")])
                return
            await self._create(conn)
            return
        if path.endswith(OPTIMIZE_SUFFIX):
            if request.method != b"POST":
                await conn.respond_text(405, "method not allowed", [("allow", "POST")])
                return
            path = path.removesuffix(OPTIMIZE_SUFFIX)
            try:
                repo = RepoName.parse(path.removeprefix(ADMIN_PATH + b"/").decode("ascii"))
            except (UnicodeDecodeError, InvalidRepoName) as exc:
                await conn.respond_text(400, f"bad repository name: {exc}")
                return
            await self._optimize(conn, repo)
            return
        if request.method != b"DELETE":
            await conn.respond_text(405, "method not allowed", [("allow", "DELETE")])
            return
        try:
            repo = RepoName.parse(path.removeprefix(ADMIN_PATH + b"/").decode("ascii"))
        except (UnicodeDecodeError, InvalidRepoName) as exc:
            await conn.respond_text(400, f"bad repository name: {exc}")
            return
        await self._delete(conn, repo)

    async def _create(self, conn: HttpConn) -> None:
        try:
            body = await conn.read_body(MAX_BODY)
        except BodyTooLarge as exc:
            await conn.respond_text(413, str(exc))
            return
        try:
            repo = parse_create_body(body)
            replicated = parse_replicated(body)
        except ValueError as exc:
            await conn.respond_text(400, f"bad request: {exc}")
            return
        try:
            created = await self._store.create(repo, replicated=replicated)
        except (RepoStoreError, OSError) as exc:
            log.error("creating %s failed: %s", repo, exc)
            await conn.respond_text(500, "could not create the repository")
            return
        if created:
            log.info("created repository %s", repo)
        await conn.respond(
            201 if created else 200,
            json.dumps({"created": created}).encode(),
            content_type="application/json",
        )

    async def _optimize(self, conn: HttpConn, repo: RepoName) -> None:
        try:
            result = await self._housekeeper.optimize(repo)
        except OptimizeYielded as exc:
            await conn.respond_text(409, str(exc))
            return
        except OptimizeBusy:
            await conn.respond_text(409, "the repository is being optimized already")
            return
        except (OptimizeFailed, OSError) as exc:
            log.error("optimizing %s failed: %s", repo, exc)
            await conn.respond_text(500, "could not optimize the repository")
            return
        if result is None:
            await conn.respond_text(404, "repository not found")
            return
        log.info("optimized %s (%s) in %.1fs", repo, result.plan.describe(), result.seconds)
        await conn.respond(
            200, json.dumps(result.to_json()).encode(), content_type="application/json"
        )

    async def _delete(self, conn: HttpConn, repo: RepoName) -> None:
        try:
            deleted = await self._store.delete(repo)
        except OSError as exc:
            log.error("deleting %s failed: %s", repo, exc)
            await conn.respond_text(500, "could not delete the repository")
            return
        if not deleted:
            await conn.respond_text(404, "repository not found")
            return
        log.info("deleted repository %s", repo)
        await conn.respond(204)


def parse_replicated(body: bytes) -> bool:
    """`"replicated": true` in a create body: install the replication hooks."""
    value = json.loads(body).get("replicated", False)
    if not isinstance(value, bool):
        raise ValueError("replicated must be true or false")
    return value


def parse_create_body(body: bytes) -> RepoName:
    """`{"name": "owner/name"}` -> RepoName; ValueError says what is wrong."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("body is not JSON") from None
    if not isinstance(request, dict) or not isinstance(request.get("name"), str):
        raise ValueError('body must be {"name": "owner/name"}')
    try:
        return RepoName.parse(request["name"])
    except InvalidRepoName as exc:
        raise ValueError(f"bad repository name: {exc}") from None
