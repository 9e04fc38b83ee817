"""Run one source tree's devnet until SIGTERM; describe it in a ready file.

    <tree>/.venv/bin/python bench/tree_devnet.py --tree <tree> --work-dir D --ready-file F
        [--edge-config JSON] [--tls-node ID:REGION ...]

Started by `bench.trees` so that a benchmark can measure an edge and nodes
built from another checkout (an older commit in its own worktree and .venv)
beside this tree's. Standalone on purpose: it runs under that other tree's
interpreter and must import that tree's devnet, edge and node, never this
tree's `bench` package, so it imports nothing from `bench` and puts the tree,
not its own directory, first on sys.path. The devnet starts every server as
`sys.executable -m edge.cli ...` from the current directory, which is the
tree: `-m` imports from there first.

`--edge-config '{"limits": {"keepalive_timeout": 900}}'` merges those keys
into the edge's TOML config (any table, the devnet's own included) and
restarts the edge on it: a benchmark that must set a limit the devnet does
not take as an argument (bench/load.py).

`--tls-node lax-2:lax` starts one more node, serving HTTPS with its own
self-signed certificate (`Devnet.start_node(..., tls=True)`), once the rest
is up: a reference that git clones straight over TLS (bench/load.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

# Where the devnet lived: devnet/ since commit 92141ab, edge/devnet.py before it.
DEVNET_MODULES = ("devnet.network", "edge.devnet")


def load_start_devnet(root: Path) -> tuple[Callable[..., Any], str]:
    """The tree's `start_devnet` and the module it came from (which must be in the tree)."""
    for name in DEVNET_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and name.startswith(exc.name):
                continue  # this layout has no such module: try the older one
            raise
        origin = Path(str(module.__file__)).resolve()
        if not origin.is_relative_to(root):
            raise SystemExit(f"{name} was imported from {origin}, not from the tree {root}")
        return module.start_devnet, name
    raise SystemExit(f"no devnet module ({', '.join(DEVNET_MODULES)}) in {root}")


def describe(net: Any, module: str, root: Path) -> dict[str, Any]:
    """Everything a benchmark needs to drive and meter the devnet, as JSON."""

    def proc(handle: Any) -> dict[str, Any]:
        return {"pid": handle.process.popen.pid, "log_path": str(handle.process.log_path)}

    return {
        "tree": str(root),
        "python": sys.executable,
        "devnet_module": module,
        "work_dir": str(net.work_dir),
        "ca_file": str(net.ca_file),
        "known_hosts": str(getattr(net, "known_hosts", "")),
        "admin_secret_file": str(net.admin_secret_file),
        "edges": [
            {"name": e.name, "region": e.region, "ready": e.ready, **proc(e)} for e in net.edges
        ],
        "nodes": [
            {
                "node_id": n.node_id,
                "region": n.region,
                "volume_dir": str(n.volume_dir),
                "ready": n.ready,
                **proc(n),
            }
            for n in net.nodes.values()
        ],
    }


def merged(config: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`config` with `overrides` merged in, table by table (a value replaces a value)."""
    out = dict(config)
    for key, value in overrides.items():
        old = out.get(key)
        both_tables = isinstance(value, Mapping) and isinstance(old, Mapping)
        out[key] = merged(old, value) if both_tables else value  # type: ignore[arg-type]
    return out


def toml_text(doc: Mapping[str, Any], path: tuple[str, ...] = ()) -> list[str]:
    """`doc` as TOML lines: scalars and lists as JSON (valid TOML values), a table
    per nested mapping. Enough for the devnet's configs; not a general writer."""

    def key(k: str) -> str:
        return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)

    scalars = {k: v for k, v in doc.items() if not isinstance(v, Mapping)}
    lines = [f"[{'.'.join(key(p) for p in path)}]"] if path and scalars else []
    lines += [f"{key(k)} = {json.dumps(v)}" for k, v in scalars.items()]
    for k, v in doc.items():
        if isinstance(v, Mapping):
            lines += toml_text(v, (*path, k))
    return lines


def reconfigure_edge(net: Any, overrides: Mapping[str, Any]) -> None:
    """Merge `overrides` into the first edge's config file and restart it on that."""
    edge = net.edges[0]
    config = tomllib.loads(edge.config_path.read_text())
    edge.config_path.write_text("\n".join(toml_text(merged(config, overrides))) + "\n")
    net.restart_edge(edge)


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--work-dir", type=Path, required=True)
    p.add_argument("--ready-file", type=Path, required=True)
    p.add_argument("--user", action="append", default=[], help="make a token for this user")
    p.add_argument("--edge-config", default="", metavar="JSON", help="merge into the edge's TOML")
    p.add_argument(
        "--tls-node", action="append", default=[], metavar="ID:REGION", help="one more HTTPS node"
    )
    args = p.parse_args(argv)
    tls_nodes = [spec.partition(":")[::2] for spec in args.tls_node]
    if any(not node_id or not region for node_id, region in tls_nodes):
        p.error("--tls-node: ID:REGION")
    root = args.tree.resolve()
    os.chdir(root)
    sys.path[0] = str(root)  # the tree's packages, not this script's directory
    signal.signal(signal.SIGTERM, _stop)
    start_devnet, module = load_start_devnet(root)
    try:
        with start_devnet(args.work_dir.resolve()) as net:
            if args.edge_config:
                reconfigure_edge(net, json.loads(args.edge_config))
            for node_id, region in tls_nodes:
                net.start_node(node_id, region, tls=True)
            info = describe(net, module, root)
            info["tokens"] = {user: net.user_token(user) for user in args.user}
            partial = args.ready_file.with_name(args.ready_file.name + ".partial")
            partial.write_text(json.dumps(info, indent=2))
            partial.replace(args.ready_file)  # whole or absent: the reader polls for it
            while True:
                signal.pause()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
