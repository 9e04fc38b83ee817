"""`gitedge`: run an edge or a node, the local demo, and repository commands."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType

import httpx

from routing.runtime import setup_logging
from routing.tomlconf import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gitedge", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("GITEDGE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--edge",
        default=os.environ.get("GITEDGE_URL", "https://127.0.0.1:8443"),
        help="edge base URL for repo commands (env GITEDGE_URL)",
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("GITEDGE_CA_FILE"),
        help="CA bundle to verify the edge's certificate (env GITEDGE_CA_FILE)",
    )
    parser.add_argument(
        "--region-header",
        default=os.environ.get("GITEDGE_REGION_HEADER", "Fly-Region"),
        help="header carrying --region (must match the edge's region_header)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (("edge", "run an edge"), ("node", "run a regional git node")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=True, type=Path)
        p.add_argument("--ready-file", type=Path, help="write JSON here once serving")

    demo = sub.add_parser("demo", help="etcd, two regional nodes and an edge on this machine")
    demo.add_argument("--workdir", type=Path, help="default: a new temporary directory")

    repo = sub.add_parser("repo", help="create or locate a repository through an edge")
    repo_sub = repo.add_subparsers(dest="repo_command", required=True)
    create = repo_sub.add_parser("create", help="create OWNER/NAME")
    create.add_argument("name")
    create.add_argument("--region", help="place it in this region (sent as the region header)")
    where = repo_sub.add_parser("where", help="print where OWNER/NAME lives (JSON)")
    where.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        match args.command:
            case "edge":
                from edge.app import run
                from edge.config import load_edge_config

                run(load_edge_config(args.config), args.ready_file)
                return 0
            case "node":
                from node.app import main as node_main

                ready = ["--ready-file", str(args.ready_file)] if args.ready_file else []
                return node_main(
                    ["--config", str(args.config), "--log-level", args.log_level, *ready]
                )
            case "demo":
                return demo(args.workdir)
            case "repo":
                return repo_command(args)
    except ConfigError as exc:
        print(f"gitedge: config error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def repo_command(args: argparse.Namespace) -> int:
    verify: str | bool = args.ca_file or True
    base = args.edge.rstrip("/")
    try:
        with httpx.Client(verify=verify, timeout=30.0) as client:
            if args.repo_command == "create":
                headers = {args.region_header: args.region} if args.region else {}
                response = client.post(
                    f"{base}/api/repos", json={"name": args.name}, headers=headers
                )
            else:
                response = client.get(f"{base}/api/repos/{args.name}")
    except httpx.HTTPError as exc:
        print(f"gitedge: cannot reach the edge at {base}: {exc}", file=sys.stderr)
        return 1
    if response.is_success:
        print(json.dumps(response.json(), indent=2, sort_keys=True))
        return 0
    print(f"gitedge: {response.status_code}: {response.text.strip()}", file=sys.stderr)
    return 1


def demo(workdir: Path | None) -> int:
    from edge.devnet import start_devnet

    work = workdir or Path(tempfile.mkdtemp(prefix="gitedge-demo-"))
    print(f"starting etcd, nodes fra-1 and lax-1, and an edge in {work} ...", flush=True)
    stop = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A handler (not SIG_DFL) for SIGCHLD so pause() wakes when a child dies.
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    script = Path(sys.executable).with_name("gitedge")
    gitedge = str(script) if script.exists() else "gitedge"
    with start_devnet(work) as net:
        edge = net.edge
        url = edge.https_url
        ready = {
            "https_url": url,
            "ca_file": str(net.ca_file),
            "regions": {n.region: n.http_url for n in net.nodes.values()},
            "etcd": net.etcd.url,
            "workdir": str(work),
        }
        print(
            f"""
gitedge demo is up.
  edge (HTTPS)  {url}
  CA bundle     {net.ca_file}
  etcd          {net.etcd.url}
  nodes         {", ".join(f"{n.node_id} ({n.region}) {n.http_url}" for n in net.nodes.values())}
  logs          {work / "logs"}

Try, in another shell:
  export GIT_SSL_CAINFO={net.ca_file} GITEDGE_URL={url} GITEDGE_CA_FILE={net.ca_file}
  {gitedge} repo create alice/hello --region lax
  git clone {url}/alice/hello.git && cd hello
  git commit --allow-empty -m hello && git push origin HEAD
  {gitedge} repo where alice/hello

Ctrl-C stops everything.
READY {json.dumps(ready, sort_keys=True)}""",
            flush=True,
        )
        while not stop:
            signal.pause()
            for proc in [net.etcd.process, *(n.process for n in net.nodes.values()), edge.process]:
                if not proc.alive():
                    print(f"gitedge demo: {proc.name} exited; stopping", file=sys.stderr)
                    stop = True
    print("gitedge demo stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
