"""bench.regions' replicated scenario: replicated repositories across the emulated regions.

Two repositories replicated in fra + lax, home fra: `repl-w1` (sync_replicas 1)
and `repl-w2` (sync_replicas 2, a push waits for lax's copy). Through each
client region's edge, interleaved, `cfg.samples` times:

- push (an empty-tree-change commit) from fra and syd clients to repl-w1,
  repl-w2 and, for reference, the unreplicated small-fra;
- ls-remote and a clone of the small repository from every region, of
  repl-w2 (served by the nearest in-sync replica), of small-<client> (homed in
  the client's own region) and of small-<far> (homed in the region farthest
  from the client).

The target (issue 8): a clone from a region that holds a replica is no slower
than a clone of a repository homed in that region, within 10 %.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from bench import clones
from bench.common import MiB, median
from bench.repos import make_random_repo, run_git, timed_git

if TYPE_CHECKING:
    from bench.regions import World

Log = Callable[[str], None]

REPLICA_REGIONS = ("fra", "lax")
PUSH_CLIENTS = ("fra", "syd")
READ_OPS = ("ls-remote", "clone")
SYNC_DEADLINE_S = 120.0
PROTOCOLS = ("https", "ssh")


@dataclass
class ReplSample:
    protocol: str
    op: str  # push, ls-remote, clone
    client: str
    repo: str  # repl-w1, repl-w2, small-<region>
    kind: str  # w1, w2, unreplicated, homed-here, homed-far
    index: int
    wall_s: float


def _api(world: World) -> httpx.Client:
    from bench.regions import USER

    verify = ssl.create_default_context(cafile=str(world.net.ca_file))
    return httpx.Client(
        base_url=world.net.edge.https_url, verify=verify, auth=(USER, world.token), timeout=60
    )


def _replica_states(world: World, name: str) -> list[dict[str, Any]]:
    from bench.regions import USER

    with _api(world) as api:
        got = api.get(f"/api/repos/{USER}/{name}")
        got.raise_for_status()
        replicas: list[dict[str, Any]] = got.json().get("replicas", [])
        return replicas


def wait_in_sync(world: World, name: str, deadline_s: float = SYNC_DEADLINE_S) -> float:
    """Every replica of `name` in sync (bench.clones.wait_in_sync, one connection)."""
    from bench.regions import USER

    with _api(world) as api:
        return clones.wait_in_sync(api, f"{USER}/{name}", deadline_s=deadline_s, poll_s=0.1)


def setup(world: World, log: Log) -> None:
    """Create repl-w1 and repl-w2 (home fra, replicas fra + lax) and push the small repo."""
    from bench.regions import USER

    with _api(world) as api:
        for name, w in (("repl-w1", 1), ("repl-w2", 2)):
            body = {
                "name": f"{USER}/{name}",
                "replicas": 2,
                "sync_replicas": w,
                "replica_regions": list(REPLICA_REGIONS[1:]),
            }
            created = api.post("/api/repos", json=body, headers={"Fly-Region": "fra"})
            if created.status_code != 201:
                raise RuntimeError(f"create {name}: {created.status_code} {created.text}")
            regions = sorted(r["region"] for r in _replica_states(world, name))
            if regions != sorted(REPLICA_REGIONS):
                raise RuntimeError(f"{name} placed in {regions}, not {REPLICA_REGIONS}")
    src = world.work / "src-repl"
    repo = make_random_repo(src, int(world.cfg.small_mb * MiB), world.env)
    admin = world.net.edge.https_url.replace("://", f"://{USER}:{world.token}@", 1)
    for name in ("repl-w1", "repl-w2"):
        run_git(["push", "--quiet", f"{admin}/{USER}/{name}.git", "main:main"], world.env, cwd=src)
        waited = wait_in_sync(world, name)
        log(f"{name}: {repo.total_bytes / MiB:.2f} MiB pushed; in sync after {waited:.1f}s")
    shutil.rmtree(src, ignore_errors=True)


def _farthest(world: World, client: str) -> str:
    others = [r for r in world.cfg.regions if r != client]
    return max(others, key=lambda r: world.cfg.wan_ms(client, r))


def _url(world: World, protocol: str, client: str, repo: str) -> str:
    return world.url(protocol, "edge", client, client, repo)


def _push(world: World, protocol: str, client: str, repo: str, checkout: Path) -> float:
    env = world.git_env(protocol, "edge")
    (checkout / "note.txt").write_text(f"{time.time_ns()}\n")
    run_git(["add", "note.txt"], env, cwd=checkout)
    run_git(["commit", "--quiet", "-m", "bench push"], env, cwd=checkout)
    branch = f"refs/heads/bench-{protocol}-{client}"
    return timed_git(["push", "--quiet", "origin", f"HEAD:{branch}"], env, cwd=checkout,
                     timeout=120).wall_s  # fmt: skip


def _read(world: World, op: str, protocol: str, client: str, repo: str) -> float:
    env = world.git_env(protocol, "edge")
    url = _url(world, protocol, client, repo)
    if op == "ls-remote":
        return timed_git(["ls-remote", url, "refs/heads/main"], env, timeout=120).wall_s
    dest = Path(tempfile.mkdtemp(prefix="clone-", dir=world.work))
    try:
        return timed_git(["clone", "--quiet", "--no-checkout", url, str(dest / "r")], env,
                         timeout=600).wall_s  # fmt: skip
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def run(world: World, log: Log) -> dict[str, Any]:
    """Setup, then the interleaved samples; the result's `replicated` section."""
    setup(world, log)
    samples: list[ReplSample] = []
    push_repos = (("small-fra", "unreplicated"), ("repl-w1", "w1"), ("repl-w2", "w2"))
    checkouts: dict[tuple[str, str, str], Path] = {}
    waits: list[float] = []
    for protocol in PROTOCOLS:
        for client in PUSH_CLIENTS:
            for repo, _ in push_repos:
                dest = world.work / f"repl-co-{protocol}-{client}-{repo}"
                run_git(["clone", "--quiet", _url(world, protocol, client, repo), str(dest)],
                        world.git_env(protocol, "edge"), timeout=600)  # fmt: skip
                checkouts[(protocol, client, repo)] = dest
                _push(world, protocol, client, repo, dest)  # warm-up, untimed
    for index in range(world.cfg.samples):
        for protocol in PROTOCOLS:
            for client in PUSH_CLIENTS:
                for repo, kind in push_repos:
                    wall = _push(world, protocol, client, repo, checkouts[(protocol, client, repo)])
                    samples.append(ReplSample(protocol, "push", client, repo, kind, index, wall))
            # Reads measure the steady state: every replica in sync (the wait is logged).
            for name in ("repl-w1", "repl-w2"):
                waits.append(wait_in_sync(world, name))
            for client in world.cfg.regions:
                reads = (
                    ("repl-w2", "replicated"),
                    (f"small-{client}", "homed-here"),
                    (f"small-{_farthest(world, client)}", "homed-far"),
                )
                for op in READ_OPS:
                    for repo, kind in reads:
                        if index == 0:
                            _read(world, op, protocol, client, repo)  # warm-up, untimed
                        wall = _read(world, op, protocol, client, repo)
                        samples.append(ReplSample(protocol, op, client, repo, kind, index, wall))
        log(f"replicated scenario: round {index + 1}/{world.cfg.samples} done")
    for name in ("repl-w1", "repl-w2"):
        wait_in_sync(world, name)
    return {
        "replica_regions": list(REPLICA_REGIONS),
        "sync_waits_s": waits,
        "samples": [asdict(s) for s in samples],
    }


# -- report ------------------------------------------------------------------------------------


def _median_ms(section: dict[str, Any], **match: str) -> float:
    walls = [
        s["wall_s"]
        for s in section["samples"]
        if all(s[key] == value for key, value in match.items())
    ]
    return median(walls) * 1000


def render_markdown(section: dict[str, Any], regions: list[str], result: dict[str, Any]) -> str:
    holders = section["replica_regions"]
    cfg, m = result["config"], result["machine"]
    waits = section["sync_waits_s"]
    delays = ", ".join(f"{k} {v}" for k, v in cfg["one_way_ms"].items())
    out = [
        "# gitedge regions benchmark: replicated scenario",
        "",
        f"Started {result['started_at']}, {'quick' if result['quick'] else 'full'} run, "
        f"{result.get('elapsed_s', 0):.0f} s, {cfg['samples']} samples. Machine: "
        f"{m['nproc']} CPUs ({m['cpu_model']}), {m['git']}. One-way delays (ms, "
        f"x{cfg['delay_scale']}): {delays}; client <-> its edge {cfg['client_edge_ms']}. "
        f"Small repo {cfg['small_mb']} MiB.",
        "",
        f"Before each round's reads every replica was in sync (waits: median "
        f"{median(waits):.2f} s, max {max(waits, default=0):.2f} s).",
        "",
        f"Repositories replicated in {' + '.join(holders)} (home {holders[0]}); medians of the "
        "warm samples through each client region's edge, ms.",
        "",
    ]
    for protocol in PROTOCOLS:
        out += [f"### {protocol.upper()} push", ""]
        out += ["| client | unreplicated (home fra) | W=1 | W=2 | W=2 / unreplicated |"]
        out += ["| --- | ---: | ---: | ---: | ---: |"]
        for client in PUSH_CLIENTS:
            ms = {
                kind: _median_ms(section, protocol=protocol, op="push", client=client, kind=kind)
                for kind in ("unreplicated", "w1", "w2")
            }
            out.append(
                f"| {client} | {ms['unreplicated']:.0f} | {ms['w1']:.0f} | {ms['w2']:.0f} "
                f"| {ms['w2'] / ms['unreplicated']:.2f} |"
            )
        out.append("")
        for op in READ_OPS:
            out += [f"### {protocol.upper()} {op}", ""]
            out += ["| client | replicated | homed in the client's region | homed far "
                    "| replicated / homed here | target |"]  # fmt: skip
            out += ["| --- | ---: | ---: | ---: | ---: | --- |"]
            for client in regions:
                ms = {
                    kind: _median_ms(section, protocol=protocol, op=op, client=client, kind=kind)
                    for kind in ("replicated", "homed-here", "homed-far")
                }
                ratio = ms["replicated"] / ms["homed-here"]
                if client in holders and op == "clone":
                    verdict = "met" if ratio <= 1.10 else "MISSED"
                    target = f"<= 1.10 ({verdict})"
                else:
                    target = "(no replica here)" if client not in holders else ""
                out.append(
                    f"| {client} | {ms['replicated']:.0f} | {ms['homed-here']:.0f} "
                    f"| {ms['homed-far']:.0f} | {ratio:.2f} | {target} |"
                )
            out.append("")
    return "\n".join(out) + "\n"


def render_plot(section: dict[str, Any], regions: list[str], results_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = ("replicated", "homed-here", "homed-far")
    fig, axes = plt.subplots(len(PROTOCOLS), len(READ_OPS) + 1, figsize=(15, 4 * len(PROTOCOLS)),
                             squeeze=False)  # fmt: skip
    for row, protocol in enumerate(PROTOCOLS):
        for col, op in enumerate(READ_OPS):
            ax = axes[row][col]
            width = 0.25
            for i, kind in enumerate(kinds):
                values = [
                    _median_ms(section, protocol=protocol, op=op, client=c, kind=kind)
                    for c in regions
                ]
                ax.bar([x + i * width for x in range(len(regions))], values, width, label=kind)
            ax.set_xticks([x + width for x in range(len(regions))], regions)
            ax.set_xlabel("client region")
            ax.set_ylabel("ms (median)")
            ax.set_title(f"{protocol.upper()} {op}")
            ax.legend(fontsize=7)
        ax = axes[row][len(READ_OPS)]
        width = 0.25
        for i, kind in enumerate(("unreplicated", "w1", "w2")):
            values = [
                _median_ms(section, protocol=protocol, op="push", client=c, kind=kind)
                for c in PUSH_CLIENTS
            ]
            ax.bar([x + i * width for x in range(len(PUSH_CLIENTS))], values, width, label=kind)
        ax.set_xticks([x + width for x in range(len(PUSH_CLIENTS))], PUSH_CLIENTS)
        ax.set_xlabel("client region")
        ax.set_title(f"{protocol.upper()} push (replicas fra+lax)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = results_dir / "regions_replicated.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return str(path)
