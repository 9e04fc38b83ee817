"""`gitedge demo`, the README's run command: the user story on it, then SIGTERM leaves nothing."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import Git, gitedge, poll


def _read_ready(demo: subprocess.Popen[bytes], deadline_s: float) -> dict[str, Any]:
    """The JSON of the demo's `READY {json}` line; fails with its output if it never comes."""
    assert demo.stdout is not None
    fd = demo.stdout.fileno()
    output = b""
    deadline = time.monotonic() + deadline_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            data = os.read(fd, 65536)  # not readline: a buffered reader hides lines from select
            if not data:
                break  # the demo exited
            output += data
            for line in output.splitlines():
                if line.startswith(b"READY ") and output.endswith(b"\n"):
                    ready: dict[str, Any] = json.loads(line.removeprefix(b"READY "))
                    return ready
    raise AssertionError("no READY line from gitedge demo:\n" + output.decode(errors="replace"))


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line names `text` (the demo's workdir is in every child's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue  # gone meanwhile
    return found


def test_demo_runs_the_user_story_and_stops_clean(tmp_path: Path) -> None:
    work = tmp_path / "demo"
    demo = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "demo", "--workdir", str(work)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = _read_ready(demo, 90)
        assert {"https_url", "ca_file", "regions", "etcd", "ssh_url", "user", "token"} <= set(ready)
        assert set(ready["regions"]) == {"fra", "lax"}
        alice = {"GITEDGE_USER": ready["user"], "GITEDGE_TOKEN": ready["token"]}
        ca_file = Path(ready["ca_file"])
        created = gitedge(
            ready["https_url"], ca_file, "repo", "create", "alice/hello", "--region", "lax", **alice
        )
        assert created.returncode == 0, created.stderr
        assert json.loads(created.stdout)["node"] == "lax-1"
        volumes = work / "volumes"
        assert sorted(p.relative_to(volumes).as_posix() for p in volumes.glob("*/*/*.git")) == [
            "lax-1/alice/hello.git"
        ]

        git = Git(tmp_path / "home", ca_file)
        git.home.mkdir()
        url = ready["https_url"].replace("https://", f"https://alice:{ready['token']}@")
        work_tree = git.new_worktree(tmp_path / "w")
        head = git.commit(work_tree, "hello.txt", b"hello\n")
        git.run("push", "-q", f"{url}/alice/hello.git", "main", cwd=work_tree)
        git.run("clone", "-q", f"{url}/alice/hello.git", str(tmp_path / "c"))
        assert git.run("rev-parse", "HEAD", cwd=tmp_path / "c").stdout.strip() == head
        # The READY line names the edge's /metrics, which saw that clone.
        metrics = httpx.get(ready["metrics_url"], timeout=10).text
        assert 'front="https",region="lax",result="ok",service="git-upload-pack"' in metrics

        # The operator's admin token, where the demo says it is.
        admin = Path(ready["admin_token_file"]).read_text().strip()
        added = gitedge(
            ready["https_url"], ca_file, "user", "add", "bob", GITEDGE_ADMIN_TOKEN=admin
        )
        assert added.returncode == 0, added.stderr
        assert _processes_mentioning(str(work))  # etcd, nodes and edge run in the workdir

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=30) == 0
        poll(10, lambda: not _processes_mentioning(str(work)))
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()


def _read_until(demo: subprocess.Popen[bytes], needle: bytes, deadline_s: float) -> bytes:
    assert demo.stdout is not None
    fd, output = demo.stdout.fileno(), b""
    deadline = time.monotonic() + deadline_s
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while needle not in output and time.monotonic() < deadline:
            if selector.select(timeout=max(0.0, deadline - time.monotonic())):
                data = os.read(fd, 65536)
                if not data:
                    break
                output += data
    assert needle in output, output.decode(errors="replace")
    return output


def test_three_region_demo_survives_a_node_and_says_how_to_restart_it(tmp_path: Path) -> None:
    work = tmp_path / "demo3"
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "demo",
            "--workdir",
            str(work),
            "--regions",
            "fra,lax,syd",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    restarted: subprocess.Popen[bytes] | None = None
    try:
        ready = _read_ready(demo, 120)
        assert set(ready["regions"]) == set(ready["edges"]) == {"fra", "lax", "syd"}
        assert ready["https_url"] == ready["edges"]["fra"]["https_url"]
        assert ready["ssh_url"] == ready["edges"]["fra"]["ssh_url"]
        alice = {"GITEDGE_USER": ready["user"], "GITEDGE_TOKEN": ready["token"]}
        ca_file = Path(ready["ca_file"])
        # Each region's edge places a repository in its own region.
        for region, urls in ready["edges"].items():
            made = gitedge(
                urls["https_url"], ca_file, "repo", "create", f"alice/r-{region}", **alice
            )
            assert made.returncode == 0, made.stderr
            assert json.loads(made.stdout)["region"] == region

        config = work / "node-syd-1.toml"
        (pid,) = [p for p in _processes_mentioning(str(config))]
        os.kill(pid, signal.SIGKILL)
        _read_until(demo, f"node --config {config}".encode(), 30)
        assert demo.poll() is None  # still running

        restarted = subprocess.Popen(
            [sys.executable, "-m", "edge.cli", "node", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def placed_in_syd() -> bool | None:
            made = gitedge(
                ready["edges"]["syd"]["https_url"],
                ca_file,
                "repo",
                "create",
                f"alice/again-{time.monotonic_ns()}",
                **alice,
            )
            return (made.returncode == 0 and json.loads(made.stdout)["node"] == "syd-1") or None

        poll(30, placed_in_syd, "the restarted syd-1 to take a new repository")
    finally:
        if restarted is not None:
            restarted.terminate()
            restarted.wait(timeout=30)
        demo.send_signal(signal.SIGTERM)
        try:
            demo.wait(timeout=30)
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()
            if demo.stdout is not None:
                demo.stdout.close()
    poll(10, lambda: not _processes_mentioning(str(work)))
