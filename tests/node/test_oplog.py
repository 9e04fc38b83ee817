"""The node's log line per git request (node/metrics.py `GitOpLog`), from a real node
serving real git: the fields an operator reads, in JSON and in text, and never the
edge's credential.

The same records from a node process, for SSH sessions and HTTPS through an edge,
are checked in tests/e2e/test_repl_metrics.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
import trio

from plumbing.logsafe import JsonLineFormatter, OneLineFormatter
from tests.node.conftest import ADMIN_SECRET, EDGE_AUTH, RunningNode
from tests.node.gitutil import create_repo, git

Fields = dict[str, object]


def _operations(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "node.gitops"]


async def _logged(caplog: pytest.LogCaptureFixture, last_repo: str) -> list[logging.LogRecord]:
    """The operation records once one for `last_repo` is there: the node logs a
    request after its last byte went out, which may be just after the client read it."""
    with trio.fail_after(5):
        while True:
            records = _operations(caplog)
            if any(_fields(r)["repo"] == last_repo for r in records):
                return records
            await trio.sleep(0.01)


def _fields(record: logging.LogRecord) -> Fields:
    fields: Fields = record.__dict__["fields"]
    return fields


async def test_each_git_request_has_one_line_with_what_the_edge_forwarded(
    node: RunningNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.gitops")
    assert (await create_repo(node.url, "alice/oplog")).status_code == 201
    headers = {
        **EDGE_AUTH,
        "git-protocol": "version=2",
        "gitedge-user": "alice",
        "x-forwarded-for": "198.51.100.7, 203.0.113.9",
    }
    url = f"{node.repo_url('alice/oplog')}/info/refs?service=git-upload-pack"
    with trio.fail_after(20):
        async with httpx.AsyncClient() as client:
            answer = await client.get(url, headers=headers)
    assert answer.status_code == 200
    [record] = await _logged(caplog, "alice/oplog")
    fields = _fields(record)
    assert fields["event"] == "git_operation"
    assert fields["user"] == "alice"
    assert fields["repo"] == "alice/oplog"
    assert fields["service"] == "git-upload-pack"
    assert fields["kind"] == "info_refs"
    assert fields["protocol"] == "2"
    assert fields["client"] == "203.0.113.9"  # the last hop: the address the edge saw
    assert str(fields["peer"]).startswith("127.0.0.1:")
    assert fields["result"] == "ok" and fields["status"] == 200 and fields["exit"] == 0
    # The whole exchange on the wire, heads included.
    assert isinstance(fields["bytes_in"], int) and fields["bytes_in"] > 100
    out = fields["bytes_out"]
    assert isinstance(out, int) and len(answer.content) < out < len(answer.content) + 1000
    assert isinstance(fields["duration_s"], float)

    json_line = JsonLineFormatter().format(record)
    assert json.loads(json_line)["client"] == "203.0.113.9"
    text_line = OneLineFormatter("%(name)s: %(message)s").format(record)
    assert text_line.startswith("node.gitops: git git-upload-pack alice/oplog ok user=alice ")
    assert " kind=info_refs " in text_line and " status=200 " in text_line
    for line in (json_line, text_line):
        assert "\n" not in line
        assert ADMIN_SECRET not in line


async def test_a_push_and_a_clone_log_their_bytes_and_an_unknown_repo_is_refused(
    node: RunningNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="node.gitops")
    home = tmp_path / "home"
    assert (await create_repo(node.url, "alice/bytes")).status_code == 201
    work = tmp_path / "work"
    with trio.fail_after(30):
        await git("init", "-q", "-b", "main", str(work), cwd=tmp_path, home=home)
        (work / "data.bin").write_bytes(bytes(range(256)) * 2000)
        await git("add", ".", cwd=work, home=home)
        await git("commit", "-q", "-m", "first", cwd=work, home=home)
        await git("push", "-q", node.repo_url("alice/bytes"), "main", cwd=work, home=home)
        await git("clone", "-q", node.repo_url("alice/bytes"), "clone", cwd=tmp_path, home=home)
        async with httpx.AsyncClient() as client:
            missing = f"{node.repo_url('alice/nothing')}/info/refs?service=git-upload-pack"
            assert (await client.get(missing, headers=EDGE_AUTH)).status_code == 404
    ops = [_fields(r) for r in await _logged(caplog, "alice/nothing")]
    push = [f for f in ops if f["service"] == "git-receive-pack" and f["kind"] == "rpc"]
    clone = [f for f in ops if f["service"] == "git-upload-pack" and f["kind"] == "rpc"]
    assert len(push) == 1 and len(clone) >= 1
    assert isinstance(push[0]["bytes_in"], int) and push[0]["bytes_in"] > 1000  # the pack
    assert sum(int(str(f["bytes_out"])) for f in clone) > 1000
    assert push[0]["user"] == "-" and push[0]["client"] == "-"  # nothing forwarded
    assert all(f["result"] == "ok" for f in push + clone)
    [refused] = [f for f in ops if f["repo"] == "alice/nothing"]
    assert refused["result"] == "refused" and refused["status"] == 404 and refused["exit"] == "-"
