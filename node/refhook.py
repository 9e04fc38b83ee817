"""The hooks the node installs in a replicated repository: thin clients of the node.

    pre-receive   ->  POST <node>/_gitedge/repl/vote   (all updates of the push at once)
    post-receive  ->  POST <node>/_gitedge/repl/done

Standard library only (it starts once per push, inside receive-pack). The node
does the work: it holds the etcd client, the per-repository lock and the peers.
The node's URL and credential come from receive-pack's environment, which only
the node sets (node/git_proto.child_env never passes a client's env on).
A refusal's text is printed for git to relay to the pusher as `remote:` lines.
"""

from __future__ import annotations

import json
import os
import ssl
import sys
import urllib.error
import urllib.request

URL_ENV, SECRET_ENV = "GITEDGE_NODE_URL", "GITEDGE_NODE_SECRET"
# The vote waits for W replicas and etcd, each under its own deadline in the node.
TIMEOUT = 120.0
# Also node/repl_api.CopyGone's answer (this module imports nothing of the node's).
REMOVED = "this copy of the repository was moved or removed while the push ran; push again"


def hook_script(python: str, hook: str) -> str:
    return f"#!/bin/sh\nexec '{python}' -m node.refhook {hook}\n"


def main(argv: list[str]) -> int:
    hook = argv[1] if len(argv) > 1 else ""
    if hook not in ("pre-receive", "post-receive"):
        print(f"gitedge hook: unknown hook {hook!r}", file=sys.stderr)
        return 1
    url, secret = os.environ.get(URL_ENV), os.environ.get(SECRET_ENV)
    if not url or not secret:
        print("gitedge: this replica cannot reach its node; push refused", file=sys.stderr)
        return 1
    try:
        git_dir = os.path.abspath(os.environ.get("GIT_DIR", "."))
    except OSError:
        # The directory went away under receive-pack: a removed replica or the old
        # home of a moved repository (its copy is deleted once it left the set).
        print(f"gitedge: {REMOVED}", file=sys.stderr)
        return 1
    body = json.dumps(
        {
            "git_dir": git_dir,
            "updates": sys.stdin.read().splitlines(),
            "quarantine": os.environ.get("GIT_QUARANTINE_PATH", ""),
            "push_id": str(os.getppid()),  # receive-pack: the same for both hooks of a push
            # Set by the node for a push through an edge on a user's behalf only.
            "user": os.environ.get("GITEDGE_USER", ""),
        }
    ).encode()
    action = "vote" if hook == "pre-receive" else "done"
    request = urllib.request.Request(
        f"{url}/_gitedge/repl/{action}",
        data=body,
        headers={"authorization": f"Bearer {secret}", "content-type": "application/json"},
    )
    # The node's own listener on loopback: its certificate is self-made and pinned
    # in etcd, not by a CA; there is no one in between to verify against.
    context = ssl._create_unverified_context() if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            response.read()
        return 0
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace").strip()
        print(f"gitedge: {text}", file=sys.stderr)
    except OSError as exc:
        gone = not os.path.isdir(git_dir)
        text = REMOVED if gone else f"the replica's node did not answer ({exc}); push refused"
        print(f"gitedge: {text}", file=sys.stderr)
    return 1 if hook == "pre-receive" else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
