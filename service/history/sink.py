"""The history sink: output topics (and CSM pulses) into the history database.

A plain aiokafka consumer (group ``<app_id>-history``) reads

* ``vitals.health.scores`` -> ``score_history`` (on change, at least daily),
* ``vitals.health.bucket-changes`` -> ``bucket_changes``,
* ``vitals.playbooks.triggers`` -> ``playbook_triggers``,
* ``vitals.events.engagement`` (``pulse`` events only) -> ``csm_pulses``,

and writes each polled batch in one database transaction, then commits the
batch's offsets: at-least-once delivery. Every table has a natural unique key
and rows are inserted with ``INSERT ... ON CONFLICT DO NOTHING``, so messages
read again after a crash, or a replay of the topics from offset 0, add no rows.

Score retention (:func:`should_store`): the scores topic carries an update per
evaluation; a score is stored when its bucket or grade differs from the
account's *previous stored score* (the stored row with the greatest ``as_of``
before it), when the score moved by at least one point from it, or when that
row is from an earlier UTC day (at least one row per account per day with
activity; ``VITALS_HISTORY_DAILY_SNAPSHOT=false`` turns this rule off). The
decision depends only on rows *earlier* in event time, so, as long as each
account's scores come in ``as_of`` order (one partition per account, which the
worker guarantees), a replay from offset 0 makes the same decisions whatever
later rows the database already holds.

Run one sink consumer group per database: the per-account cache of the latest
stored score assumes no other group writes the same accounts at the same time
(a concurrent writer cannot cause duplicates, only a slightly different choice
of which scores are kept).

Bad messages never stop the sink: a malformed output message is logged and
counted (:class:`SinkStats`); engagement events that are not valid pulses are
skipped (the worker dead-letters the invalid ones). A database failure rolls the
batch back and retries it with backoff; the offsets are not committed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import orjson
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy import Table, and_, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schemas.decode import Rejected, decode_event
from schemas.events import PulseEvent, parse_timestamp
from schemas.outputs import (
    BucketChange,
    HealthScore,
    PlaybookTrigger,
    parse_bucket_change,
    parse_health_score,
)
from service.history.db import HistoryDbError, create_engine, current_revision, head_revision
from service.history.models import (
    BucketChangeRow,
    CsmPulseRow,
    PlaybookTriggerRow,
    ScoreHistoryRow,
)
from service.runtime.metrics import HISTORY_ROWS
from service.runtime.settings import Settings

__all__ = [
    "DAY_MS",
    "MIN_SCORE_DELTA",
    "TABLES",
    "HistoryWriter",
    "Record",
    "ScorePoint",
    "SinkStats",
    "WriteResult",
    "history_group_id",
    "run_history_sink",
    "should_store",
]

log = logging.getLogger("vitals.history")

DAY_MS: Final = 86_400_000
#: A score that moved at least this much (points) from the previous stored one is stored.
MIN_SCORE_DELTA: Final = 1.0
#: The tables the sink writes, as counted in :class:`WriteResult` and ``HISTORY_ROWS``.
TABLES: Final = ("score_history", "bucket_changes", "playbook_triggers", "csm_pulses")
# Bounds the per-account cache of the latest stored score (it is only a shortcut).
_CACHE_MAX: Final = 200_000
# Accounts per ``IN (...)`` lookup.
_LOOKUP_CHUNK: Final = 500


class Record(Protocol):
    """What the sink needs of a consumed message (an aiokafka ``ConsumerRecord`` fits)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class ScorePoint:
    """What the retention rule compares: one score of one account."""

    as_of: int
    score: float
    bucket: str
    grade: str


def should_store(
    previous: ScorePoint | None,
    current: ScorePoint,
    *,
    daily: bool = True,
    min_delta: float = MIN_SCORE_DELTA,
) -> bool:
    """Whether to store ``current`` given the account's previous stored score.

    ``previous`` is the stored row with the greatest ``as_of`` before
    ``current.as_of`` (``None``: none). Stored when there is no previous row,
    the bucket or the grade changed, the score moved by ``>= min_delta``
    points, or (``daily``) ``previous`` is from an earlier UTC day.
    """
    if previous is None:
        return True
    if current.bucket != previous.bucket or current.grade != previous.grade:
        return True
    # Rounded so that e.g. 72.4 - 71.4 = 1.0000000000000142 and 0.9999999999 agree.
    if round(abs(current.score - previous.score), 6) >= min_delta:
        return True
    return daily and current.as_of // DAY_MS > previous.as_of // DAY_MS


@dataclass
class WriteResult:
    """What one :meth:`HistoryWriter.write` call did."""

    #: Rows inserted per table (duplicates are not rows).
    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    #: Scores not stored: retention rule, or already stored.
    scores_skipped: int = 0
    #: Output messages that failed validation (logged).
    malformed: int = 0
    #: Engagement events that are not pulses, or invalid input (the worker dead-letters those).
    ignored: int = 0


@dataclass
class SinkStats:
    """Running totals of a sink; pass one to :func:`run_history_sink` to watch it."""

    messages: int = 0
    batches: int = 0
    inserted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TABLES, 0))
    scores_skipped: int = 0
    malformed: int = 0
    ignored: int = 0
    #: Batches rolled back by a database error (then retried).
    db_errors: int = 0

    def add(self, result: WriteResult, messages: int) -> None:
        self.messages += messages
        self.batches += 1
        for table, rows in result.inserted.items():
            self.inserted[table] = self.inserted.get(table, 0) + rows
        self.scores_skipped += result.scores_skipped
        self.malformed += result.malformed
        self.ignored += result.ignored

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "batches": self.batches,
            "inserted": dict(self.inserted),
            "scores_skipped": self.scores_skipped,
            "malformed": self.malformed,
            "ignored": self.ignored,
            "db_errors": self.db_errors,
        }


def history_group_id(settings: Settings) -> str:
    """Consumer group of the history sink: ``<app_id>-history``."""
    return f"{settings.app_id}-history"


def _wall_clock_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Parsed:
    scores: list[dict[str, Any]] = field(default_factory=list)
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    triggers: dict[str, dict[str, Any]] = field(default_factory=dict)
    pulses: dict[str, dict[str, Any]] = field(default_factory=dict)


class HistoryWriter:
    """Turns batches of consumed messages into rows, one transaction per batch.

    Keeps, per account, the latest stored score it knows of, so that a live
    stream (``as_of`` increasing) needs no read per message; the cache is only
    a shortcut and :meth:`forget` drops it (after a rebalance, or a failed
    transaction, which :meth:`write` handles itself).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        daily_snapshot: bool | None = None,
        now_ms: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.engine = engine
        self.daily = settings.history_daily_snapshot if daily_snapshot is None else daily_snapshot
        self._settings = settings
        self._now_ms = now_ms
        self._kinds = {
            settings.scores_topic: "scores",
            settings.bucket_changes_topic: "bucket_changes",
            settings.triggers_topic: "triggers",
            settings.input_topic("engagement"): "engagement",
        }
        self._latest: dict[str, ScorePoint | None] = {}

    @property
    def topics(self) -> list[str]:
        """The topics whose messages :meth:`write` understands."""
        return list(self._kinds)

    def forget(self) -> None:
        """Drop the cache of latest stored scores (the database stays the truth)."""
        self._latest.clear()

    # -- parsing -----------------------------------------------------------

    def _malformed(self, record: Record, what: str, exc: Exception) -> None:
        detail = " ".join(str(exc).split())
        if len(detail) > 300:
            detail = detail[:297] + "..."
        log.warning(
            "malformed %s message at %s[%d]@%d skipped: %s",
            what,
            record.topic,
            record.partition,
            record.offset,
            detail,
        )

    def _parse(self, records: Iterable[Record], result: WriteResult) -> _Parsed:
        parsed = _Parsed()
        for record in records:
            kind = self._kinds.get(record.topic)
            if kind is None:
                result.ignored += 1
                continue
            if kind == "engagement":
                pulse = self._pulse(record)
                if pulse is None:
                    result.ignored += 1
                else:
                    parsed.pulses.setdefault(pulse["event_id"], pulse)
                continue
            try:
                value = record.value
                if not value:
                    raise ValueError("empty value")
                if b"\\u0000" in value:  # PostgreSQL text cannot hold NUL
                    raise ValueError("NUL character in a string")
                if kind == "scores":
                    parsed.scores.append(_score_row(parse_health_score(value)))
                elif kind == "bucket_changes":
                    change = _change_row(parse_bucket_change(value))
                    parsed.changes.setdefault(change["change_id"], change)
                else:
                    trigger = _trigger_row(PlaybookTrigger.model_validate_json(value))
                    parsed.triggers.setdefault(trigger["trigger_id"], trigger)
            except (ValidationError, PydanticCustomError, ValueError) as exc:
                result.malformed += 1
                self._malformed(record, kind, exc)
        return parsed

    def _pulse(self, record: Record) -> dict[str, Any] | None:
        value = record.value
        if not value or b'"pulse"' not in value:  # cheap pre-filter: most events are not pulses
            return None
        try:
            event = decode_event(
                value,
                topic_kind="engagement",
                key=record.key,
                now_ms=self._now_ms(),
                max_bytes=self._settings.max_event_bytes,
                max_future_ms=self._settings.max_future_ms,
            )
        except Rejected:
            return None
        if not isinstance(event, PulseEvent) or "\x00" in event.reason:
            return None
        return {
            "event_id": event.event_id,
            "account_id": event.account_id,
            "rating": event.rating,
            "reason": event.reason,
            "occurred_at": event.occurred_at,
            "expires_at": event.expires_at,
        }

    # -- writing -----------------------------------------------------------

    async def write(self, records: Sequence[Record]) -> WriteResult:
        """Store what ``records`` hold, in one transaction; idempotent.

        ``records`` must be in topic order per partition. Malformed messages are
        counted in the result, not raised. Database errors propagate (after a
        rollback) so the caller can retry the batch.
        """
        result = WriteResult()
        parsed = self._parse(records, result)
        if len(self._latest) > _CACHE_MAX:
            self.forget()
        staged: dict[str, ScorePoint | None] = {}
        try:
            async with self.engine.begin() as conn:
                insert_for = _insert_factory(conn)
                score_rows = await self._retain(conn, parsed.scores, staged, result)
                for table, rows, key in (
                    ("score_history", score_rows, ("account_id", "as_of")),
                    ("bucket_changes", list(parsed.changes.values()), ("change_id",)),
                    ("playbook_triggers", list(parsed.triggers.values()), ("trigger_id",)),
                    ("csm_pulses", list(parsed.pulses.values()), ("event_id",)),
                ):
                    if rows:
                        statement = insert_for(table, key)
                        inserted = (await conn.execute(statement, rows)).all()
                        result.inserted[table] = len(inserted)
        except BaseException:
            self.forget()
            raise
        self._latest.update(staged)
        for table, count in result.inserted.items():
            if count:
                HISTORY_ROWS.labels(table=table).inc(count)
        return result

    async def _retain(
        self,
        conn: AsyncConnection,
        scores: list[dict[str, Any]],
        staged: dict[str, ScorePoint | None],
        result: WriteResult,
    ) -> list[dict[str, Any]]:
        """The score rows to insert, by the retention rule (see the module docstring)."""
        if not scores:
            return []
        unknown = {row["account_id"] for row in scores} - self._latest.keys()
        staged.update(await _latest_stored(conn, unknown))
        # Rows decided in this batch, per account (the database does not hold them yet).
        pending: dict[str, dict[int, ScorePoint]] = {}
        keep: list[dict[str, Any]] = []
        for row in scores:
            account = row["account_id"]
            point = ScorePoint(row["as_of"], row["score"], row["bucket"], row["grade"])
            latest = staged[account] if account in staged else self._latest[account]
            if latest is None or point.as_of > latest.as_of:
                # The usual case: newer than anything stored.
                exists, previous = False, latest
            else:
                # Older than the latest stored row (a replay, or out of order).
                exists, previous = await _stored_at_or_before(conn, account, point.as_of)
                mine = pending.get(account, {})
                if point.as_of in mine:
                    exists = True
                earlier = [p for t, p in mine.items() if t < point.as_of]
                if earlier:
                    best = max(earlier, key=lambda p: p.as_of)
                    if previous is None or best.as_of > previous.as_of:
                        previous = best
            if exists or not should_store(previous, point, daily=self.daily):
                result.scores_skipped += 1
                continue
            keep.append(row)
            pending.setdefault(account, {})[point.as_of] = point
            if latest is None or point.as_of > latest.as_of:
                staged[account] = point
        return keep


def _insert_factory(conn: AsyncConnection) -> Callable[[str, tuple[str, ...]], Any]:
    dialect = conn.dialect.name
    tables: dict[str, Table] = {
        "score_history": ScoreHistoryRow.__table__,  # type: ignore[dict-item]
        "bucket_changes": BucketChangeRow.__table__,  # type: ignore[dict-item]
        "playbook_triggers": PlaybookTriggerRow.__table__,  # type: ignore[dict-item]
        "csm_pulses": CsmPulseRow.__table__,  # type: ignore[dict-item]
    }

    def build(name: str, key: tuple[str, ...]) -> Any:
        table = tables[name]
        if dialect == "postgresql":
            pg = postgresql.insert(table).on_conflict_do_nothing(index_elements=list(key))
            return pg.returning(table.c.id)
        if dialect == "sqlite":
            lite = sqlite.insert(table).on_conflict_do_nothing(index_elements=list(key))
            return lite.returning(table.c.id)
        raise HistoryDbError(f"unsupported database dialect {dialect!r}")

    return build


async def _latest_stored(
    conn: AsyncConnection, accounts: Iterable[str]
) -> dict[str, ScorePoint | None]:
    """The latest stored score of each account (``None``: no rows)."""
    found: dict[str, ScorePoint | None] = {}
    ordered = sorted(accounts)
    t = ScoreHistoryRow
    for start in range(0, len(ordered), _LOOKUP_CHUNK):
        chunk = ordered[start : start + _LOOKUP_CHUNK]
        found.update(dict.fromkeys(chunk))
        latest = (
            select(t.account_id, func.max(t.as_of).label("as_of"))
            .where(t.account_id.in_(chunk))
            .group_by(t.account_id)
            .subquery()
        )
        query = select(t.account_id, t.as_of, t.score, t.bucket, t.grade).join(
            latest, and_(t.account_id == latest.c.account_id, t.as_of == latest.c.as_of)
        )
        for row in (await conn.execute(query)).all():
            found[row.account_id] = ScorePoint(row.as_of, row.score, row.bucket, row.grade)
    return found


async def _stored_at_or_before(
    conn: AsyncConnection, account_id: str, as_of: int
) -> tuple[bool, ScorePoint | None]:
    """Whether a row exists at ``as_of``, and the latest stored row before it."""
    t = ScoreHistoryRow
    query = (
        select(t.as_of, t.score, t.bucket, t.grade)
        .where(t.account_id == account_id, t.as_of <= as_of)
        .order_by(t.as_of.desc())
        .limit(2)
    )
    rows = (await conn.execute(query)).all()
    exists = bool(rows) and rows[0].as_of == as_of
    before = rows[1:] if exists else rows[:1]
    previous = (
        ScorePoint(before[0].as_of, before[0].score, before[0].bucket, before[0].grade)
        if before
        else None
    )
    return exists, previous


def _score_row(score: HealthScore) -> dict[str, Any]:
    return {
        "account_id": score.account_id,
        "as_of": parse_timestamp(score.as_of),
        "score": score.score,
        "bucket": score.bucket,
        "grade": score.grade,
        "stage": score.stage,
        "scorecard_name": score.scorecard.name,
        "scorecard_version": score.scorecard.version,
        "low_confidence": score.low_confidence,
        "payload": score.model_dump(mode="json"),
    }


def _change_row(change: BucketChange) -> dict[str, Any]:
    return {
        "change_id": change.change_id,
        "account_id": change.account_id,
        "from_bucket": change.from_bucket,
        "to_bucket": change.to_bucket,
        "score": change.score,
        "previous_score": change.previous_score,
        "as_of": parse_timestamp(change.as_of),
        "drivers": [driver.model_dump(mode="json") for driver in change.drivers],
    }


def _trigger_row(trigger: PlaybookTrigger) -> dict[str, Any]:
    # ``context`` is free-form: make sure it is plain JSON (and round-trips).
    context = orjson.loads(orjson.dumps(trigger.context))
    return {
        "trigger_id": trigger.trigger_id,
        "playbook": trigger.playbook,
        "account_id": trigger.account_id,
        "reason": trigger.reason,
        "as_of": parse_timestamp(trigger.as_of),
        "context": context,
    }


# --------------------------------------------------------------------------
# The consumer loop


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run_history_sink(
    settings: Settings,
    url: str,
    stop: asyncio.Event,
    *,
    stats: SinkStats | None = None,
    batch_size: int = 500,
    poll_timeout_ms: int = 500,
) -> None:
    """Consume the output topics into the database at ``url`` until ``stop`` is set.

    The database must be migrated (``vitals db upgrade`` / :func:`migrate`);
    otherwise :class:`~service.history.db.HistoryDbError` is raised. ``stats``
    (optional) is updated after every batch. Kafka connection errors at start-up
    propagate; database errors later are logged and the batch is retried.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.abc import ConsumerRebalanceListener
    from aiokafka.errors import CommitFailedError, KafkaError
    from aiokafka.structs import OffsetAndMetadata

    stats = stats if stats is not None else SinkStats()
    engine = create_engine(url)
    try:
        revision = await current_revision(engine)
        if revision != head_revision():
            raise HistoryDbError(
                f"history database is at revision {revision or 'none'}, "
                f"expected {head_revision()}: run 'vitals db upgrade'"
            )
        writer = HistoryWriter(engine, settings)

        class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: object) -> None:
                writer.forget()

            async def on_partitions_assigned(self, assigned: object) -> None:
                writer.forget()

        consumer = AIOKafkaConsumer(
            group_id=history_group_id(settings),
            client_id=f"{settings.app_id}-history-sink",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            **settings.aiokafka_kwargs(),
        )
        consumer.subscribe(writer.topics, listener=_Rebalance())
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        log.info(
            "history sink started: group %s, topics %s",
            history_group_id(settings),
            ", ".join(writer.topics),
        )
        backoff = 0.5
        try:
            while not stop.is_set():
                polled: dict[TopicPartition, list[Any]] = await consumer.getmany(
                    timeout_ms=poll_timeout_ms, max_records=batch_size
                )
                if not polled:
                    continue
                partitions = sorted(tp for tp, batch in polled.items() if batch)
                records = [record for tp in partitions for record in polled[tp]]
                try:
                    result = await writer.write(records)
                except (SQLAlchemyError, OSError, HistoryDbError) as exc:
                    stats.db_errors += 1
                    log.error(
                        "history batch of %d messages rolled back (%s: %s); retrying in %.1fs",
                        len(records),
                        type(exc).__name__,
                        " ".join(str(exc).split())[:300],
                        backoff,
                    )
                    for tp in partitions:
                        consumer.seek(tp, polled[tp][0].offset)
                    await _wait(stop, backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 0.5
                stats.add(result, len(records))
                offsets = {
                    tp: OffsetAndMetadata(polled[tp][-1].offset + 1, "") for tp in partitions
                }
                try:
                    await consumer.commit(offsets)
                except (CommitFailedError, KafkaError) as exc:
                    # The rows are stored; a new owner of the partitions reads them
                    # again and the inserts are no-ops.
                    log.warning("offset commit failed (%s); continuing", exc)
                    writer.forget()
        finally:
            await consumer.stop()
            log.info("history sink stopped: %s", orjson.dumps(stats.as_dict()).decode())
    finally:
        await engine.dispose()
