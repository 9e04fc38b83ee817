"""devnet/replcheck's input: a malformed acknowledgements file or repository name
is a one-line error (exit 2), before any check runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from devnet.replcheck import ACKED, UNKNOWN, Ack, load_acks, main

SHA = "a" * 40


def test_acks_load_with_optional_start_and_outcome(tmp_path: Path) -> None:
    path = tmp_path / "acks.jsonl"
    path.write_text(
        f'{{"ref": "refs/heads/main", "commit": "{SHA}", "forced": false, "acked_at": 2}}\n\n'
        f'{{"ref": "refs/heads/x", "commit": "{SHA}", "forced": true, "acked_at": 3,'
        ' "started_at": 1.5, "outcome": "unknown"}\n'
    )
    first, second = load_acks(path)
    assert first == Ack("refs/heads/main", SHA, False, 2.0) and first.start == 2.0
    assert first.outcome == ACKED and second.outcome == UNKNOWN and second.start == 1.5


@pytest.mark.parametrize(
    "line",
    ["not json", '{"ref": "refs/heads/main"}', '{"ref": "main", "commit": "x", "forced": 1,'
     ' "acked_at": 1}', '{"ref": "refs/x", "commit": "x", "forced": 1, "acked_at": 1,'
     ' "outcome": "maybe"}', "[1]"],
)  # fmt: skip
def test_a_bad_line_is_named(tmp_path: Path, line: str) -> None:
    path = tmp_path / "acks.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=r"acks\.jsonl:1"):
        load_acks(path)


def test_the_cli_refuses_bad_input_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--etcd", "http://127.0.0.1:9", "--volume", str(tmp_path)]
    assert main([*base, "--repo", "no-slash"]) == 2
    (tmp_path / "bad.jsonl").write_text("{\n")
    assert main([*base, "--repo", "a/b", "--acks", str(tmp_path / "bad.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("replcheck: ") for line in err)
