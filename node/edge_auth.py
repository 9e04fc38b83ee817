"""Who may use a node: the edge, and nobody else.

Every git endpoint and the internal API require `Authorization: Bearer <secret>`,
the node's `admin_secret`, which every edge sends on every request (the edge's
`[nodes] admin_secret`). Without it a node's plain-HTTP port would serve any
repository, private ones included, to whoever can reach it. Only `/healthz`
and `/readyz` stay open, for load balancers and supervisors.
"""

from __future__ import annotations

import hmac

import h11

from node.http_conn import HttpConn, header

CHALLENGE = [("www-authenticate", 'Bearer realm="gitedge-node"')]


class EdgeAuth:
    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("a node needs a non-empty admin secret")
        self._secret = secret.encode()

    def accepts(self, request: h11.Request) -> bool:
        """Does the request carry the secret? Constant time in the secret's content."""
        scheme, _, token = (header(request, b"authorization") or b"").partition(b" ")
        # compare_digest on the whole token even when the scheme is wrong, so the
        # timing says nothing about which part failed.
        matches = hmac.compare_digest(token.strip(), self._secret)
        return scheme.lower() == b"bearer" and matches

    async def admit(self, conn: HttpConn, request: h11.Request) -> bool:
        """True if the edge sent this request; else answers 401 and returns False."""
        if self.accepts(request):
            return True
        await conn.respond_text(401, "this node serves only gitedge edges", CHALLENGE)
        return False
