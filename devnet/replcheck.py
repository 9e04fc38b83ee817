"""Check a replicated repository after a fault run: nothing acknowledged was lost,
every replica equals the consensus, and every copy is a sound git repository.

    python -m devnet.replcheck --etcd http://127.0.0.1:2379 --repo alice/hello \\
        --acks acks.jsonl --volume /srv/volumes/fra-1 --volume /srv/volumes/lax-1 ...

Run it by hand on a real cluster once pushes have stopped and every replica says
`in-sync` (`gitedge repo where`), on a host that can read the volumes. `--acks` is
a JSON-lines file, one line per push the client saw succeed, in the order they
were acknowledged:

    {"ref": "refs/heads/main", "commit": "<sha>", "forced": false, "acked_at": 12.3,
     "started_at": 12.1, "outcome": "acked"}

(`acked_at`, `started_at`: any clock all pushers share, e.g. time.monotonic() on
one host; `started_at` is optional and defaults to `acked_at`.) `outcome` is
optional: "acked" (the default) or "unknown", for a push whose client got an
error that may hide a success (its node died after the vote's txn, a dropped
connection): such a push is not checked, but as a forced push it may have
removed commits.

The checks:

1. The consensus (newest snapshot + log from etcd, routing/snapshots.py) adds
   up to the state's checksum.
2. Every acknowledged push is in the history: its commit is reachable from the
   ref's consensus value, unless a forced push to that ref that does not contain
   it may have been voted after it: one acknowledged (or of unknown outcome)
   after this push started (the rule excuses rather than accuses).
3. Every replica's refs (outside refs/gitedge/) equal the consensus refs.
4. `git fsck` is clean on every replica, and each holds every consensus tip.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from routing import consensus as cons
from routing import snapshots
from routing.etcd import EtcdClient, EtcdError
from routing.model import RepoName
from routing.schema import DEFAULT_PREFIX, Keys

ACKED, UNKNOWN = "acked", "unknown"


@dataclass(frozen=True)
class Ack:
    ref: str
    commit: str
    forced: bool
    acked_at: float
    started_at: float | None = None  # None: acked_at
    outcome: str = ACKED  # or UNKNOWN: an error that may hide a success

    @property
    def start(self) -> float:
        return self.acked_at if self.started_at is None else self.started_at


@dataclass
class Report:
    generation: int = 0
    consensus: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked_acks: int = 0
    excused_acks: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        head = (
            f"generation {self.generation}, {len(self.consensus)} refs; "
            f"{self.checked_acks} acknowledged pushes checked, {self.excused_acks} excused "
            "by a later forced push"
        )
        if self.ok:
            return f"OK: {head}"
        return "\n".join([f"FAILED: {head}", *(f"  - {p}" for p in self.problems)])


def load_acks(path: Path) -> list[Ack]:
    """The JSON-lines file; ValueError naming the line for anything malformed."""
    acks = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            started = obj.get("started_at")
            ack = Ack(
                str(obj["ref"]),
                str(obj["commit"]),
                bool(obj["forced"]),
                float(obj["acked_at"]),
                None if started is None else float(started),
                str(obj.get("outcome", ACKED)),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{path}:{number}: not an acknowledged push ({exc!r})") from None
        if ack.outcome not in (ACKED, UNKNOWN) or not ack.ref.startswith("refs/"):
            raise ValueError(f"{path}:{number}: bad ref or outcome")
        acks.append(ack)
    return acks


async def read_consensus(
    etcd: EtcdClient, keys: Keys, name: RepoName
) -> tuple[int, dict[str, str]]:
    """The generation and refs etcd agrees on; ValueError if they do not add up."""
    kv = await etcd.get(keys.repl_state(name))
    state = cons.ConsensusState() if kv is None else cons.decode_state(kv.value, kv.mod_revision)
    listed = await etcd.range(keys.refs_repo(name), prefix=True)
    history = snapshots.parse_history(keys, name, ((k.key, k.value) for k in listed.kvs))
    refs = history.refs()
    if cons.checksum(refs) != state.checksum or history.generation != state.generation:
        raise ValueError(
            f"consensus log at generation {history.generation} does not add up to the state "
            f"(generation {state.generation}, checksum {state.checksum}); pushes still running?"
        )
    return state.generation, refs


_GIT_ENV = {"PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent"}


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_GIT_ENV,
    )


def replica_refs(repo: Path) -> dict[str, str]:
    out = _git(repo, "for-each-ref", "--format=%(objectname) %(refname)").stdout
    refs = {}
    for line in out.splitlines():
        oid, _, ref = line.partition(" ")
        if not ref.startswith(cons.INTERNAL_REFS):
            refs[ref] = oid
    return refs


def check_acks(acks: Sequence[Ack], consensus: dict[str, str], repo: Path, report: Report) -> None:
    def contains(tip: str, commit: str) -> bool:
        return _git(repo, "merge-base", "--is-ancestor", commit, tip).returncode == 0

    for ack in acks:
        if ack.outcome != ACKED:
            continue
        # Only a forced push that may have been voted after it and dropped the
        # commit can excuse it.
        later_force = any(
            f.forced
            and f.ref == ack.ref
            and f is not ack
            and f.acked_at > ack.start
            and not contains(f.commit, ack.commit)
            for f in acks
        )
        if later_force:
            report.excused_acks += 1
            continue
        report.checked_acks += 1
        tip = consensus.get(ack.ref)
        if tip is None:
            report.problems.append(f"acknowledged {ack.commit} on {ack.ref}: the ref is gone")
            continue
        if not contains(tip, ack.commit):
            report.problems.append(
                f"acknowledged {ack.commit} on {ack.ref} is not reachable from its tip {tip}"
            )


def check_replica(volume: Path, name: RepoName, consensus: dict[str, str], report: Report) -> None:
    repo = volume / name.bare_dir
    if not repo.is_dir():
        report.problems.append(f"{volume}: holds no copy of {name}")
        return
    refs = replica_refs(repo)
    if refs != consensus:
        differing = sorted(r for r in set(refs) | set(consensus) if refs.get(r) != consensus.get(r))
        report.problems.append(f"{volume}: {len(differing)} refs differ, e.g. {differing[:3]}")
    fsck = _git(repo, "fsck", "--no-progress", "--no-dangling")
    if fsck.returncode != 0:
        report.problems.append(f"{volume}: git fsck failed: {fsck.stderr.strip()[:500]}")
    # One cat-file for all tips (a repository may have 10,000 refs).
    tips = sorted(set(consensus.values()))
    probe = subprocess.run(
        ["git", "--git-dir", str(repo), "cat-file", "--batch-check=%(objectname)"],
        input="".join(f"{oid}\n" for oid in tips),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=_GIT_ENV,
    )
    missing = {line.split()[0] for line in probe.stdout.splitlines() if line.endswith(" missing")}
    for ref, oid in sorted(consensus.items()):
        if oid in missing or probe.returncode != 0:
            report.problems.append(f"{volume}: lacks the consensus tip {oid} of {ref}")


async def check(
    etcd: EtcdClient, keys: Keys, name: RepoName, acks: Sequence[Ack], volumes: Sequence[Path]
) -> Report:
    """All four checks; `volumes` are the replicas' volume directories."""
    report = Report()
    try:
        report.generation, report.consensus = await read_consensus(etcd, keys, name)
    except ValueError as exc:
        report.problems.append(str(exc))
        return report
    holders = [v for v in volumes if (v / name.bare_dir).is_dir()]
    if not holders:
        report.problems.append(f"no volume given holds {name}")
        return report
    check_acks(acks, report.consensus, holders[0] / name.bare_dir, report)
    for volume in volumes:
        check_replica(volume, name, report.consensus, report)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devnet.replcheck", description=__doc__)
    p.add_argument("--etcd", action="append", required=True, help="etcd endpoint (repeatable)")
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--repo", required=True, help="owner/name")
    p.add_argument("--acks", type=Path, help="JSON lines of acknowledged pushes")
    p.add_argument("--volume", type=Path, action="append", default=[], required=True)
    args = p.parse_args(argv)
    try:
        acks = load_acks(args.acks) if args.acks else []
        name = RepoName.parse(args.repo)
    except (OSError, ValueError) as exc:
        print(f"replcheck: {exc}", file=sys.stderr)
        return 2

    async def run() -> Report:
        async with EtcdClient(args.etcd) as etcd:
            return await check(etcd, Keys(args.prefix), name, acks, args.volume)

    try:
        report = trio.run(run)
    except (EtcdError, ValueError) as exc:
        print(f"replcheck: cannot read the consensus: {exc}", file=sys.stderr)
        return 2
    print(report.text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
