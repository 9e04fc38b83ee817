"""The edge's calls to a node's internal API (repository init)."""

from __future__ import annotations

import httpx

from edge.errors import NodeUnavailable
from routing.model import NodeRecord, RepoName


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
