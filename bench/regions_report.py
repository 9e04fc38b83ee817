"""The regions benchmark's report: round trips from traces, floors, the markdown
matrices and the PNG plots. Pure functions of the result dict (plus matplotlib)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench.common import MiB, median

# Why each operation needs the git round trips it does (protocol v2 for upload-pack;
# receive-pack is always v0). Transport setup is not counted in the floor: through
# the edge it ends at the near edge, which is the point of the edge.
ROUND_TRIP_REASONS = {
    "ls-remote": "capability advertisement (HTTPS: GET info/refs; SSH: sent on exec), "
    "then ls-refs: 2",
    "clone-small": "capabilities, ls-refs, then one fetch (wants + done; nothing to "
    "negotiate in an empty repo) whose response is the pack: 3 (+ transfer time)",
    "clone-big": "as clone-small: 3, plus the pack's transfer time (not in the floor)",
    "fetch-noop": "capabilities, ls-refs; the tip is already here, so no fetch: 2",
    "push": "receive-pack (v0): ref advertisement, then commands + pack -> report-status: 2",
}
HANDSHAKE_REASONS = {
    "https": "TCP 1 + TLS 1.3 1 round trip per connection (git keeps one connection per operation)",
    "ssh": "TCP 1, version + KEXINIT 1, ECDH 1, NEWKEYS/service request 1, publickey "
    "query + signed auth 2, channel open + exec 1-2: about 7-8 round trips",
}
FALLBACK_ROUND_TRIPS = {
    "ls-remote": 2,
    "clone-small": 3,
    "clone-big": 3,
    "fetch-noop": 2,
    "push": 2,
}

_PACKET = re.compile(r"packet:\s+([\w.-]+)([<>]) ")


def round_trips_from_trace(text: str) -> dict[str, Any]:
    """Count git's request/response turns in a GIT_TRACE_PACKET (+ GIT_TRACE_CURL) log.

    HTTPS: one round trip per HTTP request, less the 401 challenges (transport,
    not git). SSH: one per run of packets read after packets written (the first
    run answers the exec itself), per tracing process, the most any process saw.
    """
    requests = len(re.findall(r"=> Send header: (?:GET|POST) ", text))
    challenges = len(re.findall(r"<= Recv header: HTTP/[\d.]+ 401", text))
    connects = text.count("Connected to ")
    runs: dict[str, int] = {}
    last: dict[str, str] = {}
    for name, direction in _PACKET.findall(text):
        if name == "sideband":
            continue
        if direction == "<" and last.get(name) != "<":
            runs[name] = runs.get(name, 0) + 1
        last[name] = direction
    packet_runs = max(runs.values(), default=0)
    git_round_trips = requests - challenges if requests else packet_runs
    return {
        "git_round_trips": git_round_trips,
        "http_requests": requests,
        "http_401": challenges,
        "tcp_connects": connects,
        "packet_read_runs": runs,
    }


def round_trips(result: dict[str, Any], protocol: str, scenario: str) -> int:
    traced = result.get("traces", {}).get(f"{protocol}/{scenario}")
    if traced and traced["git_round_trips"] > 0:
        return int(traced["git_round_trips"])
    return FALLBACK_ROUND_TRIPS[scenario]


def rtt_ms(config: dict[str, Any], client: str, home: str) -> float:
    scale = config["delay_scale"]
    local = config["client_edge_ms"] * scale
    if client == home:
        wan = config["same_region_ms"] * scale
    else:
        wan = config["one_way_ms"]["-".join(sorted((client, home)))] * scale
    return 2.0 * (float(local) + float(wan))


def floor_ms(result: dict[str, Any], protocol: str, scenario: str, client: str, home: str) -> float:
    return round_trips(result, protocol, scenario) * rtt_ms(result["config"], client, home)


def median_ms(result: dict[str, Any], **match: str) -> float:
    walls = [s["wall_s"] for s in result["samples"] if all(s[k] == v for k, v in match.items())]
    return 1000.0 * float(median(walls))


def _cells(result: dict[str, Any], protocol: str, scenario: str, mode: str) -> list[str]:
    regions = result["config"]["regions"]
    lines = [
        "| client \\ home | " + " | ".join(regions) + " |",
        "| --- |" + " ---: |" * len(regions),
    ]
    for client in regions:
        cells = []
        for home in regions:
            common = {"protocol": protocol, "scenario": scenario, "client": client, "home": home}
            edge = median_ms(result, path="edge", mode=mode, **common)
            direct = median_ms(result, path="direct", mode="warm", **common)
            floor = floor_ms(result, protocol, scenario, client, home)
            cells.append(f"{edge:.0f} / {direct:.0f} / {floor:.0f}")
        lines.append(f"| **{client}** | " + " | ".join(cells) + " |")
    return lines


def counters_table(result: dict[str, Any]) -> list[str]:
    lines = [
        "| protocol | scenario | warm edge ops | node handshakes (HTTP+SSH) | etcd requests "
        "| lookup etcd reads |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for protocol in result["protocols"]:
        for scenario in result["scenarios"]:
            deltas = [
                s["edge_stats_delta"]
                for s in result["samples"]
                if s["protocol"] == protocol
                and s["scenario"] == scenario
                and s["mode"] == "warm"
                and s["edge_stats_delta"] is not None
            ]
            shakes = sum(d["node_connects"] for d in deltas)  # SSH sessions included
            etcd = sum(d["etcd_requests"] for d in deltas)
            reads = sum(d["lookup_etcd_reads"] for d in deltas)
            lines.append(
                f"| {protocol} | {scenario} | {len(deltas)} | {shakes} | {etcd} | {reads} |"
            )
    return lines


def targets(result: dict[str, Any]) -> dict[str, Any]:
    regions = result["config"]["regions"]
    samples = result["samples"]
    warm_edge = [s for s in samples if s["mode"] == "warm" and s["edge_stats_delta"]]
    # node_connects includes SSH sessions: they ride the same pooled connections.
    shakes = sum(s["edge_stats_delta"]["node_connects"] for s in warm_edge)
    # Per git operation means what the request path asks of etcd: lookups on a
    # miss. The mirror's health probe (every 5 s, whatever the traffic) also
    # counts in etcd_requests and is reported beside it, not as a per-op cost.
    lookups = sum(s["edge_stats_delta"]["lookup_etcd_reads"] for s in warm_edge)
    background = sum(s["edge_stats_delta"]["etcd_requests"] for s in warm_edge)
    far = {}
    for client in regions:
        for home in regions:
            if client == home:
                continue
            common = {"protocol": "ssh", "scenario": "ls-remote", "client": client, "home": home}
            e = median_ms(result, path="edge", mode="warm", **common)
            d = median_ms(result, path="direct", mode="warm", **common)
            far[f"{client}->{home}"] = round(e / d, 3)
    big_mb = result["config"]["big_mb"]
    throughput = {}
    for protocol in result["protocols"]:
        for client, home in (("fra", "syd"), ("syd", "fra")):
            ms = median_ms(
                result, protocol=protocol, scenario="clone-big", client=client, home=home,
                path="edge", mode="warm",
            )  # fmt: skip
            throughput[f"{protocol} {client}->{home}"] = round(big_mb * MiB / 1e6 / (ms / 1000), 1)
    https_ratio = {}
    for scenario in result["scenarios"]:
        ratios = []
        for client in regions:
            for home in regions:
                common = {"protocol": "https", "scenario": scenario, "client": client, "home": home}
                e = median_ms(result, path="edge", mode="warm", **common)
                d = median_ms(result, path="direct", mode="warm", **common)
                ratios.append(e / d)
        https_ratio[scenario] = round(median(ratios), 3)
    return {
        "warm_node_handshakes": {"target": 0, "value": shakes, "pass": shakes == 0},
        "warm_etcd_requests_per_git_operation": {
            "target": 0,
            "value": lookups,
            "pass": lookups == 0,
            "background_mirror_requests_in_timed_windows": background,
        },
        "ssh_ls_remote_far_edge_over_direct": {
            "target": "<= 0.5",
            "value": far,
            "pass": all(v <= 0.5 for v in far.values()),
        },
        "clone_big_fra_syd_MB_per_s": {
            "target": ">= 40 (only meaningful with the 100 MB repo and full delays)",
            "value": throughput,
            "pass": all(v >= 40 for v in throughput.values()),
        },
        "https_edge_over_nginx_median_ratio": {
            "target": "<= 1.0",
            "value": https_ratio,
            "pass": all(v <= 1.0 for v in https_ratio.values()),
        },
    }


def render_markdown(result: dict[str, Any]) -> str:
    cfg = result["config"]
    result["targets"] = targets(result)
    m = result["machine"]
    lines = [
        "# gitedge regions benchmark",
        "",
        f"Started {result['started_at']}, {'quick' if result['quick'] else 'full'} run, "
        f"{result.get('elapsed_s', 0):.0f} s. Machine: {m['nproc']} CPUs ({m['cpu_model']}), "
        f"{m['git']}, Linux {m['kernel']}.",
        "",
        f"One-way delays (ms, x{cfg['delay_scale']}): client <-> its edge "
        f"{cfg['client_edge_ms']}, same region {cfg['same_region_ms']}, "
        + ", ".join(f"{k} {v}" for k, v in cfg["one_way_ms"].items())
        + f"; etcd in {cfg['etcd_region']}, reached by the edges across the same delays. "
        "A client pays client<->edge + region<->region each way whether it goes "
        "through its edge or straight to the home node, so both paths have the same RTT.",
        "",
        f"Repos: small {cfg['small_mb']} MB, big {cfg['big_mb']} MB of random blobs "
        "(>= 128 objects: packs are kept, `transfer.unpackLimit` at its default). "
        f"{cfg['samples']} timed sample(s) per cell and path, edge and direct interleaved, "
        "after an untimed clone + push per (client, home, protocol, path). "
        "Clones are `--no-checkout`.",
        "",
        "Baselines (`direct`): HTTPS to nginx (TLS 1.2/1.3, keep-alive upstream, no "
        "buffering) beside the home node; SSH to OpenSSH sshd running git-shell on the "
        "node's volume. Both reached through the client<->home relay.",
        "",
        "Cells: **edge median / direct median / floor**, milliseconds. Floor = git round "
        "trips x path RTT (transport handshakes and transfer time not included).",
        "",
        "## Round trips per operation",
        "",
        "| operation | HTTPS (traced) | SSH (traced) | why |",
        "| --- | ---: | ---: | --- |",
    ]
    for scenario in result["scenarios"]:
        lines.append(
            f"| {scenario} | {round_trips(result, 'https', scenario)} | "
            f"{round_trips(result, 'ssh', scenario)} | {ROUND_TRIP_REASONS[scenario]} |"
        )
    lines += [
        "",
        "Counted once per operation on the direct path: HTTPS from `GIT_TRACE_CURL` "
        "(requests, less 401 challenges), SSH from `GIT_TRACE_PACKET` (runs of packets "
        "read after a write). Transport setup, not in the floor: "
        + "; ".join(f"{p}: {r}" for p, r in HANDSHAKE_REASONS.items())
        + ".",
        "",
        "Through the HTTPS edge the token goes "
        + (
            "with every request (`http.extraHeader: Authorization: Basic ...`, as CI "
            "checkouts send it), so no 401 challenge; with git's default (credentials "
            "only after a 401) each operation pays one more client<->edge round trip."
            if cfg.get("token_upfront", False)
            else "in the URL: git sends it only after a 401 challenge, one more "
            "client<->edge round trip per operation (nginx asks for no credentials)."
        ),
    ]
    modes = ["warm"] + (["cold"] if any(s["mode"] == "cold" for s in result["samples"]) else [])
    for mode in modes:
        lines += ["", f"## {mode.capitalize()}", ""]
        if mode == "cold":
            lines += [
                "The edge was restarted (and its cache synced) before each round: the "
                "first operation to each home opens the edge's node connection. Cells: "
                "cold edge / warm direct / floor.",
                "",
            ]
        for protocol in result["protocols"]:
            for scenario in result["scenarios"]:
                if not any(
                    s["mode"] == mode and s["protocol"] == protocol and s["scenario"] == scenario
                    for s in result["samples"]
                ):
                    continue
                lines += [f"### {protocol.upper()} {scenario} ({mode})", ""]
                lines += _cells(result, protocol, scenario, mode)
                lines.append("")
    lines += ["## Edge counters per warm operation (sums over all warm edge runs)", ""]
    lines += counters_table(result)
    lines += [
        "",
        "Read from each edge's `GET /_gitedge/stats` right before and after every warm "
        "edge run. `etcd_requests` also counts the routing mirror's background health "
        "check (one request every 5 s, whatever the traffic), so a few land inside a "
        "timed window by chance; `lookup_etcd_reads` is the hot path's own etcd reads.",
    ]
    lines += [
        "",
        "## Targets",
        "",
        "| target | wanted | measured | verdict |",
        "| --- | --- | --- | --- |",
    ]
    for name, t in result["targets"].items():
        lines.append(
            f"| {name} | {t['target']} | {t['value']} | {'pass' if t['pass'] else 'MISS'} |"
        )
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [
            f"![{Path(p).stem}]({Path(p).name})" for p in result["plots"]
        ]
    return "\n".join(lines) + "\n"


def render_plots(result: dict[str, Any], results_dir: Path) -> list[str]:
    """regions_heat_<protocol>.png (edge / direct) and regions_bars.png (medians vs floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regions = result["config"]["regions"]
    scenarios = result["scenarios"]
    written = []
    for protocol in result["protocols"]:
        fig, axes = plt.subplots(1, len(scenarios), figsize=(4 * len(scenarios), 4))
        for ax, scenario in zip(axes, scenarios, strict=True):
            grid = []
            for client in regions:
                row = []
                for home in regions:
                    common = {"protocol": protocol, "scenario": scenario, "client": client,
                              "home": home, "mode": "warm"}  # fmt: skip
                    row.append(median_ms(result, path="edge", **common)
                               / median_ms(result, path="direct", **common))  # fmt: skip
                grid.append(row)
            image = ax.imshow(grid, cmap="RdYlGn_r", vmin=0.0, vmax=2.0)
            ax.set_xticks(range(len(regions)), regions)
            ax.set_yticks(range(len(regions)), regions)
            ax.set_xlabel("home")
            ax.set_ylabel("client")
            ax.set_title(scenario)
            for i, row in enumerate(grid):
                for j, value in enumerate(row):
                    ax.text(j, i, f"{value:.2f}", ha="center", va="center")
        fig.colorbar(image, ax=axes, shrink=0.8, label="edge / direct (warm medians)")
        fig.suptitle(f"{protocol.upper()}: edge time / direct time")
        path = results_dir / f"regions_heat_{protocol}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(str(path))
    pairs = [(c, h) for c in regions for h in regions]
    fig, axes = plt.subplots(len(result["protocols"]), len(scenarios),
                             figsize=(4.5 * len(scenarios), 4 * len(result["protocols"])),
                             squeeze=False)  # fmt: skip
    for prow, protocol in enumerate(result["protocols"]):
        for col, scenario in enumerate(scenarios):
            ax = axes[prow][col]
            xs = list(range(len(pairs)))
            for offset, (label, values) in enumerate(
                (
                    ("edge", [median_ms(result, protocol=protocol, scenario=scenario, client=c,
                                        home=h, path="edge", mode="warm") for c, h in pairs]),
                    ("direct", [median_ms(result, protocol=protocol, scenario=scenario, client=c,
                                          home=h, path="direct", mode="warm") for c, h in pairs]),
                    ("floor", [floor_ms(result, protocol, scenario, c, h) for c, h in pairs]),
                )
            ):  # fmt: skip
                ax.bar([x + (offset - 1) * 0.27 for x in xs], values, width=0.27, label=label)
            ax.set_xticks(xs, [f"{c}>{h}" for c, h in pairs], rotation=60, fontsize=7)
            ax.set_title(f"{protocol.upper()} {scenario}")
            ax.set_ylabel("ms")
            if prow == 0 and col == 0:
                ax.legend()
    fig.tight_layout()
    path = results_dir / "regions_bars.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    written.append(str(path))
    return written
