"""Where the time of one small `git ls-remote` goes: through the HTTPS edge vs direct.

    python -m bench.lsremote_latency              # 25 rounds
    python -m bench.lsremote_latency --quick      # 5 rounds

One devnet (etcd, nodes fra-1 and lax-1, one HTTPS edge), one repo of one
commit, then per round, interleaved, each variant once untimed-traced and once
timed (the wall time is of the untraced run):

- `direct-http`: plain HTTP to the node, its credential sent up front
  (`http.extraHeader`), as the benchmarks' direct path always has;
- `edge-https`: the user's token in the URL, so git first asks anonymously,
  takes a 401 and asks again on the same connection;
- `edge-https-upfront`: the token sent up front (`http.extraHeader:
  Authorization: Basic ...`): no 401;
- `edge-https-no-capath`: as `edge-https`, with `GIT_SSL_CAPATH` set to an
  empty directory, so libcurl-gnutls loads only `GIT_SSL_CAINFO` and not every
  certificate in /etc/ssl/certs as well.

The traced runs (GIT_TRACE + GIT_TRACE_CURL, bench/curl_trace.py) split each
command into: process start to connect, TLS set-up (CA loading, handshake),
each request to its response's end, and the rest. The edge's access log counts
the requests it saw. A Python client then repeats the requests git sends, on
one warm connection and on a fresh one per command, against the edge and the
node: the servers' share with no git client in it; and `/healthz` over a fresh
TLS connection (one CA certificate loaded).
"""

from __future__ import annotations

import argparse
import base64
import os
import resource
import socket
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench import clones
from bench.clones import USER
from bench.common import log, median, work_dir
from bench.curl_trace import parse_trace
from bench.repos import Timed, clean_git_env, run_git
from bench.results import RESULTS_DIR, new_result, row, run_main
from bench.trees import Tree, TreeNet, running_devnet

REPO = "bench/small"
HEADINGS = (
    "variant|wall|git CPU|to connect|TLS set-up|CA dir|401|info/refs|ls-refs|slowest request (max)"
    "|git requests|edge log lines"
)
VARIANTS = ("direct-http", "edge-https", "edge-https-upfront", "edge-https-no-capath")

NOTES = (
    "Every variant sets GIT_SSL_CAINFO to the devnet's CA (one certificate); Debian's"
    " libcurl-gnutls loads its default CA path /etc/ssl/certs on top of it. A client"
    " with no GIT_SSL_CAINFO loads /etc/ssl/certs/ca-certificates.crt as well.",
    "Each round runs every variant twice, traced then untraced; `wall` is the untraced"
    " run. The edge log column counts access-log lines per ls-remote.",
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.lsremote_latency", description=(__doc__ or "").split("\n")[0]
    )
    p.add_argument("--rounds", type=int, default=25, help="timed rounds per variant (25)")
    p.add_argument("--quick", action="store_true", help="5 rounds")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--keep", action="store_true", help="keep the work dir")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 5
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    return args


def git_envs(net: TreeNet, home: Path, empty_dir: Path) -> dict[str, tuple[str, dict[str, str]]]:
    """Per variant: the URL and the environment of its `git ls-remote`."""
    token = net.token(USER)
    node = net.node(str(clones.create_repo(net, REPO)["node"]))
    basic = base64.b64encode(f"{USER}:{token}".encode()).decode()

    def header(value: str, **more: str) -> dict[str, str]:
        extra = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "http.extraHeader"}
        return clean_git_env(home, GIT_CONFIG_VALUE_0=value, **extra, **more)

    ca = {"GIT_SSL_CAINFO": str(net.ca_file)}
    with_token = net.https_url.replace("://", f"://{USER}:{token}@", 1)
    return {
        "direct-http": (
            f"{node.http_url}/{REPO}.git",
            header(f"authorization: Bearer {net.admin_secret}"),
        ),
        "edge-https": (f"{with_token}/{REPO}.git", clean_git_env(home, **ca)),
        "edge-https-upfront": (
            f"{net.https_url}/{REPO}.git",
            header(f"Authorization: Basic {basic}", **ca),
        ),
        "edge-https-no-capath": (
            f"{with_token}/{REPO}.git",
            clean_git_env(home, GIT_SSL_CAPATH=str(empty_dir), **ca),
        ),
    }


def push_one_commit(net: TreeNet, work: Path, env: dict[str, str]) -> str:
    tree = work / "src"
    run_git(["init", "-q", "-b", "main", str(tree)], env)
    (tree / "README").write_text("one commit\n")
    run_git(["add", "README"], env, cwd=tree)
    run_git(["commit", "-q", "-m", "one"], env, cwd=tree)
    url = net.https_url.replace("://", f"://{USER}:{net.token(USER)}@", 1) + f"/{REPO}.git"
    run_git(["push", "-q", url, "main"], env, cwd=tree)
    return run_git(["rev-parse", "HEAD"], env, cwd=tree).strip()


def access_lines(net: TreeNet) -> int:
    return sum("edge.access" in line for line in net.edge_log.read_text().splitlines())


def settled_access_lines(net: TreeNet, expected: int, timeout: float = 2.0) -> int:
    """The access log's line count once it has `expected` lines, or after `timeout`.

    The edge logs a request after its response is sent, so git can exit first."""
    deadline = time.monotonic() + timeout
    while (count := access_lines(net)) < expected and time.monotonic() < deadline:
        time.sleep(0.005)
    return count


def ls_remote(url: str, env: dict[str, str], commit: str) -> Timed:
    """Wall time and the CPU time of git's process tree (git and its remote helper)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = run_git(["ls-remote", url, "refs/heads/main"], env, timeout=60)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if not out.startswith(commit):
        raise RuntimeError(f"ls-remote {url}: {out!r}, expected {commit}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Timed(wall, cpu)


def traced(url: str, env: dict[str, str], trace: Path) -> dict[str, Any]:
    trace.unlink(missing_ok=True)
    files = {"GIT_TRACE": str(trace), "GIT_TRACE_CURL": str(trace)}
    run_git(["ls-remote", url, "refs/heads/main"], {**env, **files, "GIT_TRACE_CURL_NO_DATA": "1"})
    p = parse_trace(trace.read_text())
    return {
        "to_connect_s": p.to_connect,
        "tls_setup_s": p.tls_setup,
        "ca_loading_s": p.ca_loading,
        "ca_certificates": p.ca_certificates,
        "requests": [vars(r) for r in p.requests],
        "traced_s": p.traced,
    }


# -- the servers alone: a Python client sending what git sends ------------------------


def _pkt(text: str) -> bytes:
    return b"%04x" % (len(text) + 4) + text.encode()


LS_REFS = (
    _pkt("command=ls-refs\n")
    + _pkt("object-format=sha1")
    + b"0001"
    + _pkt("peel\n")
    + _pkt("symrefs\n")
    + _pkt("ref-prefix refs/heads/main\n")
    + b"0000"
)


def _read_response(f: Any) -> int:
    status = int(f.readline().split()[1])
    length: int | None = None
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is not None:
        f.read(length)
        return status
    while size := int(f.readline().strip(), 16):
        f.read(size + 2)
    f.readline()
    return status


class Client:
    """Blocking HTTP/1.1 keep-alive client; TCP_NODELAY as libcurl sets it."""

    def __init__(self, base: str, ca_file: Path | None, authorization: str) -> None:
        parts = urlsplit(base)
        host, port = parts.hostname or "127.0.0.1", parts.port or 443
        sock = socket.create_connection((host, port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if parts.scheme == "https":
            ctx = ssl.create_default_context(cafile=str(ca_file))
            sock = ctx.wrap_socket(sock, server_hostname=host)
        self.sock, self.file = sock, sock.makefile("rb")
        self.authorization = authorization

    def request(self, method: str, path: str, body: bytes = b"", auth: bool = True) -> int:
        lines = [f"{method} {path} HTTP/1.1", "Host: bench", "Git-Protocol: version=2"]
        lines += [f"Authorization: {self.authorization}"] if auth else []
        if method == "POST":
            lines += ["Content-Type: application/x-git-upload-pack-request"]
            lines += [f"Content-Length: {len(body)}"]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return _read_response(self.file)

    def ls_remote(self, anonymous_first: bool) -> None:
        info_refs = f"/{REPO}.git/info/refs?service=git-upload-pack"
        if anonymous_first and self.request("GET", info_refs, auth=False) != 401:
            raise RuntimeError("anonymous info/refs was not refused")
        statuses = (
            self.request("GET", info_refs),
            self.request("POST", f"/{REPO}.git/git-upload-pack", LS_REFS),
        )
        if statuses != (200, 200):
            raise RuntimeError(f"ls-remote requests answered {statuses}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def timed_ms(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return (time.perf_counter() - start) * 1000


def server_probes(net: TreeNet, node_url: str, rounds: int) -> dict[str, list[float]]:
    """Milliseconds per round: ls-remote's requests on fresh and warm connections, healthz."""
    token = base64.b64encode(f"{USER}:{net.token(USER)}".encode()).decode()
    edge = (net.https_url, net.ca_file, f"Basic {token}")
    node = (node_url, None, f"Bearer {net.admin_secret}")
    samples: dict[str, list[float]] = {}

    def fresh(target: tuple[str, Path | None, str], anonymous_first: bool) -> None:
        client = Client(*target)
        try:
            client.ls_remote(anonymous_first)
        finally:
            client.close()

    def healthz() -> None:
        client = Client(net.https_url, net.ca_file, "")
        try:
            if client.request("GET", "/healthz", auth=False) != 200:
                raise RuntimeError("healthz not 200")
        finally:
            client.close()

    warm = {"direct-http": Client(*node), "edge-https": Client(*edge)}
    try:
        for _ in range(rounds + 1):  # the first round warms up and is dropped
            one = {
                "fresh direct-http (2 requests)": timed_ms(lambda: fresh(node, False)),
                "fresh edge-https (401 + 2 requests)": timed_ms(lambda: fresh(edge, True)),
                "fresh edge-https-upfront (2 requests)": timed_ms(lambda: fresh(edge, False)),
                "warm direct-http (2 requests)": timed_ms(
                    lambda: warm["direct-http"].ls_remote(False)
                ),
                "warm edge-https (2 requests)": timed_ms(
                    lambda: warm["edge-https"].ls_remote(False)
                ),
                "healthz, fresh TLS connection": timed_ms(healthz),
            }
            for name, ms in one.items():
                samples.setdefault(name, []).append(ms)
    finally:
        for client in warm.values():
            client.close()
    return {name: values[1:] for name, values in samples.items()}


def run(args: argparse.Namespace) -> dict[str, Any]:
    result = new_result("lsremote_latency", args, NOTES, repo=REPO)
    with (
        work_dir("bench-lsremote-", args.keep) as work,
        running_devnet(Tree.this(), work / "net", [USER]) as net,
    ):
        home, empty = work / "home", work / "empty-capath"
        empty.mkdir()
        envs = git_envs(net, home, empty)
        push_env = clean_git_env(home, GIT_SSL_CAINFO=str(net.ca_file))
        commit = push_one_commit(net, work, push_env)
        samples: list[dict[str, Any]] = []
        for round_no in range(args.rounds + 1):  # round 0 warms up
            for name in VARIANTS:
                url, env = envs[name]
                before = access_lines(net)
                phases = traced(url, env, work / "trace.txt")
                timed = ls_remote(url, env, commit)
                sent = 2 * len(phases["requests"]) if name.startswith("edge") else 0
                seen = settled_access_lines(net, before + sent) - before
                sample = {"round": round_no, "variant": name, "warmup": round_no == 0}
                samples.append(
                    {**sample, "wall_s": timed.wall_s, "client_cpu_s": timed.client_cpu_s}
                    | {"edge_requests": seen / 2, **phases}
                )
            log(f"round {round_no}/{args.rounds} done")
        node_url = envs["direct-http"][0].removesuffix(f"/{REPO}.git")
        result["server_probes_ms"] = server_probes(net, node_url, args.rounds)
    result["samples"] = samples
    result["loadavg_end"] = os.getloadavg()
    return result


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median milliseconds of each phase, per variant, over the timed rounds."""
    out: dict[str, dict[str, float]] = {}
    for name in VARIANTS:
        rows = [s for s in samples if s["variant"] == name and not s["warmup"]]

        def ms(pick: Callable[[dict[str, Any]], float], rows: list[dict[str, Any]] = rows) -> float:
            return median([pick(s) * 1000 for s in rows])

        def request_ms(status: int, nth: int, s: dict[str, Any]) -> float:
            found = [r["seconds"] for r in s["requests"] if r["status"] == status]
            return found[nth] if len(found) > nth else 0.0

        out[name] = {
            "wall": ms(lambda s: s["wall_s"]),
            "client_cpu": ms(lambda s: s["client_cpu_s"]),
            "to_connect": ms(lambda s: s["to_connect_s"]),
            "tls_setup": ms(lambda s: s["tls_setup_s"] or 0.0),
            "ca_dir": ms(lambda s: s["ca_loading_s"].get("/etc/ssl/certs", 0.0)),
            "r401": ms(lambda s: request_ms(401, 0, s)),
            "info_refs": ms(lambda s: request_ms(200, 0, s)),
            "ls_refs": ms(lambda s: request_ms(200, 1, s)),
            "requests": median([float(len(s["requests"])) for s in rows]),
            "slowest_request": max(r["seconds"] * 1000 for s in rows for r in s["requests"]),
            "edge_requests": median([float(s["edge_requests"]) for s in rows]),
            "rounds": float(len(rows)),
        }
    return out


def render(result: dict[str, Any]) -> str:
    summary = summarise(result["samples"])
    cols = [
        "wall",
        "client_cpu",
        "to_connect",
        "tls_setup",
        "ca_dir",
        "r401",
        "info_refs",
        "ls_refs",
        "slowest_request",
    ]
    lines = [
        f"Medians of {int(summary[VARIANTS[0]]['rounds'])} interleaved rounds, in ms. "
        f"Load average {result['loadavg_start'][0]:.1f} at the start, "
        f"{result['loadavg_end'][0]:.1f} at the end (2 shared cores).",
        "",
        "`wall` is an untraced run, `git CPU` the user+system time of its processes; the "
        "phases come from a traced run of the same round "
        "(bench/curl_trace.py). `to connect`: process start, the remote helper's exec, "
        "libcurl/GnuTLS init. `TLS set-up`: connect to handshake done, of which `CA dir` "
        "is GnuTLS loading /etc/ssl/certs. Each request: sent to its response read; "
        "the slowest is the maximum over every request of every timed round (a Nagle / "
        "delayed-ACK stall would show as >= 40 ms).",
        "",
        row(*HEADINGS.split("|")),
        row(*["---"] * 12),
    ]
    for name, s in summary.items():
        cells = [f"{s[c]:.1f}" for c in cols]
        lines.append(row(f"`{name}`", *cells, f"{s['requests']:.0f}", f"{s['edge_requests']:.0f}"))
    lines += ["", *(f"- {note}" for note in result["notes"])]
    lines += ["", "The servers alone (a Python client sending what git sends; ms, medians):", ""]
    lines += [row("probe", "median", "min", "max"), row("---", "---", "---", "---")]
    for name, values in result["server_probes_ms"].items():
        lines.append(row(name, f"{median(values):.1f}", f"{min(values):.1f}", f"{max(values):.1f}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_main(argv, parse_args, run, render, lambda args: "lsremote_latency")


if __name__ == "__main__":
    raise SystemExit(main())
