"""A devnet (etcd, nodes fra-1 and lax-1, one edge) started from a given source tree.

Old and new code side by side in one benchmark run: each tree's devnet is
started by that tree's own interpreter and its own devnet module (through
`bench/tree_devnet.py`), so its edge and nodes run that tree's code with the
configs that code expects. This tree runs the same way, so both variants are
started alike. The benchmark meters the processes by pid and drives them
over their URLs only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from devnet.procs import ManagedProcess, spawn, wait_until

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "tree_devnet.py"
START_TIMEOUT_S = 120.0  # etcd, two nodes and an edge, each waited for in turn
STOP_TIMEOUT_S = 60.0  # the driver stops edge, nodes and etcd, 10 s each at most


@dataclass(frozen=True)
class Tree:
    """A source tree and the interpreter (its own .venv) that runs it."""

    label: str
    root: Path
    python: Path

    @classmethod
    def this(cls) -> Tree:
        return cls("this", ROOT, Path(sys.executable))

    @classmethod
    def other(cls, label: str, root: Path, python: Path | None = None) -> Tree:
        root = root.resolve()
        python = python or root / ".venv" / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(f"{python} not found: bootstrap {root} with its ./dev first")
        return cls(label, root, python)

    def describe(self) -> dict[str, Any]:
        """Path, interpreter, commit and whether the work tree has uncommitted changes."""

        def git(*args: str) -> str:
            done = subprocess.run(
                ["git", "-C", str(self.root), *args], capture_output=True, text=True, check=False
            )
            return done.stdout.strip()

        return {
            "root": str(self.root),
            "python": str(self.python),
            "commit": git("rev-parse", "HEAD"),
            "subject": git("log", "-1", "--format=%s")[:120],
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }


@dataclass(frozen=True)
class NodeView:
    node_id: str
    region: str
    pid: int
    http_url: str
    volume_dir: Path


@dataclass(frozen=True)
class TreeNet:
    """One running devnet of `tree`, as its ready file describes it (the first edge)."""

    tree: Tree
    driver: ManagedProcess
    info: dict[str, Any]
    ca_file: Path
    known_hosts: Path
    admin_secret_file: Path
    edge_pid: int
    edge_log: Path
    https_url: str
    ssh_address: str | None

    @classmethod
    def from_ready(cls, tree: Tree, driver: ManagedProcess, info: dict[str, Any]) -> TreeNet:
        edge = info["edges"][0]
        net = cls(
            tree=tree,
            driver=driver,
            info=info,
            ca_file=Path(info["ca_file"]),
            known_hosts=Path(info["known_hosts"]),
            admin_secret_file=Path(info["admin_secret_file"]),
            edge_pid=int(edge["pid"]),
            edge_log=Path(edge["log_path"]),
            https_url=str(edge["ready"]["https_url"]).rstrip("/"),
            ssh_address=edge["ready"].get("ssh_address"),
        )
        net.check_runs_tree()
        return net

    def check_runs_tree(self) -> None:
        """The edge and nodes run `tree`'s code: `python -m` imports from the working
        directory first, so each server's cwd must be the tree and its interpreter the
        tree's (a mix-up here would compare a tree with itself)."""
        for pid in [self.edge_pid, *(int(n["pid"]) for n in self.info["nodes"])]:
            proc = psutil.Process(pid)
            cwd, exe = Path(proc.cwd()), proc.cmdline()[0]
            if cwd != self.tree.root or Path(exe) != self.tree.python:
                raise RuntimeError(
                    f"{self.tree.label} devnet: pid {pid} runs {exe} in {cwd}, not "
                    f"{self.tree.python} in {self.tree.root}"
                )

    @property
    def admin_secret(self) -> str:
        """The nodes' credential, for direct clones if a node asks for one."""
        return self.admin_secret_file.read_text().strip()

    @property
    def ssh_url(self) -> str | None:
        """`ssh://git@127.0.0.1:PORT` if the edge has an SSH front."""
        port = self.ssh_address.rpartition(":")[2] if self.ssh_address else None
        return f"ssh://git@127.0.0.1:{port}" if port else None

    def token(self, user: str) -> str:
        return str(self.info["tokens"][user])

    def node(self, node_id: str) -> NodeView:
        for n in self.info["nodes"]:
            if n["node_id"] == node_id:
                url = str(n["ready"]["http_url"]).rstrip("/")
                return NodeView(node_id, n["region"], int(n["pid"]), url, Path(n["volume_dir"]))
        raise LookupError(f"{self.tree.label} devnet has no node {node_id}")

    def edge_log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.edge_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextmanager
def running_devnet(
    tree: Tree,
    work_dir: Path,
    users: Sequence[str],
    edge_config: Mapping[str, Mapping[str, Any]] | None = None,
    tls_nodes: Sequence[tuple[str, str]] = (),
) -> Iterator[TreeNet]:
    """`tree`'s devnet in `work_dir`, with a token for each of `users`; stopped on exit.

    `edge_config` (`{table: {key: value}}`) is merged into the edge's config, which
    then restarts on it; `tls_nodes` (node id, region) are more nodes serving HTTPS,
    started last (bench/tree_devnet.py)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ready = work_dir / "tree-devnet.ready.json"
    argv = [str(tree.python), str(DRIVER), "--tree", str(tree.root)]
    argv += ["--work-dir", str(work_dir / "devnet"), "--ready-file", str(ready)]
    argv += [x for user in users for x in ("--user", user)]
    argv += ["--edge-config", json.dumps(edge_config)] if edge_config else []
    argv += [x for node_id, region in tls_nodes for x in ("--tls-node", f"{node_id}:{region}")]
    # PYTHONPATH too: whatever the caller's environment says, `-m edge.cli`
    # in the driver's children must import the tree's packages.
    driver = spawn(f"devnet-{tree.label}", argv, work_dir, env={"PYTHONPATH": str(tree.root)})
    try:
        wait_until(driver, ready.exists, START_TIMEOUT_S, "ready file")
        yield TreeNet.from_ready(tree, driver, json.loads(ready.read_text()))
    finally:
        driver.stop(STOP_TIMEOUT_S)


@contextmanager
def running_devnets(
    trees: Sequence[Tree], work_dir: Path, users: Sequence[str]
) -> Iterator[list[TreeNet]]:
    """One devnet per tree (in `work_dir/<label>`), all stopped on exit."""
    with ExitStack() as stack:
        yield [stack.enter_context(running_devnet(t, work_dir / t.label, users)) for t in trees]
