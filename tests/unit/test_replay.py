"""``vitals replay``: the model over a JSON-lines file, with invalid lines."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from schemas.events import Event, event_to_json
from schemas.outputs import BucketChange, HealthScore
from service.cli_replay import replay as replay_cli
from service.replay import replay
from service.scorecard import default_scorecard
from tests.unit.test_scoring import SEATS_CARD, at, event


def _line(e: Event) -> bytes:
    return orjson.dumps(event_to_json(e))


def _events() -> list[Event]:
    # Two accounts, "zeta" first in the file; zeta's seats fall from 90 to 30.
    return [
        event("account", at(0), "zeta", seats=90),
        event("account", at(0, 10), "alpha", seats=80, lifecycle_stage="onboarding"),
        event("login", at(1), "alpha", user_id="u1"),
        event("account", at(2), "zeta", seats=30),
        event("login", at(3), "zeta", user_id="u9", event_id="dup-1"),
    ]


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    e = _events()
    lines = [
        _line(e[0]),
        _line(e[1]),
        b"{not json",  # line 3
        _line(e[2]),
        b"",  # blank: ignored
        b'{"event_id": "x", "type": "login", "occurred_at": 0}',  # line 6: no account_id
        _line(e[3]),
        b'{"event_id": "y", "account_id": "zeta", "type": "logout", "occurred_at": 0}',  # line 8
        b'{"event_id": "z", "account_id": "zeta", "type": "account", "occurred_at": 0, '
        b'"seats": -1}',  # line 9
        _line(e[4]),
        _line(e[4]),  # line 11: a duplicate
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture
def seats_card(tmp_path: Path) -> Path:
    path = tmp_path / "seats.yaml"
    path.write_text(textwrap.dedent(SEATS_CARD))
    return path


def run(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(replay_cli, list(args), input=stdin)


def _scores(result: Result) -> list[HealthScore]:
    return [HealthScore.model_validate_json(line) for line in result.stdout.splitlines()]


def _without_computed_at(result: Result) -> list[HealthScore]:
    return [s.model_copy(update={"computed_at": "-"}) for s in _scores(result)]


def _summary(result: Result) -> dict[str, Any]:
    last = result.stderr.strip().splitlines()[-1]
    summary: dict[str, Any] = orjson.loads(last)["summary"]
    return summary


def test_replay_prints_one_score_per_account_and_reports_invalid_lines(
    events_file: Path, seats_card: Path, tmp_path: Path
) -> None:
    changes = tmp_path / "changes.jsonl"
    result = run(str(events_file), "--scorecard", str(seats_card), "--changes", str(changes))
    assert result.exit_code == 0, result.output
    scores = _scores(result)
    assert [s.account_id for s in scores] == ["alpha", "zeta"]
    alpha, zeta = scores
    assert (alpha.score, alpha.bucket, alpha.stage) == (80.0, "green", "onboarding")
    assert (zeta.score, zeta.bucket, zeta.stage) == (30.0, "red", "unknown")
    assert alpha.as_of == zeta.as_of == "2024-03-07T09:00:00Z"  # default: latest event
    assert alpha.scorecard.name == "seats"

    errors = result.stderr.strip().splitlines()[:-1]
    assert [line.split(": ")[1:3] for line in errors] == [
        ["line 3", "not_json"],
        ["line 6", "missing_field"],
        ["line 8", "unknown_type"],
        ["line 9", "invalid_field"],
    ]
    assert "seats" in errors[3]
    assert _summary(result) == {
        "lines": 11,
        "events": 6,
        "invalid": 4,
        "applied": 5,
        "duplicates": 1,
        "late": 0,
        "after_as_of": 0,
        "accounts": 2,
        "changes": 1,
        "as_of": "2024-03-07T09:00:00Z",
    }
    (change,) = [BucketChange.model_validate_json(x) for x in changes.read_bytes().splitlines()]
    assert (change.account_id, change.from_bucket, change.to_bucket) == ("zeta", "green", "red")
    assert (change.previous_score, change.score) == (90.0, 30.0)
    assert change.as_of == "2024-03-06T09:00:00Z"
    assert [d.metric for d in change.drivers] == ["seats"]


def test_as_of_takes_rfc3339_or_epoch_ms_and_skips_later_events(
    events_file: Path, seats_card: Path
) -> None:
    by_text = run(
        str(events_file), "--scorecard", str(seats_card), "--as-of", "2024-03-05T12:00:00+02:00"
    )
    by_ms = run(str(events_file), "--scorecard", str(seats_card), "--as-of", str(at(1, 10)))
    assert by_text.exit_code == by_ms.exit_code == 0
    assert _without_computed_at(by_text) == _without_computed_at(by_ms)
    zeta = _without_computed_at(by_ms)[1]
    assert (zeta.score, zeta.as_of) == (90.0, "2024-03-05T10:00:00Z")  # before the drop
    assert _summary(by_ms)["after_as_of"] == 3


def test_triggers_file_is_written_empty_with_a_note(events_file: Path, tmp_path: Path) -> None:
    triggers = tmp_path / "triggers.jsonl"
    result = run(str(events_file), "--triggers", str(triggers))
    assert result.exit_code == 0
    assert triggers.read_bytes() == b""
    assert "playbooks are not implemented yet" in result.stderr


def test_default_scorecard_and_stdin(events_file: Path) -> None:
    result = run("-", stdin=events_file.read_bytes())
    assert result.exit_code == 0, result.output
    scores = _scores(result)
    assert [s.scorecard.name for s in scores] == ["default", "default"]
    assert scores[0].stage == "onboarding"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as-of", "yesterday"], "--as-of: timestamp string must be RFC 3339"),
        (["--as-of", "2024-03-05T12:00:00"], "--as-of: timestamp string must be RFC 3339"),
        (["--as-of", "-5"], "--as-of: -5 is outside the supported time range"),
    ],
)
def test_bad_as_of_is_one_error_line(events_file: Path, args: list[str], message: str) -> None:
    result = run(str(events_file), *args)
    assert result.exit_code == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vitals: error: {message}")


def test_a_bad_scorecard_stops_the_replay_with_its_path(events_file: Path, tmp_path: Path) -> None:
    card = tmp_path / "bad.yaml"
    card.write_text("name: x\nversion: 1\nmetrics: {}\n")
    result = run(str(events_file), "--scorecard", str(card))
    assert result.exit_code == 1
    reason = "Dictionary should have at least 1 item after validation, not 0"
    assert result.stderr.strip() == f"vitals: error: {card}: metrics: {reason}"


def test_an_empty_file_scores_nothing(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"\n\nnot json\n")
    result = run(str(path))
    assert result.exit_code == 0 and result.stdout == ""
    assert "no valid events" in result.stderr
    assert _summary(result)["invalid"] == 1 and _summary(result)["as_of"] is None


def test_replay_counts_late_events_and_ticks_silent_accounts_to_as_of() -> None:
    card = default_scorecard()
    lines = [
        _line(event("login", at(100), "a", user_id="u")),
        _line(event("login", at(5), "a", user_id="old")),  # 95 days older: late
    ]
    result = replay(lines, card, as_of=at(130))
    assert (result.stats.applied, result.stats.late) == (1, 1)
    (score,) = result.scores
    assert score.as_of == "2024-07-12T09:00:00Z"
    assert score.bucket == "red"  # a month of silence
    assert [c.to_bucket for c in result.changes][-1] == "red"
