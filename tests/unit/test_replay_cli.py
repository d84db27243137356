"""``vitals replay`` on the command line: output paths checked before the run,
progress on stderr for long inputs (service/cli/replay.py)."""

from __future__ import annotations

from pathlib import Path

import orjson
from click.testing import CliRunner

from schemas import load_example
from service.cli.replay import replay, with_progress


def events(count: int) -> bytes:
    example = orjson.loads(load_example("events", "login"))
    lines = [orjson.dumps({**example, "event_id": f"e{i}"}) for i in range(count)]
    return b"\n".join(lines) + b"\n"


def test_an_unwritable_output_fails_before_the_replay(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "changes.jsonl"
    result = CliRunner().invoke(replay, ["-", "--changes", str(missing)], input=events(3))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"vitals: error: cannot write {missing}: No such file or directory"
    )
    # Before: the scores were printed, then the run failed on the changes file.
    assert result.stdout == "", "no score was computed"


def test_the_other_outputs_are_not_left_open_when_one_fails(tmp_path: Path) -> None:
    changes = tmp_path / "changes.jsonl"
    triggers = tmp_path / "missing" / "triggers.jsonl"
    args = ["-", "--changes", str(changes), "--triggers", str(triggers)]
    result = CliRunner().invoke(replay, args, input=events(3))
    assert result.exit_code == 1 and str(triggers) in result.stderr


def test_progress_is_reported_every_interval_with_the_share_read() -> None:
    lines = [b"x" * 99 + b"\n"] * 5000  # 500,000 bytes
    now = [0.0]
    reports: list[str] = []

    def clock() -> float:
        now[0] += 0.001  # a millisecond per call: a call per 1,000 lines
        return now[0]

    passed = list(with_progress(lines, 500_000, reports.append, interval_s=0.0015, clock=clock))
    assert passed == lines, "the lines pass through unchanged"
    # The clock moves 1 ms per 1,000 lines: a report every 2,000 lines.
    assert reports == [
        "vitals replay: 2,000 lines read (40%), 1,000,000 lines/s",
        "vitals replay: 4,000 lines read (80%), 1,000,000 lines/s",
    ]


def test_a_short_replay_prints_no_progress(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(events(10))
    result = CliRunner().invoke(replay, [str(path)])
    assert result.exit_code == 0
    assert "lines read" not in result.stderr
