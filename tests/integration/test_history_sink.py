"""The history sink on the real broker: rows appear, and a replay adds none.

Runs on SQLite and (when installed) PostgreSQL through ``history_db_url``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import func, select

from schemas import load_example
from schemas.outputs import format_utc
from service.history.db import create_engine, migrate
from service.history.models import BucketChangeRow, CsmPulseRow, PlaybookTriggerRow, ScoreHistoryRow
from service.history.sink import DAY_MS, SinkStats, history_group_id, run_history_sink
from service.runtime.settings import Settings
from service.runtime.topics import ensure_topics_async
from tests.integration.workers import Namespace, wait_for

pytestmark = pytest.mark.integration

T0 = 1_715_299_200_000  # 2024-05-10T00:00:00Z
HOUR = 3_600_000
TABLES = {
    "score_history": ScoreHistoryRow,
    "bucket_changes": BucketChangeRow,
    "playbook_triggers": PlaybookTriggerRow,
    "csm_pulses": CsmPulseRow,
}


def example(kind: str, name: str, **changes: Any) -> dict[str, Any]:
    message = dict(orjson.loads(load_example(kind, name)))
    message.update(changes)
    return message


def messages(settings: Settings) -> tuple[list[tuple[str, str, bytes]], dict[str, int]]:
    """(topic, key, value) to produce, and the rows they must give per table."""
    out: list[tuple[str, str, bytes]] = []
    scores = [  # (account, hours after T0, score, bucket, grade); * = stored
        ("acme", 0, 72.4, "yellow", "C"),  # *
        ("acme", 1, 72.6, "yellow", "C"),
        ("acme", 2, 80.1, "green", "B"),  # *
        ("acme", 26, 80.3, "green", "B"),  # * next UTC day
        ("globex", 0, 41.0, "red", "F"),  # *
        ("globex", 5, 41.5, "red", "F"),
        ("globex", 6, 43.0, "red", "F"),  # * moved 2 points
    ]
    for account, hours, score, bucket, grade in scores:
        as_of = T0 + hours * HOUR
        value = example(
            "outputs",
            "health-score",
            account_id=account,
            as_of=format_utc(as_of),
            computed_at=format_utc(as_of + 5),
            score=score,
            bucket=bucket,
            grade=grade,
        )
        out.append((settings.scores_topic, account, orjson.dumps(value)))
    change = example(
        "outputs",
        "bucket-change",
        account_id="acme",
        from_bucket="yellow",
        to_bucket="green",
        change_id=f"bc-acme-{T0 + 2 * HOUR}-yellow-green",
        as_of=format_utc(T0 + 2 * HOUR),
    )
    out += [(settings.bucket_changes_topic, "acme", orjson.dumps(change))] * 2  # duplicate
    trigger = example("outputs", "playbook-trigger", account_id="globex")
    out.append((settings.triggers_topic, "globex", orjson.dumps(trigger)))
    engagement = settings.input_topic("engagement")
    out.append((engagement, "acme-corp", load_example("events", "pulse")))
    out.append((engagement, "acme-corp", load_example("events", "csm_touch")))  # not a pulse
    pulse = example("events", "pulse", account_id="globex", event_id="p-globex", occurred_at=T0)
    out.append((engagement, "globex", orjson.dumps(pulse)))
    out.append((settings.scores_topic, "acme", b"{malformed"))
    expected = {"score_history": 5, "bucket_changes": 1, "playbook_triggers": 1, "csm_pulses": 2}
    return out, expected


async def produce(producer: AIOKafkaProducer, batch: list[tuple[str, str, bytes]]) -> None:
    for topic, key, value in batch:
        await producer.send(topic, value=value, key=key.encode())
    await producer.flush()


async def row_counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return {
                name: (await conn.execute(select(func.count()).select_from(model))).scalar_one()
                for name, model in TABLES.items()
            }
    finally:
        await engine.dispose()


async def run_sink_until(settings: Settings, url: str, consumed: int) -> SinkStats:
    """Run a sink until it has consumed ``consumed`` messages, then stop it cleanly."""
    stats = SinkStats()
    stop = asyncio.Event()
    task = asyncio.create_task(run_history_sink(settings, url, stop, stats=stats))

    async def done() -> bool:
        if task.done():
            task.result()  # raises the sink's exception
            raise AssertionError("the sink stopped by itself")
        return stats.messages >= consumed

    try:
        await wait_for(done, timeout=90, what=f"the sink to consume {consumed} messages")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    return stats


async def test_sink_stores_rows_and_a_replay_adds_none(
    kafka_bootstrap: str,
    namespace: Namespace,
    producer: AIOKafkaProducer,
    history_db_url: str,
) -> None:
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=namespace.topic_prefix,
        app_id=namespace.app_id,
    )
    await ensure_topics_async(settings)
    await migrate(history_db_url)
    batch, expected = messages(settings)
    await produce(producer, batch)

    first = await run_sink_until(settings, history_db_url, len(batch))
    assert await row_counts(history_db_url) == expected
    assert first.inserted == expected
    assert first.malformed == 1
    assert first.ignored == 1  # the csm_touch event

    # A new consumer group starts from offset 0: everything again, no new rows.
    replay_settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=namespace.topic_prefix,
        app_id=f"{namespace.app_id}-replay",
    )
    assert history_group_id(replay_settings) != history_group_id(settings)
    second = await run_sink_until(replay_settings, history_db_url, len(batch))
    assert second.messages == len(batch)
    assert second.inserted == dict.fromkeys(expected, 0)
    assert await row_counts(history_db_url) == expected

    # The first group committed its offsets: restarted, it reads nothing new;
    # new messages are stored once.
    later = example(
        "outputs",
        "health-score",
        account_id="globex",
        as_of=format_utc(T0 + 3 * DAY_MS),
        computed_at=format_utc(T0 + 3 * DAY_MS),
        score=43.2,
        bucket="red",
        grade="F",
    )
    await produce(producer, [(settings.scores_topic, "globex", orjson.dumps(later))])
    third = await run_sink_until(settings, history_db_url, 1)
    assert third.messages == 1
    assert third.inserted["score_history"] == 1


async def test_cli_history_sink_stops_cleanly_on_sigterm(
    kafka_bootstrap: str,
    namespace: Namespace,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=namespace.topic_prefix,
        app_id=namespace.app_id,
    )
    await ensure_topics_async(settings)
    batch, expected = messages(settings)
    await produce(producer, batch)
    database = tmp_path / "cli" / "vitals.db"
    env = dict(
        os.environ,
        VITALS_BOOTSTRAP_SERVERS=kafka_bootstrap,
        VITALS_TOPIC_PREFIX=namespace.topic_prefix,
        VITALS_APP_ID=namespace.app_id,
        VITALS_DATABASE_URL=f"sqlite+aiosqlite:///{database}",
        PYTHONUNBUFFERED="1",
    )
    log_path = tmp_path / "sink.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from service.cli.history_sink import history_sink; "
            "history_sink(prog_name='vitals history-sink')",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )

    async def all_rows() -> bool:
        if process.returncode is not None:
            raise AssertionError(f"the sink exited with {process.returncode}")
        if not database.exists():
            return False
        try:
            with sqlite3.connect(database) as conn:
                counts = {
                    table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    for table in TABLES
                }
        except sqlite3.OperationalError:  # not migrated yet
            return False
        return counts == expected

    try:
        await wait_for(all_rows, timeout=90, what="the CLI sink to store every row")
        process.send_signal(signal.SIGTERM)
        stdout, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
    assert process.returncode == 0, log_path.read_text()
    summary = orjson.loads(stdout.strip().splitlines()[-1])
    assert summary["history_sink"]["inserted"] == expected


async def test_a_database_error_is_retried_without_losing_messages(
    kafka_bootstrap: str,
    namespace: Namespace,
    producer: AIOKafkaProducer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.exc import OperationalError

    from service.history import sink as history_sink

    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=namespace.topic_prefix,
        app_id=namespace.app_id,
    )
    await ensure_topics_async(settings)
    url = f"sqlite+aiosqlite:///{tmp_path / 'flaky.db'}"
    await migrate(url)
    batch, expected = messages(settings)
    await produce(producer, batch)

    real_write = history_sink.HistoryWriter.write
    failures = 0

    async def flaky_write(self: history_sink.HistoryWriter, records: Any) -> Any:
        nonlocal failures
        if failures < 2:
            failures += 1
            raise OperationalError("INSERT ...", {}, Exception("database is locked"))
        return await real_write(self, records)

    monkeypatch.setattr(history_sink.HistoryWriter, "write", flaky_write)
    stats = await run_sink_until(settings, url, len(batch))
    assert stats.db_errors == 2
    assert stats.messages == len(batch)
    assert await row_counts(url) == expected
