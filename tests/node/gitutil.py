"""Running the real git CLI from trio tests, and watching for leftover git processes."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import trio

from tests.node.conftest import ADMIN_SECRET


def git_env(home: Path) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
        # What the edge sends on every request: nodes serve git to edges only.
        **git_config_env({"http.extraHeader": f"Authorization: Bearer {ADMIN_SECRET}"}),
    }


def git_config_env(settings: dict[str, str]) -> dict[str, str]:
    """git config settings as environment variables (git >= 2.31: GIT_CONFIG_COUNT)."""
    env = {"GIT_CONFIG_COUNT": str(len(settings))}
    for i, (key, value) in enumerate(settings.items()):
        env[f"GIT_CONFIG_KEY_{i}"] = key
        env[f"GIT_CONFIG_VALUE_{i}"] = value
    return env


async def git(*args: str, cwd: Path, home: Path, timeout: float = 20) -> str:
    """Run git (in a subprocess, so the in-process node keeps serving); stdout as text."""
    with trio.fail_after(timeout):
        result = await trio.run_process(
            ["git", *args],
            cwd=cwd,
            env=git_env(home),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if result.returncode != 0:
        raise AssertionError(
            f"git {' '.join(args)} exited {result.returncode}:\n"
            + result.stderr.decode(errors="replace")
        )
    return result.stdout.decode().strip()


async def create_repo(base_url: str, name: str, secret: str = ADMIN_SECRET) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"{base_url}/_gitedge/repos",
            json={"name": name},
            headers={"authorization": f"Bearer {secret}"},
        )


def pkt(line: str | bytes) -> bytes:
    data = line.encode() if isinstance(line, str) else line
    return b"%04x" % (len(data) + 4) + data


def git_descendants(root: int | None = None) -> list[int]:
    """Pids of `git*` processes below `root` (default: this process), from /proc."""
    parent_of: dict[int, int] = {}
    name_of: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited while we looked
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        head, _, rest = stat.rpartition(")")
        name_of[int(entry)] = head.partition("(")[2]
        parent_of[int(entry)] = int(rest.split()[1])
    root = os.getpid() if root is None else root
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parent_of.items():
            if ppid == parent:
                frontier.append(pid)
                if name_of[pid].startswith("git"):
                    found.append(pid)
    return found


async def wait_no_git_children(timeout: float) -> list[int]:
    """Wait until no git process is left below us; return what is left at the deadline."""
    with trio.move_on_after(timeout):
        while git_descendants():
            await trio.sleep(0.05)
    return git_descendants()
