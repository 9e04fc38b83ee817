"""Cross-region latency: git through the local edge vs straight to the home node.

    python -m bench.regions                 # default delays, 1 MB + 100 MB repos
    python -m bench.regions --quick         # delays x0.1, tiny repos, 1 sample: ~1 min
    python -m bench.regions --config configs/regions.toml --results-dir DIR

One run builds, on loopback ports, three regions (configs/regions.toml): one
etcd (in fra), a node and an edge per region, and a client per region. Every
hop goes through a delaying relay (bench/relay.py): client -> its edge,
edge -> each node ([nodes.dial] overrides), edge -> etcd, and, for the
baselines, client -> nginx (TLS reverse proxy before the home node) and
client -> OpenSSH sshd (git-shell on the node's volume). For each protocol,
(client, home) pair and scenario it times edge and direct runs interleaved,
reads the edge's counters around each warm edge run, and then, after an edge
restart, cold edge runs. Writes regions.json (every sample), regions.md (one
matrix per scenario) and PNG plots to the results dir.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import regions_replicated
from bench.common import MiB, machine_info, median, rmtree, sigterm_as_interrupt
from bench.openssh import DirectSshd, ensure_sshd, git_ssh_command, keygen, login_user, start_sshd
from bench.regions_net import RegionsConfig, RelayHost, ensure_nginx, load_regions_config
from bench.regions_net import start_nginx as start_nginx_for
from bench.regions_report import render_markdown, render_plots, round_trips_from_trace
from bench.repos import clean_git_env, make_random_repo, run_git, timed_git
from devnet.network import Devnet, EdgeHandle, EdgeOptions, start_devnet
from devnet.procs import ManagedProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
DEFAULT_CONFIG = ROOT / "configs" / "regions.toml"
SCENARIOS = ("ls-remote", "clone-small", "clone-big", "fetch-noop", "push")
# Every scenario cold too: the first operation after an edge restart pays the
# edge's own connection setup to the home node across the wide-area link.
COLD_SCENARIOS = SCENARIOS
PROTOCOLS = ("https", "ssh")
PATHS = ("direct", "edge")
USER = "bench"
# node_connects counts SSH sessions' connections too: they share the node pool.
STAT_KEYS = ("node_connects", "etcd_requests", "lookup_etcd_reads")

Log = Callable[[str], None]


@dataclass
class Sample:
    protocol: str
    scenario: str
    client: str
    home: str
    path: str  # "edge" or "direct"
    mode: str  # "warm" or "cold"
    index: int
    wall_s: float
    edge_stats_delta: dict[str, int] | None = None


@dataclass
class World:
    """Everything the scenarios need: servers, relays, URLs, the git env."""

    cfg: RegionsConfig
    net: Devnet
    relays: RelayHost
    edges: dict[str, EdgeHandle]
    env: dict[str, str]
    token: str
    sshd: DirectSshd
    nginx_ports: dict[str, int]
    work: Path
    edge_host_key: str
    known_hosts: Path
    ports: dict[str, int] = field(default_factory=dict)
    """relay name -> its port."""

    def node_of(self, region: str) -> str:
        return f"{region}-1"

    def repo(self, scenario: str, home: str) -> str:
        return f"{'big' if scenario == 'clone-big' else 'small'}-{home}"

    def url(self, protocol: str, path: str, client: str, home: str, repo: str) -> str:
        if protocol == "https" and path == "edge":
            port = self.ports[f"{client}>edge-https"]
            # With the token up front it travels in a header (git_env), not the URL.
            login = "" if self.cfg.token_upfront else f"{USER}:{self.token}@"
            return f"https://{login}127.0.0.1:{port}/{USER}/{repo}.git"
        if protocol == "https":
            return f"https://127.0.0.1:{self.ports[f'{client}>nginx-{home}']}/{USER}/{repo}.git"
        if path == "edge":
            return f"ssh://git@127.0.0.1:{self.ports[f'{client}>edge-ssh']}/{USER}/{repo}.git"
        bare = (self.net.nodes[self.node_of(home)].volume_dir / USER / f"{repo}.git").resolve()
        port = self.ports[f"{client}>sshd-{home}"]
        return f"ssh://{login_user()}@127.0.0.1:{port}{bare}"

    def git_env(self, protocol: str, path: str) -> dict[str, str]:
        """The git environment for one path: through the HTTPS edge with the token up
        front, an Authorization header on every request, so no 401 round trip."""
        if not (protocol == "https" and path == "edge" and self.cfg.token_upfront):
            return self.env
        basic = base64.b64encode(f"{USER}:{self.token}".encode()).decode()
        return {
            **self.env,
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.extraHeader",
            "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
        }

    def edge_stats(self, region: str) -> dict[str, int]:
        verify = ssl.create_default_context(cafile=str(self.net.ca_file))
        got = httpx.get(f"{self.edges[region].https_url}/_gitedge/stats", verify=verify, timeout=10)
        got.raise_for_status()
        data = got.json()
        return {k: int(data.get(k, 0)) for k in STAT_KEYS}


# -- setup ---------------------------------------------------------------------------------


def _address(url: str) -> tuple[str, int]:
    host, _, port = url.split("://", 1)[-1].rstrip("/").rpartition(":")
    return host.strip("[]"), int(port)


def _start_relay(world_ports: dict[str, int], relays: RelayHost, name: str,
                 target: tuple[str, int], ms: float) -> int:  # fmt: skip
    port = relays.start(name, target, ms / 1000)[1]
    world_ports[name] = port
    return port


def start_edges(
    cfg: RegionsConfig, net: Devnet, relays: RelayHost, ports: dict[str, int], log: Log
) -> dict[str, EdgeHandle]:
    """One edge per region, reaching etcd and every node through its own relays."""
    etcd = _address(net.etcd.url)
    options: list[tuple[str, EdgeOptions]] = []
    for region in cfg.regions:
        etcd_port = _start_relay(
            ports, relays, f"{region}>etcd", etcd, cfg.wan_ms(region, cfg.etcd_region)
        )
        dial = ["[nodes.dial]"]
        for home in cfg.regions:
            node = net.nodes[f"{home}-1"]
            ms = cfg.wan_ms(region, home)
            # HTTPS requests and SSH sessions both reach the node over HTTP.
            http = _start_relay(
                ports, relays, f"{region}>node-{home}-http", _address(node.http_url), ms
            )
            dial.append(f'"{node.node_id}" = {{ http = "127.0.0.1:{http}" }}')
        extra = "\n".join(dial)
        options.append(
            (region, {"extra": extra, "etcd_endpoints": [f"http://127.0.0.1:{etcd_port}"]})
        )
    edges = dict(zip(cfg.regions, net.start_edges(options), strict=True))
    for region, edge in edges.items():
        log(f"edge {region}: {edge.https_url} ssh :{edge.ssh_port}")
    return edges


def start_client_relays(world: World) -> None:
    cfg, r = world.cfg, world.relays
    lines = []
    for client in cfg.regions:
        edge = world.edges[client]
        local = cfg.client_ms(client, client)
        for proto, target in (
            ("https", _address(edge.https_url)),
            ("ssh", ("127.0.0.1", edge.ssh_port)),
        ):
            port = _start_relay(world.ports, r, f"{client}>edge-{proto}", target, local)
            if proto == "ssh":
                lines.append(f"[127.0.0.1]:{port} {world.edge_host_key}")
        for home in cfg.regions:
            ms = cfg.client_ms(client, home)
            nginx = ("127.0.0.1", world.nginx_ports[world.node_of(home)])
            _start_relay(world.ports, r, f"{client}>nginx-{home}", nginx, ms)
            port = _start_relay(
                world.ports, r, f"{client}>sshd-{home}", ("127.0.0.1", world.sshd.port), ms
            )
            lines.append(f"[127.0.0.1]:{port} {world.sshd.host_key_line}")
    world.known_hosts.write_text("\n".join(lines) + "\n")


def setup_repos(world: World, client_pub: Path, log: Log) -> None:
    """User `bench` with the client key; small-<home> and big-<home> pushed via the admin edge."""
    net, cfg = world.net, world.cfg
    verify = ssl.create_default_context(cafile=str(net.ca_file))
    with httpx.Client(
        base_url=net.edge.https_url, verify=verify, auth=(USER, world.token), timeout=60
    ) as api:
        added = api.post("/api/user/keys", json={"title": "bench", "key": client_pub.read_text()})
        if added.status_code != 201:
            raise RuntimeError(f"add key: HTTP {added.status_code} {added.text[:300]}")
        for home in cfg.regions:
            for kind in ("small", "big"):
                name = f"{USER}/{kind}-{home}"
                created = api.post("/api/repos", json={"name": name}, headers={"Fly-Region": home})
                if created.status_code != 201:
                    raise RuntimeError(
                        f"create {kind}-{home}: {created.status_code} {created.text}"
                    )
                if created.json().get("node") != world.node_of(home):
                    raise RuntimeError(f"{kind}-{home} placed on {created.json()}")
    admin = net.edge.https_url.replace("://", f"://{USER}:{world.token}@", 1)
    for kind, mb in (("small", cfg.small_mb), ("big", cfg.big_mb)):
        src = world.work / f"src-{kind}"
        repo = make_random_repo(src, int(mb * MiB), world.env)
        log(f"{kind} repo: {repo.total_bytes / MiB:.2f} MiB, {repo.files} blobs; pushing")
        for home in cfg.regions:
            run_git(["push", "--quiet", f"{admin}/{USER}/{kind}-{home}.git", "main:main"],
                    world.env, cwd=src)  # fmt: skip
        rmtree(src)


# -- the operations --------------------------------------------------------------------------


@dataclass
class Checkouts:
    """Per (protocol, client, home, path): a clone of the small repo for fetch and push."""

    root: Path
    made: dict[tuple[str, str, str, str], Path] = field(default_factory=dict)


def run_op(world: World, scenario: str, protocol: str, client: str, home: str, path: str,
           checkouts: Checkouts, extra_env: dict[str, str] | None = None) -> float:  # fmt: skip
    """One timed git operation; its wall time in seconds."""
    env = {**world.git_env(protocol, path), **(extra_env or {})}
    repo = world.repo(scenario, home)
    url = world.url(protocol, path, client, home, repo)
    if scenario == "ls-remote":
        return timed_git(["ls-remote", url, "refs/heads/main"], env, timeout=120).wall_s
    if scenario in ("clone-small", "clone-big"):
        dest = Path(tempfile.mkdtemp(prefix="clone-", dir=world.work))
        try:
            return timed_git(["clone", "--quiet", "--no-checkout", url, str(dest / "r")], env,
                             timeout=1800).wall_s  # fmt: skip
        finally:
            rmtree(dest)
    checkout = checkouts.made[(protocol, client, home, path)]
    if scenario == "fetch-noop":
        return timed_git(
            ["fetch", "--quiet", "origin", "main"], env, cwd=checkout, timeout=120
        ).wall_s
    if scenario == "push":
        note = checkout / "note.txt"
        note.write_text(f"{time.time_ns()}\n")
        run_git(["add", "note.txt"], env, cwd=checkout)
        run_git(["commit", "--quiet", "-m", "bench push"], env, cwd=checkout)
        branch = f"refs/heads/bench-{protocol}-{client}-{path}"
        return timed_git(["push", "--quiet", "origin", f"HEAD:{branch}"], env, cwd=checkout,
                         timeout=120).wall_s  # fmt: skip
    raise ValueError(scenario)


def prepare_checkout(world: World, checkouts: Checkouts, protocol: str, client: str, home: str,
                     path: str) -> None:  # fmt: skip
    """The untimed warm-up: a clone (opens the edge's node connection) and a first push."""
    dest = checkouts.root / f"{protocol}-{client}-{home}-{path}"
    url = world.url(protocol, path, client, home, f"small-{home}")
    run_git(["clone", "--quiet", url, str(dest)], world.git_env(protocol, path), timeout=600)
    checkouts.made[(protocol, client, home, path)] = dest
    run_op(world, "push", protocol, client, home, path, checkouts)


def trace_round_trips(world: World, checkouts: Checkouts, log: Log) -> dict[str, Any]:
    """Run each scenario once per protocol with GIT_TRACE_PACKET on the direct path
    (client and home in the first region) and count git's request/response turns."""
    region = world.cfg.regions[0]
    traces: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        for scenario in SCENARIOS:
            trace_file = world.work / f"trace-{protocol}-{scenario}.txt"
            trace_file.unlink(missing_ok=True)
            extra = {"GIT_TRACE_PACKET": str(trace_file)}
            if protocol == "https":
                extra["GIT_TRACE_CURL"] = str(trace_file)
                extra["GIT_TRACE_CURL_NO_DATA"] = "1"
            run_op(world, scenario, protocol, region, region, "direct", checkouts, extra)
            text = trace_file.read_text(errors="replace") if trace_file.exists() else ""
            traces[f"{protocol}/{scenario}"] = round_trips_from_trace(text)
    log(
        "round trips (traced): "
        + ", ".join(f"{k}={v['git_round_trips']}" for k, v in traces.items())
    )
    return traces


# -- the runs --------------------------------------------------------------------------------


def warm_runs(world: World, samples: list[Sample], checkouts: Checkouts, log: Log) -> None:
    cfg = world.cfg
    for protocol in PROTOCOLS:
        for client in cfg.regions:
            for home in cfg.regions:
                for path in PATHS:
                    prepare_checkout(world, checkouts, protocol, client, home, path)
                for scenario in SCENARIOS:
                    for index in range(cfg.samples):
                        for path in PATHS:
                            before = world.edge_stats(client) if path == "edge" else None
                            wall = run_op(world, scenario, protocol, client, home, path, checkouts)
                            delta = None
                            if before is not None:
                                after = world.edge_stats(client)
                                delta = {k: after[k] - before[k] for k in STAT_KEYS}
                            samples.append(Sample(protocol, scenario, client, home, path, "warm",
                                                  index, wall, delta))  # fmt: skip
                    _progress(log, samples, protocol, scenario, client, home, "warm")


def cold_runs(world: World, samples: list[Sample], checkouts: Checkouts, log: Log) -> None:
    """After each edge restart the first op to each home finds no node connection.
    Every client region's edge is restarted at once (their start-ups overlap); each
    stays cold until its own client's first op."""
    cfg = world.cfg
    for index in range(cfg.samples):
        for scenario in COLD_SCENARIOS:
            restart_edges(world, cfg.regions)
            for client in cfg.regions:
                for home in cfg.regions:
                    for protocol in PROTOCOLS:
                        wall = run_op(world, scenario, protocol, client, home, "edge", checkouts)
                        samples.append(Sample(protocol, scenario, client, home, "edge", "cold",
                                              index, wall))  # fmt: skip
        log(f"cold round {index + 1}/{cfg.samples} done")
    for protocol in PROTOCOLS:
        for scenario in COLD_SCENARIOS:
            for client in cfg.regions:
                for home in cfg.regions:
                    _progress(log, samples, protocol, scenario, client, home, "cold")


def restart_edges(world: World, regions: Sequence[str]) -> None:
    """Cold edges: restarted, each one's cache synced (/readyz), no node connections yet."""
    edges = world.net.restart_edges([world.edges[region] for region in regions])
    verify = ssl.create_default_context(cafile=str(world.net.ca_file))
    for region, edge in zip(regions, edges, strict=True):
        world.edges[region] = edge
        local = world.cfg.client_ms(region, region) / 1000
        world.relays.restart(f"{region}>edge-https", _address(edge.https_url), local)
        world.relays.restart(f"{region}>edge-ssh", ("127.0.0.1", edge.ssh_port), local)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{edge.https_url}/readyz", verify=verify, timeout=5)
                if ready.status_code == 200:
                    break
            if time.monotonic() > deadline:
                log_tail = edge.process.log_tail()
                raise RuntimeError(f"edge {region} not ready after restart: {log_tail}")
            time.sleep(0.05)


def _progress(log: Log, samples: list[Sample], protocol: str, scenario: str, client: str,
              home: str, mode: str) -> None:  # fmt: skip
    def med(path: str) -> float:
        return 1000 * median([s.wall_s for s in samples if (s.protocol, s.scenario, s.client,
                              s.home, s.path, s.mode) == (protocol, scenario, client, home, path,
                              mode)])  # fmt: skip

    direct = "" if mode == "cold" else f"  direct {med('direct'):8.1f} ms"
    log(f"{mode} {protocol:5} {scenario:11} {client}->{home}: edge {med('edge'):8.1f} ms{direct}")


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.regions", description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--quick", action="store_true", help="the config's [quick] table: ~1 minute")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--samples", type=int, help="override the config's samples")
    p.add_argument("--delay-scale", type=float, help="multiply every delay (tests: 0.02)")
    p.add_argument("--small-mb", type=float, help="override the small repo size")
    p.add_argument("--big-mb", type=float, help="override the big repo size")
    p.add_argument("--no-cold", action="store_true", help="skip the cold (edge restarted) runs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs")
    p.add_argument("--keep-work", action="store_true", help="keep the temp work dir")
    p.add_argument("--no-replicated", action="store_true", help="skip the replicated scenario")
    p.add_argument("--only-replicated", action="store_true",
                   help="only the replicated scenario (bench/regions_replicated.py)")  # fmt: skip
    return p.parse_args(argv)


def effective_config(args: argparse.Namespace) -> RegionsConfig:
    cfg = load_regions_config(args.config, args.quick)
    overrides: dict[str, Any] = {}
    for name in ("samples", "delay_scale", "small_mb", "big_mb"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.no_cold:
        overrides["cold"] = False
    cfg = RegionsConfig(**{**asdict_shallow(cfg), **overrides})
    if cfg.samples < 1 or cfg.small_mb <= 0 or cfg.big_mb <= 0 or cfg.delay_scale < 0:
        raise SystemExit("samples >= 1, sizes > 0 and delay scale >= 0, please")
    return cfg


def asdict_shallow(cfg: RegionsConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in cfg.__dataclass_fields__}


@contextlib.contextmanager
def _stopping(proc: ManagedProcess) -> Iterator[ManagedProcess]:
    try:
        yield proc
    finally:
        proc.stop()


def run(args: argparse.Namespace, log: Log) -> dict[str, Any]:
    cfg = effective_config(args)
    ensure_nginx(log)
    ensure_sshd(log)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "regions",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "config": cfg.as_json(),
        "machine": machine_info(),
        "scenarios": list(SCENARIOS),
        "protocols": list(PROTOCOLS),
    }
    work = Path(tempfile.mkdtemp(prefix="gitedge-regions-"))
    try:
        log(f"work dir {work}; starting etcd, nodes {', '.join(cfg.regions)} ...")
        with (
            start_devnet(work / "devnet", regions=cfg.regions, edge_region=cfg.etcd_region) as net,
            RelayHost() as relays,
        ):
            ports: dict[str, int] = {}
            edges = start_edges(cfg, net, relays, ports, log)
            node_urls = {n.node_id: n.http_url for n in net.nodes.values()}
            nginx, nginx_ports = start_nginx_for(
                work,
                net.cert_file,
                net.key_file,
                node_urls,
                net.admin_secret_file.read_text().strip(),
            )
            with _stopping(nginx):
                key = keygen(work / "client_key", "bench-client")
                sshd = start_sshd(work, key.with_name(key.name + ".pub"))
                try:
                    known_hosts = work / "known_hosts"
                    env = clean_git_env(
                        work / "home",
                        GIT_SSL_CAINFO=str(net.ca_file),
                        GIT_SSH_COMMAND=git_ssh_command(key, known_hosts),
                    )
                    edge_host_key = " ".join(net.known_hosts.read_text().split()[1:3])
                    world = World(cfg, net, relays, edges, env, net.user_token(USER), sshd,
                                  nginx_ports, work, edge_host_key, known_hosts, ports)  # fmt: skip
                    start_client_relays(world)
                    log(f"{len(ports)} relays up; generating and pushing repos ...")
                    setup_repos(world, key.with_name(key.name + ".pub"), log)
                    result["setup_s"] = time.perf_counter() - started
                    checkouts = Checkouts(work / "checkouts")
                    samples: list[Sample] = []
                    try:
                        if not args.only_replicated:
                            warm_runs(world, samples, checkouts, log)
                            result["traces"] = trace_round_trips(world, checkouts, log)
                            if cfg.cold:
                                cold_runs(world, samples, checkouts, log)
                    finally:
                        result["samples"] = [asdict(s) for s in samples]
                    if not args.no_replicated:
                        result["replicated"] = regions_replicated.run(world, log)
                finally:
                    sshd.stop()
    finally:
        if args.keep_work:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["elapsed_s"] = time.perf_counter() - started
    return result


def write_results(result: dict[str, Any], results_dir: Path, plots: bool, log: Log) -> None:
    """regions.{json,md} and plots for the matrix; regions_replicated.{json,md,png} for the
    replicated scenario (a run of only that one leaves the matrix's files alone)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    regions = result["config"]["regions"]
    written = []
    if result["samples"]:
        markdown = render_markdown(result)
        if plots:
            result["plots"] = render_plots(result, results_dir)
        (results_dir / "regions.json").write_text(json.dumps(result, indent=1) + "\n")
        (results_dir / "regions.md").write_text(markdown)
        written.append("regions.{json,md}")
        print(markdown)
    if "replicated" in result:
        section = result["replicated"]
        markdown = regions_replicated.render_markdown(section, regions, result)
        if plots:
            section["plot"] = regions_replicated.render_plot(section, regions, results_dir)
        whole = {k: v for k, v in result.items() if k != "samples"}
        (results_dir / "regions_replicated.json").write_text(json.dumps(whole, indent=1) + "\n")
        (results_dir / "regions_replicated.md").write_text(markdown)
        written.append("regions_replicated.{json,md}")
        print(markdown)
    log(f"wrote {', '.join(written)} to {results_dir}")


def main(argv: list[str] | None = None) -> int:
    sigterm_as_interrupt()
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    result = run(args, log)
    write_results(result, args.results_dir, not args.no_plots, log)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
