"""The score-history database: engine, Alembic migrations and read queries.

SQLite (``sqlite+aiosqlite:///var/vitals.db``, the default) and PostgreSQL
(``postgresql+asyncpg://user:pass@host/db``) are supported, both through
SQLAlchemy's async engine. The schema lives in :mod:`service.history.models`
and is created and upgraded only by the Alembic migrations in
``service/history/migrations`` (no ``alembic.ini`` needed): :func:`migrate`, or
``vitals db upgrade`` on the command line.

Query results are plain dicts ready for JSON: times are RFC 3339 UTC strings
(``2024-05-10T00:00:00Z``), like the messages on the output topics. Time
ranges are half-open: ``since_ms <= as_of < until_ms`` (epoch milliseconds;
``None`` leaves that end open). Lists come oldest first; when more than
``limit`` rows match, the *most recent* ``limit`` rows are returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Executable, and_, event, func, select, text
from sqlalchemy.engine import Connection, Row, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from schemas.outputs import format_utc
from service.history.models import (
    BucketChangeRow,
    CsmPulseRow,
    PlaybookTriggerRow,
    ScoreHistoryRow,
)

__all__ = [
    "BUCKETS",
    "MIGRATIONS_DIR",
    "HistoryDbError",
    "alembic_config",
    "bucket_changes_for",
    "create_engine",
    "current_revision",
    "head_revision",
    "latest_bucket_counts",
    "migrate",
    "movers",
    "pulses_for",
    "redact_url",
    "score_history",
    "score_points",
    "score_span",
    "score_time_range",
    "scores_as_of",
    "triggers_for",
]

#: The Alembic script directory (env.py, script.py.mako, versions/).
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"
#: Every bucket, in the order counts are reported.
BUCKETS: Final = ("green", "yellow", "red")
#: Dialects whose ``INSERT ... ON CONFLICT DO NOTHING`` the history sink uses.
SUPPORTED_DIALECTS: Final = frozenset({"sqlite", "postgresql"})
# Arbitrary constant: serialises concurrent migrations on one PostgreSQL database.
_PG_MIGRATION_LOCK: Final = 0x76697461  # "vita"


class HistoryDbError(RuntimeError):
    """The history database cannot be used as configured (one-line message)."""


def redact_url(url: str) -> str:
    """The URL with any password masked, for logs and CLI output."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def create_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """An async engine for a history database URL (SQLite or PostgreSQL).

    For a SQLite file the parent directory is created, and connections use WAL
    journaling and a busy timeout so that readers (the HTTP API) and the sink
    can share the file. Extra ``kwargs`` go to
    :func:`sqlalchemy.ext.asyncio.create_async_engine`. Raises
    :class:`HistoryDbError` for a malformed URL or an unsupported dialect.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise HistoryDbError(f"invalid database URL {url!r}: {exc}") from None
    dialect = parsed.get_backend_name()
    if dialect not in SUPPORTED_DIALECTS:
        raise HistoryDbError(
            f"unsupported database {dialect!r} in {redact_url(url)}: "
            "use sqlite+aiosqlite:///PATH or postgresql+asyncpg://..."
        )
    if dialect == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", 30)
        kwargs["connect_args"] = connect_args
    # A failed statement's message would quote its parameters (account and
    # user ids, pulse reasons) into the logs.
    kwargs.setdefault("hide_parameters", True)
    try:
        engine = create_async_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise HistoryDbError(f"cannot use {redact_url(url)}: {exc}") from None
    if dialect == "sqlite" and parsed.database not in (None, "", ":memory:"):
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
    return engine


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


# --------------------------------------------------------------------------
# Migrations


def alembic_config() -> Config:
    """An Alembic config for ``service/history/migrations`` without an ini file."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def head_revision() -> str:
    """The newest migration revision shipped with this build."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the repository always ships migrations
        raise HistoryDbError("no migrations found")
    return head


def _upgrade(connection: Connection, revision: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` to ``revision`` (default: the newest).

    Idempotent; concurrent callers on one PostgreSQL database are serialised
    by an advisory lock. Raises :class:`HistoryDbError` for a bad URL and
    SQLAlchemy errors (``OperationalError``...) when the database is unreachable.
    """
    engine = create_engine(url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_upgrade, revision)
    finally:
        await engine.dispose()


def _revision_of(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (``None``: never migrated)."""
    async with engine.connect() as connection:
        return await connection.run_sync(_revision_of)


# --------------------------------------------------------------------------
# Queries


def _window(column: Any, since_ms: int | None, until_ms: int | None) -> list[Any]:
    clauses: list[Any] = []
    if since_ms is not None:
        clauses.append(column >= since_ms)
    if until_ms is not None:
        clauses.append(column < until_ms)
    return clauses


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


async def _latest_first(engine: AsyncEngine, query: Executable) -> list[Row[Any]]:
    """Run a newest-first ``LIMIT`` query; return its rows oldest first."""
    async with engine.connect() as connection:
        rows = list((await connection.execute(query)).all())
    rows.reverse()
    return rows


async def score_history(
    engine: AsyncEngine,
    account_id: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 1000,
    *,
    include_payload: bool = False,
) -> list[dict[str, Any]]:
    """Stored scores of one account, oldest first (the most recent ``limit``).

    Each item: ``{account_id, as_of, score, bucket, grade, stage, scorecard
    {name, version}, low_confidence}``, plus ``payload`` (the whole scores
    message) when ``include_payload``.
    """
    _check_limit(limit)
    t = ScoreHistoryRow
    columns: list[Any] = [
        t.account_id,
        t.as_of,
        t.score,
        t.bucket,
        t.grade,
        t.stage,
        t.scorecard_name,
        t.scorecard_version,
        t.low_confidence,
    ]
    if include_payload:
        columns.append(t.payload)
    query = (
        select(*columns)
        .where(t.account_id == account_id, *_window(t.as_of, since_ms, until_ms))
        .order_by(t.as_of.desc())
        .limit(limit)
    )
    result: list[dict[str, Any]] = []
    for row in await _latest_first(engine, query):
        item: dict[str, Any] = {
            "account_id": row.account_id,
            "as_of": format_utc(row.as_of),
            "score": row.score,
            "bucket": row.bucket,
            "grade": row.grade,
            "stage": row.stage,
            "scorecard": {"name": row.scorecard_name, "version": row.scorecard_version},
            "low_confidence": bool(row.low_confidence),
        }
        if include_payload:
            item["payload"] = row.payload
        result.append(item)
    return result


async def score_span(engine: AsyncEngine, account_id: str) -> tuple[int, int] | None:
    """``(first, last)`` ``as_of`` (epoch ms) of the account's stored scores; ``None`` if none."""
    t = ScoreHistoryRow
    query = select(func.min(t.as_of), func.max(t.as_of)).where(t.account_id == account_id)
    async with engine.connect() as connection:
        first, last = (await connection.execute(query)).one()
    if first is None or last is None:
        return None
    return int(first), int(last)


async def latest_bucket_counts(
    engine: AsyncEngine,
    *,
    as_of_ms: int | None = None,
    since_ms: int | None = None,
) -> dict[str, int]:
    """Accounts per bucket by each account's latest stored score.

    ``as_of_ms``: the portfolio as it was then (latest row with ``as_of <=
    as_of_ms``); ``since_ms``: only accounts whose latest row is at or after it
    (leaves out accounts gone quiet). Always has the keys green, yellow, red.
    """
    t = ScoreHistoryRow
    latest = select(t.account_id, func.max(t.as_of).label("as_of"))
    if as_of_ms is not None:
        latest = latest.where(t.as_of <= as_of_ms)
    sub = latest.group_by(t.account_id).subquery()
    query = (
        select(t.bucket, func.count().label("accounts"))
        .join(sub, and_(t.account_id == sub.c.account_id, t.as_of == sub.c.as_of))
        .group_by(t.bucket)
    )
    if since_ms is not None:
        query = query.where(t.as_of >= since_ms)
    counts = dict.fromkeys(BUCKETS, 0)
    async with engine.connect() as connection:
        for bucket, accounts in (await connection.execute(query)).all():
            counts[bucket] = int(accounts)
    return counts


async def scores_as_of(engine: AsyncEngine, as_of_ms: int) -> list[dict[str, Any]]:
    """Each account's newest stored score at or before ``as_of_ms``, by account.

    The portfolio as the history knew it then (``vitals backtest --from-db``).
    Items are those of :func:`score_history` with ``include_payload``.
    """
    t = ScoreHistoryRow
    sub = (
        select(t.account_id, func.max(t.as_of).label("as_of"))
        .where(t.as_of <= as_of_ms)
        .group_by(t.account_id)
        .subquery()
    )
    query = (
        select(t)
        .join(sub, and_(t.account_id == sub.c.account_id, t.as_of == sub.c.as_of))
        .order_by(t.account_id)
    )
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [
        {
            "account_id": row.account_id,
            "as_of": format_utc(row.as_of),
            "score": row.score,
            "bucket": row.bucket,
            "grade": row.grade,
            "stage": row.stage,
            "scorecard": {"name": row.scorecard_name, "version": row.scorecard_version},
            "low_confidence": bool(row.low_confidence),
            "payload": row.payload,
        }
        for row in rows
    ]


async def score_time_range(engine: AsyncEngine) -> tuple[int, int] | None:
    """The ``as_of`` (epoch ms) of the oldest and the newest stored score; ``None``: none."""
    t = ScoreHistoryRow
    async with engine.connect() as connection:
        low, high = (await connection.execute(select(func.min(t.as_of), func.max(t.as_of)))).one()
    return None if low is None else (int(low), int(high))


async def score_points(engine: AsyncEngine) -> list[dict[str, Any]]:
    """Every stored score of every account, without the payload: ``{account_id,
    as_of, score, bucket}``, by account then ``as_of`` (a bucket history)."""
    t = ScoreHistoryRow
    query = select(t.account_id, t.as_of, t.score, t.bucket).order_by(t.account_id, t.as_of)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [
        {
            "account_id": row.account_id,
            "as_of": format_utc(row.as_of),
            "score": row.score,
            "bucket": row.bucket,
        }
        for row in rows
    ]


async def movers(
    engine: AsyncEngine,
    since_ms: int,
    limit: int = 20,
    *,
    until_ms: int | None = None,
    direction: Literal["both", "up", "down"] = "both",
) -> list[dict[str, Any]]:
    """Accounts whose score moved most in ``[since_ms, until_ms)``.

    The move of an account is its latest stored score minus its earliest one in
    the period (accounts with one stored score, or no move, are left out).
    ``direction``: ``both`` orders by the size of the move, ``down`` lists
    only drops (largest first), ``up`` only rises. Each item: ``{account_id,
    delta, score, previous_score, bucket, previous_bucket, as_of,
    previous_as_of}`` (``score``/``bucket``/``as_of``: the latest row).
    """
    _check_limit(limit)
    if direction not in ("both", "up", "down"):
        raise ValueError(f"direction must be both, up or down, got {direction!r}")
    t = ScoreHistoryRow
    bounds = (
        select(
            t.account_id,
            func.min(t.as_of).label("first_as_of"),
            func.max(t.as_of).label("last_as_of"),
        )
        .where(*_window(t.as_of, since_ms, until_ms))
        .group_by(t.account_id)
        .having(func.count() > 1)
        .subquery()
    )
    first = ScoreHistoryRow.__table__.alias("first_row")
    last = ScoreHistoryRow.__table__.alias("last_row")
    delta = (last.c.score - first.c.score).label("delta")
    query = (
        select(
            bounds.c.account_id,
            delta,
            last.c.score,
            first.c.score.label("previous_score"),
            last.c.bucket,
            first.c.bucket.label("previous_bucket"),
            last.c.as_of,
            first.c.as_of.label("previous_as_of"),
        )
        .join(
            first,
            and_(
                first.c.account_id == bounds.c.account_id,
                first.c.as_of == bounds.c.first_as_of,
            ),
        )
        .join(
            last,
            and_(
                last.c.account_id == bounds.c.account_id,
                last.c.as_of == bounds.c.last_as_of,
            ),
        )
    )
    moved = last.c.score - first.c.score
    if direction == "up":
        query = query.where(moved > 0).order_by(moved.desc())
    elif direction == "down":
        query = query.where(moved < 0).order_by(moved.asc())
    else:
        query = query.where(moved != 0).order_by(func.abs(moved).desc())
    query = query.order_by(bounds.c.account_id).limit(limit)
    async with engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    return [
        {
            "account_id": row.account_id,
            "delta": round(row.delta, 6),
            "score": row.score,
            "previous_score": row.previous_score,
            "bucket": row.bucket,
            "previous_bucket": row.previous_bucket,
            "as_of": format_utc(row.as_of),
            "previous_as_of": format_utc(row.previous_as_of),
        }
        for row in rows
    ]


async def bucket_changes_for(
    engine: AsyncEngine,
    account_id: str | None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Bucket changes of one account (``None``: every account), oldest first.

    Items have the ``vitals.health.bucket-changes`` message shape (without
    ``schema_version``).
    """
    _check_limit(limit)
    t = BucketChangeRow
    clauses = _window(t.as_of, since_ms, until_ms)
    if account_id is not None:
        clauses.append(t.account_id == account_id)
    query = (
        select(
            t.change_id,
            t.account_id,
            t.from_bucket,
            t.to_bucket,
            t.score,
            t.previous_score,
            t.drivers,
            t.as_of,
        )
        .where(*clauses)
        .order_by(t.as_of.desc(), t.id.desc())
        .limit(limit)
    )
    return [
        {
            "change_id": row.change_id,
            "account_id": row.account_id,
            "from_bucket": row.from_bucket,
            "to_bucket": row.to_bucket,
            "score": row.score,
            "previous_score": row.previous_score,
            "drivers": row.drivers,
            "as_of": format_utc(row.as_of),
        }
        for row in await _latest_first(engine, query)
    ]


async def triggers_for(
    engine: AsyncEngine,
    account_id: str | None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 100,
    *,
    playbook: str | None = None,
) -> list[dict[str, Any]]:
    """Playbook triggers of one account (``None``: every account), oldest first.

    ``playbook`` narrows to one playbook. Items have the
    ``vitals.playbooks.triggers`` message shape (without ``schema_version``).
    """
    _check_limit(limit)
    t = PlaybookTriggerRow
    clauses = _window(t.as_of, since_ms, until_ms)
    if account_id is not None:
        clauses.append(t.account_id == account_id)
    if playbook is not None:
        clauses.append(t.playbook == playbook)
    query = (
        select(t.trigger_id, t.playbook, t.account_id, t.reason, t.as_of, t.context)
        .where(*clauses)
        .order_by(t.as_of.desc(), t.id.desc())
        .limit(limit)
    )
    return [
        {
            "trigger_id": row.trigger_id,
            "playbook": row.playbook,
            "account_id": row.account_id,
            "reason": row.reason,
            "as_of": format_utc(row.as_of),
            "context": row.context,
        }
        for row in await _latest_first(engine, query)
    ]


async def pulses_for(
    engine: AsyncEngine,
    account_id: str,
    since_ms: int | None = None,
    until_ms: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """CSM pulses of one account by ``occurred_at``, oldest first.

    Each item: ``{event_id, account_id, rating, reason, occurred_at, expires_at}``.
    """
    _check_limit(limit)
    t = CsmPulseRow
    query = (
        select(t.event_id, t.account_id, t.rating, t.reason, t.occurred_at, t.expires_at)
        .where(t.account_id == account_id, *_window(t.occurred_at, since_ms, until_ms))
        .order_by(t.occurred_at.desc(), t.id.desc())
        .limit(limit)
    )
    return [
        {
            "event_id": row.event_id,
            "account_id": row.account_id,
            "rating": row.rating,
            "reason": row.reason,
            "occurred_at": format_utc(row.occurred_at),
            "expires_at": format_utc(row.expires_at),
        }
        for row in await _latest_first(engine, query)
    ]
