"""History database: migrations, the sink's idempotent writes, retention and queries.

Every database test runs on SQLite and, when the server binaries are installed,
on PostgreSQL (``history_db_url``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from schemas.outputs import BucketChange, HealthScore, PlaybookTrigger, format_utc
from service.cli.db import db
from service.history import db as history_db
from service.history.db import (
    HistoryDbError,
    bucket_changes_for,
    create_engine,
    current_revision,
    head_revision,
    latest_bucket_counts,
    migrate,
    movers,
    pulses_for,
    score_history,
    triggers_for,
)
from service.history.models import (
    Base,
    BucketChangeRow,
    CsmPulseRow,
    PlaybookTriggerRow,
    ScoreHistoryRow,
)
from service.history.sink import (
    DAY_MS,
    HistoryWriter,
    ScorePoint,
    run_history_sink,
    should_store,
)
from service.runtime.settings import Settings

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
SETTINGS = Settings(topic_prefix="vitals.")
T0 = 1_715_299_200_000  # 2024-05-10T00:00:00Z
HOUR = 3_600_000
NOW = T0 + 400 * DAY_MS


def _example(name: str) -> dict[str, Any]:
    return dict(json.loads((EXAMPLES / name).read_text()))


@dataclass(frozen=True)
class Rec:
    topic: str
    value: bytes | None
    key: bytes | None = None
    partition: int = 0
    offset: int = 0


def score_msg(
    account: str, as_of: int, score: float, bucket: str = "yellow", grade: str = "C"
) -> Rec:
    msg = _example("outputs/health-score.json")
    msg.update(
        account_id=account,
        as_of=format_utc(as_of),
        computed_at=format_utc(as_of + 1234),
        score=score,
        bucket=bucket,
        grade=grade,
    )
    return Rec(SETTINGS.scores_topic, orjson.dumps(msg), account.encode())


def change_msg(account: str, as_of: int, frm: str = "green", to: str = "yellow") -> Rec:
    msg = _example("outputs/bucket-change.json")
    msg.update(
        account_id=account,
        as_of=format_utc(as_of),
        from_bucket=frm,
        to_bucket=to,
        change_id=f"bc-{account}-{as_of}-{frm}-{to}",
    )
    return Rec(SETTINGS.bucket_changes_topic, orjson.dumps(msg), account.encode())


def trigger_msg(account: str, as_of: int, playbook: str = "low_adoption_outreach") -> Rec:
    msg = _example("outputs/playbook-trigger.json")
    msg.update(
        account_id=account,
        as_of=format_utc(as_of),
        playbook=playbook,
        trigger_id=f"pt-{playbook}-{account}-{as_of}",
    )
    return Rec(SETTINGS.triggers_topic, orjson.dumps(msg), account.encode())


def pulse_msg(account: str, occurred_at: int, event_id: str | None = None) -> Rec:
    msg = _example("events/pulse.json")
    msg.update(
        account_id=account,
        occurred_at=occurred_at,
        event_id=event_id or f"pulse-{account}-{occurred_at}",
    )
    msg.pop("expires_at")
    return Rec(SETTINGS.input_topic("engagement"), orjson.dumps(msg), account.encode())


def engagement_msg(name: str) -> Rec:
    msg = _example(f"events/{name}.json")
    return Rec(SETTINGS.input_topic("engagement"), orjson.dumps(msg), msg["account_id"].encode())


def writer(engine: AsyncEngine, daily: bool = True) -> HistoryWriter:
    return HistoryWriter(engine, SETTINGS, daily_snapshot=daily, now_ms=lambda: NOW)


async def counts(engine: AsyncEngine) -> dict[str, int]:
    result = {}
    async with engine.connect() as conn:
        for model in (ScoreHistoryRow, BucketChangeRow, PlaybookTriggerRow, CsmPulseRow):
            table = model.__tablename__
            result[table] = (
                await conn.execute(select(func.count()).select_from(model))
            ).scalar_one()
    return result


async def stored_scores(engine: AsyncEngine, account: str) -> list[tuple[int, float]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(ScoreHistoryRow.as_of, ScoreHistoryRow.score)
            .where(ScoreHistoryRow.account_id == account)
            .order_by(ScoreHistoryRow.as_of)
        )
        return [(row.as_of, row.score) for row in rows]


@pytest.fixture
async def engine(history_db_url: str) -> AsyncIterator[AsyncEngine]:
    await migrate(history_db_url)
    engine = create_engine(history_db_url)
    try:
        yield engine
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------
# Migrations


def _diff(connection: Any) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrate_is_idempotent_and_matches_the_models(history_db_url: str) -> None:
    engine = create_engine(history_db_url)
    try:
        assert await current_revision(engine) is None
        await migrate(history_db_url)
        await migrate(history_db_url)
        assert await current_revision(engine) == head_revision() == "0001"
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
    finally:
        await engine.dispose()


def test_create_engine_rejects_bad_urls() -> None:
    with pytest.raises(HistoryDbError, match="invalid database URL"):
        create_engine("not a url")
    with pytest.raises(HistoryDbError, match="unsupported database 'mysql'"):
        create_engine("mysql+aiomysql://u:secret@h/db")


def test_create_engine_makes_the_sqlite_directory(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "dir" / "vitals.db"
    create_engine(f"sqlite+aiosqlite:///{target}")
    assert target.parent.is_dir()


def test_redact_url_hides_the_password() -> None:
    redacted = history_db.redact_url("postgresql+asyncpg://vitals:s3cret@db:5432/vitals")
    assert "s3cret" not in redacted
    assert redacted.startswith("postgresql+asyncpg://vitals:***@db:5432/vitals")


# --------------------------------------------------------------------------
# The retention rule (pure)


P = ScorePoint


@pytest.mark.parametrize(
    ("previous", "current", "daily", "stored"),
    [
        pytest.param(None, P(T0, 70.0, "yellow", "C"), True, True, id="first-score"),
        pytest.param(
            P(T0, 70.0, "yellow", "C"),
            P(T0 + HOUR, 70.5, "yellow", "C"),
            True,
            False,
            id="same-bucket-small-move",
        ),
        pytest.param(
            P(T0, 70.0, "yellow", "C"),
            P(T0 + HOUR, 69.01, "yellow", "C"),
            True,
            False,
            id="just-under-one-point",
        ),
        pytest.param(
            P(T0, 71.4, "yellow", "C"),
            P(T0 + HOUR, 72.4, "yellow", "C"),
            True,
            True,
            id="exactly-one-point-despite-float-error",
        ),
        pytest.param(
            P(T0, 70.0, "yellow", "C"),
            P(T0 + HOUR, 68.5, "yellow", "C"),
            True,
            True,
            id="drop-of-one-and-a-half",
        ),
        pytest.param(
            P(T0, 70.0, "yellow", "C"),
            P(T0 + HOUR, 70.2, "green", "C"),
            True,
            True,
            id="bucket-change",
        ),
        pytest.param(
            P(T0, 70.0, "yellow", "C"),
            P(T0 + HOUR, 70.2, "yellow", "B"),
            True,
            True,
            id="grade-change",
        ),
        pytest.param(
            P(T0 + 23 * HOUR, 70.0, "yellow", "C"),
            P(T0 + 25 * HOUR, 70.0, "yellow", "C"),
            True,
            True,
            id="next-utc-day",
        ),
        pytest.param(
            P(T0 + 23 * HOUR, 70.0, "yellow", "C"),
            P(T0 + 25 * HOUR, 70.0, "yellow", "C"),
            False,
            False,
            id="next-utc-day-without-daily-snapshot",
        ),
        pytest.param(
            P(T0, 70.0, "yellow", "C"),
            P(T0 + 23 * HOUR, 70.0, "yellow", "C"),
            True,
            False,
            id="same-utc-day",
        ),
    ],
)
def test_should_store(
    previous: ScorePoint | None, current: ScorePoint, daily: bool, stored: bool
) -> None:
    assert should_store(previous, current, daily=daily) is stored


# --------------------------------------------------------------------------
# Writes: idempotence, retention through the sink, malformed messages


def mixed_batch() -> list[Rec]:
    return [
        score_msg("acme", T0, 72.4),
        score_msg("acme", T0 + HOUR, 72.9),  # small move: not stored
        score_msg("acme", T0 + 2 * HOUR, 80.0, "green", "B"),
        score_msg("globex", T0, 40.0, "red", "F"),
        change_msg("acme", T0 + 2 * HOUR, "yellow", "green"),
        change_msg("acme", T0 + 2 * HOUR, "yellow", "green"),  # duplicate in the batch
        trigger_msg("globex", T0),
        pulse_msg("acme", T0 - DAY_MS),
        engagement_msg("csm_touch"),  # not a pulse: ignored
        engagement_msg("survey"),
        Rec(SETTINGS.scores_topic, b"{not json"),
        Rec(SETTINGS.scores_topic, None),
        Rec(SETTINGS.bucket_changes_topic, b'{"change_id": "x"}'),
        Rec(
            SETTINGS.triggers_topic,
            orjson.dumps({**_example("outputs/playbook-trigger.json"), "reason": "a\u0000b"}),
        ),
        Rec(SETTINGS.input_topic("engagement"), b'{"type": "pulse"}'),  # invalid input
    ]


EXPECTED = {"score_history": 3, "bucket_changes": 1, "playbook_triggers": 1, "csm_pulses": 1}


async def test_writing_twice_adds_no_rows(engine: AsyncEngine) -> None:
    first = await writer(engine).write(mixed_batch())
    assert first.inserted == EXPECTED
    assert first.malformed == 4
    assert first.ignored == 3
    assert first.scores_skipped == 1
    assert await counts(engine) == EXPECTED

    # The same writer (warm cache) and a fresh one (a restarted sink) both add nothing.
    warm = writer(engine)
    await warm.write(mixed_batch()[:4])
    again = await warm.write(mixed_batch())
    assert again.inserted == dict.fromkeys(EXPECTED, 0)
    fresh = await writer(engine).write(mixed_batch())
    assert fresh.inserted == dict.fromkeys(EXPECTED, 0)
    assert await counts(engine) == EXPECTED


async def test_stored_rows_hold_the_message(engine: AsyncEngine) -> None:
    await writer(engine).write(mixed_batch())
    [latest] = await score_history(engine, "acme", since_ms=T0 + 2 * HOUR, include_payload=True)
    assert latest["payload"]["account_id"] == "acme"
    assert latest["payload"]["components"][0]["metric"] == "license_utilisation"
    assert latest["scorecard"] == {"name": "default", "version": "1"}
    [pulse] = await pulses_for(engine, "acme")
    assert pulse["rating"] == "yellow"
    assert pulse["expires_at"] == format_utc(T0 - DAY_MS + 30 * DAY_MS)


SEQUENCE = [  # (offset in hours from T0, score, bucket, grade, stored?)
    (0, 72.4, "yellow", "C", True),  # first
    (1, 72.9, "yellow", "C", False),  # +0.5 from the stored 72.4
    (2, 73.3, "yellow", "C", False),  # +0.9 from 72.4 (not from 72.9)
    (3, 73.4, "yellow", "C", True),  # +1.0 from 72.4
    (4, 73.0, "yellow", "B", True),  # grade change
    (5, 73.2, "green", "B", True),  # bucket change
    (6, 73.0, "green", "B", False),
    (23, 73.0, "green", "B", False),  # still 2024-05-10
    (24, 73.0, "green", "B", True),  # 2024-05-11: daily snapshot
    (30, 73.5, "green", "B", False),
    (49, 73.5, "green", "B", True),  # 2024-05-12 (no activity on a day: no row for it)
]


def sequence_records() -> list[Rec]:
    return [
        score_msg("acme", T0 + hours * HOUR, score, bucket, grade)
        for hours, score, bucket, grade, _ in SEQUENCE
    ]


def expected_sequence() -> list[tuple[int, float]]:
    return [(T0 + hours * HOUR, score) for hours, score, _, _, keep in SEQUENCE if keep]


async def test_retention_rule_through_the_sink(engine: AsyncEngine) -> None:
    result = await writer(engine).write(sequence_records())
    assert await stored_scores(engine, "acme") == expected_sequence()
    assert result.scores_skipped == len(SEQUENCE) - len(expected_sequence())


async def test_retention_without_daily_snapshot(engine: AsyncEngine) -> None:
    await writer(engine, daily=False).write(sequence_records())
    stored = [as_of for as_of, _ in await stored_scores(engine, "acme")]
    assert T0 + 24 * HOUR not in stored
    assert T0 + 49 * HOUR not in stored


@pytest.mark.parametrize("batch_size", [1, 3, 100])
async def test_retention_does_not_depend_on_batching(engine: AsyncEngine, batch_size: int) -> None:
    records = sequence_records()
    sink = writer(engine)
    for start in range(0, len(records), batch_size):
        await sink.write(records[start : start + batch_size])
    assert await stored_scores(engine, "acme") == expected_sequence()


async def test_replay_over_a_full_database_adds_nothing(engine: AsyncEngine) -> None:
    """A replay from offset 0 sees later rows in the database: decisions must not change.

    E.g. 72.9 at hour 1 is within a point of the earlier stored 72.4, but more
    than a point away from the latest stored row: a rule comparing with the
    latest row would store it on replay.
    """
    await writer(engine).write(sequence_records())
    before = await stored_scores(engine, "acme")
    for batch_size in (1, 4, 100):
        records = sequence_records()
        sink = writer(engine)  # a new sink: cold cache, like a new consumer group
        for start in range(0, len(records), batch_size):
            result = await sink.write(records[start : start + batch_size])
            assert result.inserted["score_history"] == 0
    assert await stored_scores(engine, "acme") == before


async def test_replay_after_a_partial_run(engine: AsyncEngine) -> None:
    """A crash after some batches, then the whole topic again: the same rows."""
    records = sequence_records()
    await writer(engine).write(records[:5])
    await writer(engine).write(records)
    assert await stored_scores(engine, "acme") == expected_sequence()


async def test_a_failed_batch_rolls_back_and_raises(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'unmigrated.db'}"
    engine = create_engine(url)
    try:
        with pytest.raises(SQLAlchemyError):
            await writer(engine).write([score_msg("acme", T0, 70.0)])
    finally:
        await engine.dispose()


async def test_the_sink_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(HistoryDbError, match="vitals db upgrade"):
        await run_history_sink(SETTINGS, url, asyncio.Event())


async def test_scores_of_many_accounts_in_one_batch(engine: AsyncEngine) -> None:
    records = [score_msg(f"acct-{n:04d}", T0, 50.0 + n % 40) for n in range(1200)]
    result = await writer(engine).write(records)
    assert result.inserted["score_history"] == 1200
    result = await writer(engine).write(
        [score_msg(f"acct-{n:04d}", T0 + HOUR, 50.2 + n % 40) for n in range(1200)]
    )
    assert result.inserted["score_history"] == 0
    assert result.scores_skipped == 1200


# --------------------------------------------------------------------------
# Queries


@pytest.fixture
async def portfolio(engine: AsyncEngine) -> AsyncEngine:
    records = [
        # acme: 60 -> 75 (up 15), ends green
        score_msg("acme", T0, 60.0, "yellow", "C"),
        score_msg("acme", T0 + DAY_MS, 68.0, "yellow", "C"),
        score_msg("acme", T0 + 2 * DAY_MS, 75.0, "green", "B"),
        # globex: 70 -> 45 (down 25), ends red
        score_msg("globex", T0, 70.0, "yellow", "C"),
        score_msg("globex", T0 + 2 * DAY_MS, 45.0, "red", "D"),
        # initech: one row only
        score_msg("initech", T0 + DAY_MS, 90.0, "green", "A"),
        # umbrella: down 5, quiet since T0 + DAY_MS
        score_msg("umbrella", T0, 55.0, "yellow", "D"),
        score_msg("umbrella", T0 + DAY_MS, 50.0, "yellow", "D"),
        change_msg("acme", T0 + 2 * DAY_MS, "yellow", "green"),
        change_msg("globex", T0 + 2 * DAY_MS, "yellow", "red"),
        change_msg("globex", T0 + 3 * DAY_MS, "red", "yellow"),
        trigger_msg("globex", T0 + 2 * DAY_MS, "churn_risk_escalation"),
        trigger_msg("globex", T0 + 3 * DAY_MS, "exec_sponsor_outreach"),
        trigger_msg("acme", T0, "low_adoption_outreach"),
        pulse_msg("globex", T0, "p1"),
        pulse_msg("globex", T0 + DAY_MS, "p2"),
    ]
    await writer(engine).write(records)
    return engine


async def test_score_history_query(portfolio: AsyncEngine) -> None:
    rows = await score_history(portfolio, "acme")
    assert [row["score"] for row in rows] == [60.0, 68.0, 75.0]
    assert rows[0] == {
        "account_id": "acme",
        "as_of": "2024-05-10T00:00:00Z",
        "score": 60.0,
        "bucket": "yellow",
        "grade": "C",
        "stage": "adoption",
        "scorecard": {"name": "default", "version": "1"},
        "low_confidence": False,
    }
    window = await score_history(portfolio, "acme", since_ms=T0 + DAY_MS, until_ms=T0 + 2 * DAY_MS)
    assert [row["score"] for row in window] == [68.0]
    # The most recent `limit` rows, oldest first.
    assert [row["score"] for row in await score_history(portfolio, "acme", limit=2)] == [68.0, 75.0]
    assert await score_history(portfolio, "nobody") == []
    with pytest.raises(ValueError, match="limit"):
        await score_history(portfolio, "acme", limit=0)


async def test_latest_bucket_counts(portfolio: AsyncEngine) -> None:
    assert await latest_bucket_counts(portfolio) == {"green": 2, "yellow": 1, "red": 1}
    # The portfolio as it was at the end of the first day.
    assert await latest_bucket_counts(portfolio, as_of_ms=T0 + DAY_MS - 1) == {
        "green": 0,
        "yellow": 3,
        "red": 0,
    }
    # Only accounts scored on the last day.
    assert await latest_bucket_counts(portfolio, since_ms=T0 + 2 * DAY_MS) == {
        "green": 1,
        "yellow": 0,
        "red": 1,
    }


async def test_movers(portfolio: AsyncEngine) -> None:
    both = await movers(portfolio, since_ms=T0)
    assert [(row["account_id"], row["delta"]) for row in both] == [
        ("globex", -25.0),
        ("acme", 15.0),
        ("umbrella", -5.0),
    ]
    assert both[0] == {
        "account_id": "globex",
        "delta": -25.0,
        "score": 45.0,
        "previous_score": 70.0,
        "bucket": "red",
        "previous_bucket": "yellow",
        "as_of": format_utc(T0 + 2 * DAY_MS),
        "previous_as_of": format_utc(T0),
    }
    down = await movers(portfolio, since_ms=T0, direction="down")
    assert [row["account_id"] for row in down] == ["globex", "umbrella"]
    up = await movers(portfolio, since_ms=T0, direction="up")
    assert [row["account_id"] for row in up] == ["acme"]
    assert [row["account_id"] for row in await movers(portfolio, since_ms=T0, limit=1)] == [
        "globex"
    ]
    # Since day 2: acme 68 -> 75 only (globex has one row in the period).
    later = await movers(portfolio, since_ms=T0 + DAY_MS)
    assert [(row["account_id"], row["delta"]) for row in later] == [("acme", 7.0)]
    assert await movers(portfolio, since_ms=T0, until_ms=T0 + DAY_MS) == []


async def test_bucket_changes_for(portfolio: AsyncEngine) -> None:
    changes = await bucket_changes_for(portfolio, "globex")
    assert [(c["from_bucket"], c["to_bucket"]) for c in changes] == [
        ("yellow", "red"),
        ("red", "yellow"),
    ]
    assert changes[0]["change_id"] == f"bc-globex-{T0 + 2 * DAY_MS}-yellow-red"
    assert changes[0]["drivers"][0]["metric"] == "license_utilisation"
    assert changes[0]["as_of"] == format_utc(T0 + 2 * DAY_MS)
    assert len(await bucket_changes_for(portfolio, None)) == 3
    assert len(await bucket_changes_for(portfolio, None, since_ms=T0 + 3 * DAY_MS)) == 1
    assert [c["to_bucket"] for c in await bucket_changes_for(portfolio, "globex", limit=1)] == [
        "yellow"
    ]


async def test_triggers_for(portfolio: AsyncEngine) -> None:
    globex = await triggers_for(portfolio, "globex")
    assert [t["playbook"] for t in globex] == ["churn_risk_escalation", "exec_sponsor_outreach"]
    assert globex[0]["context"]["csm"] == "jane.doe"
    assert len(await triggers_for(portfolio, None)) == 3
    only = await triggers_for(portfolio, None, playbook="low_adoption_outreach")
    assert [t["account_id"] for t in only] == ["acme"]
    assert await triggers_for(portfolio, "globex", until_ms=T0) == []


async def test_pulses_for(portfolio: AsyncEngine) -> None:
    assert [p["event_id"] for p in await pulses_for(portfolio, "globex")] == ["p1", "p2"]
    assert [p["event_id"] for p in await pulses_for(portfolio, "globex", limit=1)] == ["p2"]


# --------------------------------------------------------------------------
# vitals db


def test_cli_db_upgrade_and_current(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli' / 'vitals.db'}"
    monkeypatch.setenv("VITALS_DATABASE_URL", url)
    runner = CliRunner()
    result = runner.invoke(db, ["upgrade"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"database": url, "from": None, "to": "0001"}
    result = runner.invoke(db, ["upgrade", "--url", url])
    assert json.loads(result.stdout) == {"database": url, "from": "0001", "to": "0001"}
    result = runner.invoke(db, ["current"])
    assert json.loads(result.stdout) == {"database": url, "revision": "0001", "head": "0001"}


def test_cli_db_upgrade_errors_are_one_line() -> None:
    runner = CliRunner()
    result = runner.invoke(db, ["upgrade", "--url", "mysql://root:pw@localhost/x"])
    assert result.exit_code == 1
    assert result.stderr.startswith("vitals: error: unsupported database 'mysql'")
    assert "pw" not in result.stderr
    result = runner.invoke(db, ["upgrade", "--url", "postgresql+asyncpg://u:pw@127.0.0.1:1/x"])
    assert result.exit_code == 1
    assert result.stderr.startswith("vitals: error: database error:")
    assert len(result.stderr.strip().splitlines()) == 1


def test_message_builders_make_valid_messages() -> None:
    """Guards the tests: the builders above produce messages the output models accept."""
    for rec, model in (
        (score_msg("a", T0, 1.0), HealthScore),
        (change_msg("a", T0), BucketChange),
        (trigger_msg("a", T0), PlaybookTrigger),
    ):
        assert rec.value is not None
        assert model.model_validate_json(rec.value).account_id == "a"
