"""An asyncssh server base that lets anyone in with any key, for tests and the
SSH-front microbenchmark that look at packets, not at authentication (the edge's
own servers are stricter; the packets are the same)."""

from __future__ import annotations

import asyncssh


class AnyKeyServer(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return True
