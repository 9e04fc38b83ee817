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
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from edge.cli_tables import format_table
from plumbing.runtime import setup_logging
from plumbing.tomlconf import ConfigError


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
    parser.add_argument(
        "--user", default=os.environ.get("GITEDGE_USER"), help="your user name (env GITEDGE_USER)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("GITEDGE_TOKEN"),
        help="your personal token (env GITEDGE_TOKEN)",
    )
    parser.add_argument(
        "--admin-token",
        default=os.environ.get("GITEDGE_ADMIN_TOKEN"),
        help="the edge's admin token, for user and token commands (env GITEDGE_ADMIN_TOKEN)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    for name, text in (
        ("edge", "run an edge"),
        ("node", "run a regional git node (--config); or drain|undrain NODE (admin token)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", required=name == "edge", type=Path)
        p.add_argument("--ready-file", type=Path, help="write JSON here once serving")
    node = sub.choices["node"]
    node.add_argument(
        "node_command",
        nargs="?",
        choices=("drain", "undrain"),
        help="drain: place nothing new on NODE and move every repository's copy off"
        " (exit 1: some stay, listed under failed); undrain: place on it again",
    )
    node.add_argument("node_id", nargs="?", metavar="NODE")
    node.add_argument(
        "--catch-up-timeout",
        type=float,
        metavar="S",
        help="drain: seconds each new copy may take to catch up (default 60)",
    )

    demo = sub.add_parser("demo", help="etcd, two regional nodes and an edge on this machine")
    demo.add_argument("--workdir", type=Path, help="default: a new temporary directory")
    demo.add_argument(
        "--regions",
        type=_region_list,
        help="comma-separated regions, e.g. fra,lax,syd: one node and one edge in each",
    )
    demo.add_argument(
        "--web-upstream",
        type=_web_upstream,
        metavar="URL",
        help="http://host:port of a web frontend: every edge's [web] upstream (docs/web.md)",
    )

    repo = sub.add_parser("repo", help="create or locate a repository through an edge")
    repo_sub = repo.add_subparsers(dest="repo_command", required=True)
    create = repo_sub.add_parser("create", help="create OWNER/NAME")
    create.add_argument("name")
    create.add_argument("--region", help="place it in this region (sent as the region header)")
    create.add_argument("--public", action="store_true", help="anyone may clone it")
    create.add_argument(
        "--replicas", type=int, help="replication factor (default: the edge's default_replicas)"
    )
    create.add_argument("--sync-replicas", type=int, help="W: replicas a push must reach")
    create.add_argument(
        "--replica-regions",
        help="comma-separated regions for the replicas after the home, in order (default: "
        "placement's choice, distinct regions first)",
    )
    ls = repo_sub.add_parser("ls", help="list repositories (admin token)")
    ls.add_argument("--region", help="only those with a copy in REGION")
    ls.add_argument("--node", help="only those with a copy on NODE")
    ls.add_argument("--json", action="store_true", help="print the JSON answer")
    where = repo_sub.add_parser("where", help="print where OWNER/NAME lives (JSON)")
    where.add_argument("name")
    replicas = repo_sub.add_parser("replicas", help="change OWNER/NAME's replica set online")
    replicas_sub = replicas.add_subparsers(dest="replicas_command", required=True)
    for verb, text in (
        ("add", "a new replica in REGION; it serves reads once it has caught up"),
        ("remove", "take the replica in REGION (or on volume REGION) out, then off its disk"),
    ):
        change = replicas_sub.add_parser(verb, help=text)
        change.add_argument("name")
        change.add_argument("region")
    move = repo_sub.add_parser("move", help="move an unreplicated OWNER/NAME to another region")
    move.add_argument("name")
    move.add_argument("--to", required=True, dest="to_region", metavar="REGION")
    repair = repo_sub.add_parser(
        "repair", help="make replica VOLUME's refs the agreed ones (needs --yes)"
    )
    repair.add_argument("name")
    repair.add_argument("--from", required=True, dest="from_volume", metavar="VOLUME")
    repair.add_argument("--yes", action="store_true", help="yes, replace the agreed refs")
    repo_sub.add_parser(
        "optimize", help="repack, commit-graph, pack-refs and prune every copy now"
    ).add_argument("name")
    repo_sub.add_parser(
        "verify",
        help="compare every replica's refs with the agreed ones (exit 1: one differs,"
        " 3: one could not be asked)",
    ).add_argument("name")

    for name, text in (("nodes", "nodes"), ("volumes", "volumes")):
        listing = sub.add_parser(
            name, help=f"{text}: region, liveness, repositories, free space (admin token)"
        )
        listing.add_argument("--json", action="store_true", help="print the JSON answer")
    user = sub.add_parser("user", help="manage users (admin token)")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    user_sub.add_parser("add", help="create user NAME").add_argument("name")
    token = sub.add_parser("token", help="personal HTTPS tokens")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_sub.add_parser(
        "create", help="print a new token for NAME, shown once (admin token)"
    ).add_argument("name")
    token_sub.add_parser(
        "list", help="ids of NAME's tokens (admin token), or yours without NAME (--user/--token)"
    ).add_argument("name", nargs="?")
    token_sub.add_parser(
        "revoke", help="revoke token ID (the ge_<ID>_... part): yours, or anyone's as admin"
    ).add_argument("id")
    key = sub.add_parser("key", help="SSH keys (yours with --user/--token)")
    key_sub = key.add_subparsers(dest="key_command", required=True)
    key_add = key_sub.add_parser("add", help="register a public key for SSH access")
    key_add.add_argument("--key", required=True, type=Path, help="the .pub file")
    key_add.add_argument("--title", default="", help="a label for the key")
    key_sub.add_parser(
        "list", help="fingerprints of NAME's keys (admin token), or yours without NAME"
    ).add_argument("name", nargs="?")
    key_sub.add_parser(
        "remove", help="remove key FINGERPRINT (SHA256:...): yours, or anyone's as admin"
    ).add_argument("fingerprint")
    return parser


def _web_upstream(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise argparse.ArgumentTypeError(f"expected http://host:port, got {raw!r}")
    return raw


def _region_list(raw: str) -> tuple[str, ...]:
    from routing.model import InvalidRegion, parse_region

    try:
        regions = tuple(parse_region(r.strip()) for r in raw.split(","))
    except InvalidRegion as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(set(regions)) != len(regions):
        raise argparse.ArgumentTypeError("a region is named twice")
    return regions


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        match args.command:
            case "edge":
                from edge.app import run
                from edge.config import load_edge_config

                config = load_edge_config(args.config)
                setup_logging(args.log_level, config.observe.log_format)
                run(config, args.ready_file)
                return 0
            case "node" if args.node_command:
                if not args.node_id:
                    print(f"gitedge: node {args.node_command} needs NODE", file=sys.stderr)
                    return 2
                return api_command(args)
            case "node":
                if args.config is None:
                    print("gitedge: node needs --config (or drain|undrain NODE)", file=sys.stderr)
                    return 2
                from node.app import main as node_main

                ready = ["--ready-file", str(args.ready_file)] if args.ready_file else []
                return node_main(
                    ["--config", str(args.config), "--log-level", args.log_level, *ready]
                )
            case "demo":
                return demo(args.workdir, args.regions, args.web_upstream)
            case "repo" | "user" | "token" | "key" | "nodes" | "volumes":
                return api_command(args)
    except ConfigError as exc:
        print(f"gitedge: config error: {exc}", file=sys.stderr)
        return 2
    raise AssertionError(args.command)


def api_command(args: argparse.Namespace) -> int:
    """The commands that talk to an edge's API; prints the JSON answer.

    Each request carries one credential: the admin token (Bearer) for admin
    commands, else the user's Basic user:token; `repo` commands use the user's
    when given, else the admin token.
    """
    verify: str | bool = args.ca_file or True
    base = args.edge.rstrip("/")
    user_auth = (args.user, args.token) if args.user and args.token else None
    admin = {"authorization": f"Bearer {args.admin_token}"} if args.admin_token else {}
    action = getattr(args, f"{args.command}_command", args.command)
    admin_only = (
        (args.command, action) in (("user", "add"), ("token", "create"), ("repo", "ls"))
        or args.command in ("nodes", "volumes", "node")
        or (action == "list" and args.name)
    )
    if admin_only and not admin:
        print("gitedge: this command needs --admin-token (or GITEDGE_ADMIN_TOKEN)", file=sys.stderr)
        return 2
    as_admin = bool(admin) and (admin_only or action in ("revoke", "remove") or not user_auth)
    auth = None if as_admin else user_auth
    headers = admin if as_admin else {}
    try:
        with httpx.Client(
            base_url=base, verify=verify, timeout=30.0, auth=auth, headers=headers
        ) as client:
            match args.command, action:
                case "repo", "create":
                    region = {args.region_header: args.region} if args.region else {}
                    payload: dict[str, object] = {"name": args.name, "public": args.public}
                    if args.replicas is not None:
                        payload["replicas"] = args.replicas
                    if args.sync_replicas is not None:
                        payload["sync_replicas"] = args.sync_replicas
                    if args.replica_regions:
                        payload["replica_regions"] = args.replica_regions.split(",")
                    response = client.post("/api/repos", json=payload, headers=region)
                case "repo", "replicas" | "move" | "repair" | "verify" | "optimize":
                    if action == "repair" and not args.yes:
                        print(f"gitedge: {REPAIR_WARNING}", file=sys.stderr)
                        return 2
                    response = _repo_op(client, args)
                case "repo", "ls":
                    filters = {k: v for k in ("region", "node") if (v := getattr(args, k))}
                    response = client.get("/api/admin/repos", params=filters)
                case "repo", _:
                    response = client.get(f"/api/repos/{args.name}")
                case "nodes" | "volumes", _:
                    response = client.get(f"/api/admin/{args.command}")
                case "node", _:
                    drain = f"/api/admin/nodes/{quote(args.node_id, safe='')}/drain"
                    if action == "drain":
                        timeout = args.catch_up_timeout
                        params = {"catch_up_timeout": timeout} if timeout is not None else {}
                        response = client.post(drain, params=params, timeout=DRAIN_TIMEOUT)
                    else:
                        response = client.delete(drain)
                case "user", _:
                    response = client.post("/api/admin/users", json={"name": args.name})
                case "token", "create":
                    response = client.post(f"/api/admin/users/{quote(args.name, safe='')}/tokens")
                case ("token" | "key") as kind, "list":
                    if args.name:
                        response = client.get(
                            f"/api/admin/users/{quote(args.name, safe='')}/{kind}s"
                        )
                    else:
                        response = client.get(f"/api/user/{kind}s")
                case ("token" | "key") as kind, "revoke" | "remove":
                    ident = quote(args.id if kind == "token" else args.fingerprint, safe="")
                    scope = "admin" if as_admin else "user"  # the admin may revoke anyone's
                    response = client.delete(f"/api/{scope}/{kind}s/{ident}")
                case _:
                    try:
                        public_key = args.key.read_text().strip()
                    except OSError as exc:
                        print(f"gitedge: cannot read {args.key}: {exc.strerror}", file=sys.stderr)
                        return 1
                    response = client.post(
                        "/api/user/keys",
                        json={"title": args.title or args.key.name, "key": public_key},
                    )
    except httpx.HTTPError as exc:
        print(f"gitedge: cannot reach the edge at {base}: {exc}", file=sys.stderr)
        return 1
    if response.is_success and action == "verify":
        return print_verify(response.json())
    if response.is_success and action in ("nodes", "volumes", "ls") and not args.json:
        print("\n".join(format_table(action, response.json())))
        return 0
    if response.is_success:
        print(json.dumps(response.json(), indent=2, sort_keys=True))
        return print_drain_left(response.json()) if action == "drain" else 0
    print(f"gitedge: {response.status_code}: {response.text.strip()}", file=sys.stderr)
    return 1


REPAIR_WARNING = (
    "repair replaces the agreed refs with the chosen replica's refs; pushes it does not hold"
    " are dropped from the consensus. Run again with --yes to do it."
)
# A change waits for the new replica to catch up (the edge gives up after a minute or so).
LONG_TIMEOUT = 330.0
# A drain makes one such change per replicated repository on the node.
DRAIN_TIMEOUT = 3600.0


def _repo_op(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    path = f"/api/repos/{args.name}"
    match args.repo_command:
        case "replicas" if args.replicas_command == "add":
            body = {"region": args.region}
            return client.post(f"{path}/replicas", json=body, timeout=LONG_TIMEOUT)
        case "replicas":
            where = quote(args.region, safe="")
            return client.delete(f"{path}/replicas/{where}", timeout=LONG_TIMEOUT)
        case "move":
            return client.post(
                f"{path}/move", json={"region": args.to_region}, timeout=LONG_TIMEOUT
            )
        case "repair":
            return client.post(f"{path}/repair", json={"volume": args.from_volume, "confirm": True})
        case "optimize":
            return client.post(f"{path}/optimize", timeout=LONG_TIMEOUT)
    return client.get(f"{path}/verify", timeout=LONG_TIMEOUT)


def print_drain_left(report: dict[str, Any]) -> int:
    """A drain that left copies on the node says which and why, and exits 1."""
    failed = report.get("failed") or []
    for entry in failed:
        print(
            f"gitedge: {entry['repo']} stays on {entry['volume']}: {entry['reason']}",
            file=sys.stderr,
        )
    if failed:
        print(
            f"gitedge: drain of {report['node']} is not complete: {len(failed)}"
            f" {'repository stays' if len(failed) == 1 else 'repositories stay'} on it"
            " (drain again to retry)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def print_verify(report: dict[str, object]) -> int:
    """One line per replica; 1 if any differs (or the log does not match its checksum),
    else 3 if any could not be asked, else 0."""
    rows = report.get("replicas")
    rows = rows if isinstance(rows, list) else []
    print(f"{report.get('repo')}: generation {report.get('generation')},"
          f" {report.get('consensus_refs')} agreed refs")  # fmt: skip
    if report.get("log_matches_checksum") is not True:
        print("  the consensus log does NOT add up to the consensus checksum")
    print(f"  {'VOLUME':<34} {'REGION':<8} {'NODE':<12} STATE")
    for row in rows:
        verdict = str(row.get("verdict"))
        state = {
            "differs": f"differs: {row.get('differing_refs')} refs",
            "behind": f"behind (catching up, applied {row.get('applied')})",
        }.get(verdict, verdict)
        node = row.get("node") or "-"
        print(f"  {row.get('volume')!s:<34} {row.get('region')!s:<8} {node:<12} {state}")
    verdicts = [row.get("verdict") for row in rows]
    if "differs" in verdicts or report.get("log_matches_checksum") is not True:
        return 1
    return 3 if "unreachable" in verdicts else 0


def demo(
    workdir: Path | None,
    regions: tuple[str, ...] | None = None,
    web_upstream: str | None = None,
) -> int:
    from devnet.network import start_devnet

    work = workdir or Path(tempfile.mkdtemp(prefix="gitedge-demo-"))
    if regions:
        print(
            f"starting etcd, one node and one edge in each of {', '.join(regions)}, in {work} ..."
        )
    else:
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
    started = (
        start_devnet(work, regions, edge_per_region=True, web_upstream=web_upstream)
        if regions
        else start_devnet(work, web_upstream=web_upstream)
    )
    with started as net:
        edge = net.edge
        url = edge.https_url
        token = net.user_token("alice")  # a ready user, made through the admin API
        ssh_port, known_hosts = edge.ssh_port, net.known_hosts
        ready: dict[str, object] = {
            "https_url": url,
            "ca_file": str(net.ca_file),
            "regions": {n.region: n.http_url for n in net.nodes.values()},
            "etcd": net.etcd.url,
            "workdir": str(work),
            "ssh_url": edge.ssh_url,
            "metrics_url": edge.metrics_url,
            "ssh_known_hosts": str(known_hosts),
            "user": "alice",
            "token": token,
            "admin_token_file": str(net.admin_token_file),
            "web_upstream": web_upstream,
        }
        if regions:
            ready["edges"] = {
                e.region: {
                    "https_url": e.https_url,
                    "ssh_url": e.ssh_url,
                    "metrics_url": e.metrics_url,
                }
                for e in net.edges
            }
        edge_lines = "".join(
            f"\n  edge {e.region:<8} {e.https_url}  {e.ssh_url}" for e in net.edges[1:]
        )
        print(
            f"""
gitedge demo is up.
  edge (HTTPS)  {url}
  edge (SSH)    {edge.ssh_url}   host key in {known_hosts}{edge_lines}
  metrics       {edge.metrics_url}
  CA bundle     {net.ca_file}
  etcd          {net.etcd.url}
  nodes         {", ".join(f"{n.node_id} ({n.region}) {n.http_url}" for n in net.nodes.values())}
  web upstream  {web_upstream or "none (other requests: 404); --web-upstream URL sets one"}
  user          alice, token {token}
  admin token   in {net.admin_token_file}
  logs          {work / "logs"}

Try, in another shell:
  export GIT_SSL_CAINFO={net.ca_file} GITEDGE_URL={url} GITEDGE_CA_FILE={net.ca_file}
  export GITEDGE_USER=alice GITEDGE_TOKEN={token}
  {gitedge} repo create alice/hello --region lax
  git clone https://alice:$GITEDGE_TOKEN@{url.removeprefix("https://")}/alice/hello.git && cd hello
  git commit --allow-empty -m hello && git push origin HEAD
  {gitedge} repo where alice/hello
  {gitedge} token list                 # your token ids; `token revoke ID` revokes one
As the operator (admin token):
  export GITEDGE_ADMIN_TOKEN=$(cat {net.admin_token_file})
  {gitedge} user add bob && {gitedge} token create bob

Over SSH, with your own key registered for alice:
  {gitedge} key add --key ~/.ssh/id_ed25519.pub
  ssh -T -p {ssh_port} -o UserKnownHostsFile={known_hosts} git@127.0.0.1   # Hi alice! ...
  GIT_SSH_COMMAND="ssh -o UserKnownHostsFile={known_hosts}" \\
    git clone {edge.ssh_url}/alice/hello.git hello-ssh
or the scp form, through a host alias in ~/.ssh/config:
  Host gitedge-demo
    HostName 127.0.0.1
    Port {ssh_port}
    User git
    UserKnownHostsFile {known_hosts}
  git clone gitedge-demo:alice/hello.git hello-scp

A node may die and come back: restart one with
  {gitedge} node --config {work}/node-<name>.toml      (e.g. node-{next(iter(net.nodes))}.toml)
Ctrl-C stops everything the demo started.
READY {json.dumps(ready, sort_keys=True)}""",
            flush=True,
        )
        reported: set[str] = set()
        while not stop:
            signal.pause()
            for proc in [net.etcd.process, *(e.process for e in net.edges)]:
                if not proc.alive():
                    print(f"gitedge demo: {proc.name} exited; stopping", file=sys.stderr)
                    stop = True
            # A node dying is part of the story (failover): say how to bring it back.
            for node in net.nodes.values():
                if not node.process.alive() and node.node_id not in reported:
                    reported.add(node.node_id)
                    print(
                        f"gitedge demo: node {node.node_id} exited; restart it with:\n"
                        f"  {gitedge} node --config {node.config_path}",
                        file=sys.stderr,
                        flush=True,
                    )
    print("gitedge demo stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
