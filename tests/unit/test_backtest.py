"""``vitals backtest``: scores as ``vitals replay --as-of`` gives them, the report,
the history database path, and one-line errors."""

from __future__ import annotations

import asyncio
import random
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from schemas.events import parse_timestamp
from schemas.outputs import format_utc
from service.backtest.outcomes import Outcomes
from service.backtest.snapshots import (
    ScoredHistory,
    replay_scores,
    scan_events,
    stored_scores,
)
from service.cli.backtest import backtest as backtest_cli
from service.cli.replay import replay as replay_cli
from service.history.db import create_engine, migrate
from service.history.models import ScoreHistoryRow
from service.history.sink import HistoryWriter
from service.model.account_state import AccountState
from service.model.scorecard import default_scorecard
from service.model.scoring import on_event, on_timer
from service.processing.replay import InvalidLine, decode_lines
from service.runtime.settings import Settings
from service.tools.simulate import history_jsonl

DAY = 86_400_000
END = 1_717_200_000_000  # 2024-06-01T00:00:00Z
ACCOUNTS, DAYS = 160, 75


@pytest.fixture(scope="module")
def events_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("backtest") / "events.jsonl"
    with path.open("wb") as out:
        for lines, _, _ in history_jsonl(ACCOUNTS, DAYS, END, seed=11):
            out.write(lines)
    return path


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def run(*args: str) -> Result:
    return CliRunner().invoke(backtest_cli, list(args))


def report_of(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = orjson.loads(result.stdout)
    return report


def scored(path: Path, dates: list[int]) -> tuple[ScoredHistory, Outcomes]:
    scan = scan_events(lines_of(path))
    outcomes = scan.outcomes
    return (
        replay_scores(
            lambda: lines_of(path),
            default_scorecard(),
            dates,
            outcomes.churned_accounts(),
            outcomes.churn_known(90 * DAY),
            scan=scan,
        ),
        outcomes,
    )


def replay_as_of(path: Path, date: int) -> dict[str, dict[str, Any]]:
    result = CliRunner().invoke(replay_cli, [str(path), "--as-of", format_utc(date)])
    assert result.exit_code == 0, result.stderr
    return {
        score["account_id"]: score
        for score in (orjson.loads(line) for line in result.stdout.splitlines())
    }


def assert_same_as_replay(history: ScoredHistory, path: Path, dates: list[int]) -> None:
    for date in dates:
        expected = replay_as_of(path, date)
        got = {s.account_id: s for s in history.snapshots if s.at == date}
        assert got, date
        # Every account the replay scores, except those already churned, is there.
        assert set(got) <= set(expected)
        for account_id, snapshot in got.items():
            score = expected[account_id]
            assert (snapshot.score, snapshot.bucket, snapshot.grade) == (
                score["score"],
                score["bucket"],
                score["grade"],
            ), (account_id, date)
            assert [(c.metric, c.value) for c in snapshot.components] == [
                (c["metric"], c["value"]) for c in score["components"]
            ]
            assert snapshot.low_confidence == score["low_confidence"]


DATES = [END - 40 * DAY, END - 33 * DAY + 7, END - 11 * DAY, END - 1]


def test_scores_are_those_of_replay_as_of(events_file: Path) -> None:
    history, outcomes = scored(events_file, DATES)
    assert outcomes.churned_accounts(), "the simulator's history has churners"
    assert not history.notes
    assert_same_as_replay(history, events_file, DATES)
    churned = outcomes.churned_accounts()
    after = [s for s in history.snapshots if s.account_id in churned]
    assert all(s.at < churned[s.account_id] for s in after)


def test_a_file_out_of_event_time_order_is_replayed_per_date(
    events_file: Path, tmp_path: Path
) -> None:
    lines = lines_of(events_file)
    rng = random.Random(1)
    for _ in range(len(lines) // 20):  # swap some neighbours
        i = rng.randrange(len(lines) - 3)
        lines[i], lines[i + 2] = lines[i + 2], lines[i]
    for date in DATES[:2]:  # and the two events around two of the dates
        i = max(k for k, line in enumerate(lines) if orjson.loads(line)["occurred_at"] <= date)
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    path = tmp_path / "shuffled.jsonl"
    path.write_bytes(b"".join(lines))
    history, _ = scored(path, DATES)
    assert history.notes and "not in event-time order" in history.notes[0]
    assert_same_as_replay(history, path, DATES)


def test_the_report(events_file: Path, tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    result = run(
        str(events_file), "--horizon", "60d", "--every", "5d", "--warmup", "20d",
        "-k", "5", "--bootstrap", "50", "--html", str(html),
    )  # fmt: skip
    report = report_of(result)
    assert report["settings"]["horizon_days"] == 60
    dates = [parse_timestamp(d) for d in report["settings"]["dates"]]
    assert dates == list(range(dates[0], dates[-1] + 1, 5 * DAY))
    assert dates[0] % DAY == 0 and dates[-1] < END
    (figures,) = report["scorecards"]
    sample = figures["sample"]
    assert sample["churned_snapshots"] > 0 and sample["retained_snapshots"] > 0
    auc = figures["roc_auc"]
    assert 0.5 < auc["value"] < 1.0  # meaningful, not perfect
    assert auc["ci"][0] <= auc["value"] <= auc["ci"][1]
    assert figures["pr_auc"]["value"] > figures["pr_auc"]["baseline"]
    assert [row["bucket"] for row in figures["churn_rate_by_bucket"]] == ["green", "yellow", "red"]
    assert sum(row["snapshots"] for row in figures["churn_rate_by_bucket"]) == sample["snapshots"]
    assert len(figures["lift_by_decile"]) == 10
    assert figures["precision_at_k"]["k"] == 5
    assert figures["lead_time"]["red"]["accounts"] >= 1
    assert {m["metric"] for m in figures["metrics"]} >= {"days_since_last_activity", "nps_90d"}
    assert "split" in report["method"] and "dependence" in report["method"]
    text = html.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    assert "vitals backtest: default v2: ROC AUC" in result.stderr


def test_a_scorecard_that_ranks_churners_last_gets_an_auc_under_one_half(
    events_file: Path, tmp_path: Path
) -> None:
    # The default's most predictive metrics, each normalised the wrong way round.
    backwards = tmp_path / "backwards.yaml"
    backwards.write_text(
        textwrap.dedent(
            """\
            name: backwards
            version: 1
            rescore_interval_minutes: 1440
            metrics:
              active_seat_ratio_30d:
                source: active_seat_ratio
                params: {days: 30}
                normalise: {poor: 0.8, good: 0.2}
              nps_90d:
                source: nps
                params: {days: 90}
                normalise: {poor: 50, good: -20}
              kpi_trend_newsletters_14d:
                source: kpi_trend
                params: {metric: newsletters_sent, days: 14}
                normalise: {poor: 0.1, good: -0.5}
            groups:
              all:
                weight: 1
                metrics: {active_seat_ratio_30d: 1, nps_90d: 1, kpi_trend_newsletters_14d: 1}
            buckets: {green: 70, yellow: 45}
            """
        )
    )
    report = report_of(
        run(str(events_file), "--horizon", "60d", "--against", str(backwards), "--bootstrap", "0")
    )
    default, other = report["scorecards"]
    assert other["scorecard"]["name"] == "backwards"
    assert other["roc_auc"]["value"] < 0.5 < default["roc_auc"]["value"]
    assert other["roc_auc"]["ci"] is None  # --bootstrap 0
    (metric,) = [m for m in other["metrics"] if m["metric"] == "nps_90d"]
    assert metric["verdict"] == "weighed the wrong way round"


def test_outcomes_file_adds_to_the_events(events_file: Path, tmp_path: Path) -> None:
    crm = tmp_path / "crm.jsonl"
    first = min(s for s in replay_as_of(events_file, END - DAY))
    crm.write_bytes(
        orjson.dumps({"account_id": first, "outcome": "churned", "date": "2024-05-20"}) + b"\n"
    )
    plain = report_of(run(str(events_file), "--horizon", "30d", "--bootstrap", "0"))
    more = report_of(
        run(str(events_file), "--horizon", "30d", "--bootstrap", "0", "--outcomes", str(crm))
    )
    assert more["outcomes"]["churned_accounts"] == plain["outcomes"]["churned_accounts"] + 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give EVENTS to replay, or --from-db URL"),
        (["{events}", "--horizon", "ninety"], "--horizon: expected a duration"),
        (["{events}", "--every", "0d"], "--every: must be more than zero"),
        (["{events}", "--start", "tomorrow"], "--start: timestamp string must be RFC 3339"),
        (["{events}", "--outcomes", "{bad}"], "bad.jsonl line 2: outcome must be"),
        (["{events}", "--outcomes", "/nonexistent/crm.jsonl"], "cannot read /nonexistent"),
        (["/nonexistent/events.jsonl"], "cannot read /nonexistent/events.jsonl"),
        (["{events}", "--warmup", "400d"], "no snapshot date"),
        (["{events}", "--scorecard", "{bad}"], "bad.jsonl"),
        (["{quiet}"], "no churn to judge the score by"),
        (["--from-db", "sqlite+aiosqlite:///{db}", "--outcomes", "{crm}"], "holds no scores"),
        (["{events}", "--from-db", "mysql://x/y", "--against", "{bad}"], "--against needs"),
        (["--from-db", "mysql://x/y", "--outcomes", "{crm}"], "unsupported database"),
    ],
)
def test_errors_are_one_line(
    events_file: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b'{"account_id": "a", "outcome": "churned", "date": 0}\n'
        b'{"account_id": "a", "outcome": "maybe", "date": 0}\n'
    )
    crm = tmp_path / "crm.jsonl"
    crm.write_bytes(b'{"account_id": "a", "outcome": "churned", "date": 0}\n')
    quiet = tmp_path / "quiet.jsonl"
    quiet.write_bytes(b"".join(line for line in lines_of(events_file) if b'"contract"' not in line))
    db = tmp_path / "empty.db"
    asyncio.run(migrate(f"sqlite+aiosqlite:///{db}"))
    names = {"events": events_file, "bad": bad, "crm": crm, "quiet": quiet, "db": db}
    result = run(*(arg.format(**names) for arg in args))
    assert result.exit_code != 0
    assert message in result.stderr
    error_lines = [
        line for line in result.stderr.splitlines() if line.startswith(("vitals: error:", "Error"))
    ]
    assert len(error_lines) == 1 and "Traceback" not in result.stderr


def test_help() -> None:
    result = run("--help")
    assert result.exit_code == 0
    assert "--from-db" in result.stdout and "--against" in result.stdout


# ------------------------------------------------------------------ history


async def fill_history(path: Path, url: str) -> None:
    """What the stream publishes for these events, through the history sink's writer."""
    await migrate(url)
    engine = create_engine(url)
    settings = Settings(topic_prefix="vitals.")
    writer = HistoryWriter(engine, settings, daily_snapshot=True, now_ms=lambda: END)
    card = default_scorecard()
    states: dict[str, AccountState] = {}
    watermark: int | None = None
    batch: list[Any] = []

    class Rec:
        def __init__(self, value: bytes, key: str, offset: int) -> None:
            self.topic, self.partition, self.offset = settings.scores_topic, 0, offset
            self.key, self.value = key.encode(), value

    async def publish(step: Any, account_id: str) -> None:
        data = step.score_json()
        if data is not None:
            batch.append(Rec(data, account_id, len(batch)))
        if len(batch) >= 5000:
            await writer.write(batch)
            batch.clear()

    for _, event in decode_lines(lines_of(path)):
        assert not isinstance(event, InvalidLine)
        if watermark is not None and event.occurred_at // DAY > watermark // DAY:
            for account_id, state in states.items():  # the worker's timer
                await publish(on_timer(state, watermark, card, now_ms=0), account_id)
        state = states.setdefault(event.account_id, AccountState.new(event.account_id))
        await publish(on_event(state, event, card, watermark=watermark, now_ms=0), event.account_id)
        watermark = event.occurred_at if watermark is None else max(watermark, event.occurred_at)
    await writer.write(batch)
    await engine.dispose()


def test_from_db_takes_the_newest_stored_score_at_each_date(
    events_file: Path, tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'history.db'}"
    asyncio.run(fill_history(events_file, url))
    outcomes = scan_events(lines_of(events_file)).outcomes
    churns = outcomes.churned_accounts()
    history = stored_scores(url, DATES, churns, outcomes.churn_known(90 * DAY))
    assert history.source == "history database" and history.scorecard == ("default", "2")

    async def stored() -> list[Any]:
        engine = create_engine(url)
        async with engine.connect() as connection:
            t = ScoreHistoryRow
            query = select(t.account_id, t.as_of, t.score, t.bucket)
            rows = (await connection.execute(query)).all()
        await engine.dispose()
        return list(rows)

    rows = asyncio.run(stored())
    for date in DATES:
        newest: dict[str, Any] = {}
        for row in rows:
            if row.as_of <= date and (
                row.account_id not in newest or row.as_of > newest[row.account_id].as_of
            ):
                newest[row.account_id] = row
        got = {s.account_id: s for s in history.snapshots if s.at == date}
        expected = {a: r for a, r in newest.items() if churns.get(a, date + 1) > date}
        assert set(got) == set(expected)
        for account_id, snapshot in got.items():
            row = expected[account_id]
            assert (snapshot.score, snapshot.bucket) == (row.score, row.bucket)
    # Every churned account has its stored score from before the churn became known.
    assert set(history.before_churn) == {a for a in churns if any(r.account_id == a for r in rows)}
    # The CLI gives a report like the replay's: the stored scores lag by at most a day.
    by_db = report_of(
        run("--from-db", url, str(events_file), "--horizon", "60d", "--bootstrap", "0")
    )
    by_replay = report_of(run(str(events_file), "--horizon", "60d", "--bootstrap", "0"))
    assert by_db["source"]["from_db"] == url
    db_auc = by_db["scorecards"][0]["roc_auc"]["value"]
    assert abs(db_auc - by_replay["scorecards"][0]["roc_auc"]["value"]) < 0.05
