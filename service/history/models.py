"""SQL tables of the score history (SQLAlchemy 2 typed declarative models).

The history sink (:mod:`service.history.sink`) fills them from the output
topics and the engagement input topic; :mod:`service.history.db` migrates and
queries them. Every time is integer epoch milliseconds, UTC (``BIGINT``): it
compares and indexes the same way on SQLite and PostgreSQL and is what the
rest of vitals uses internally; the query functions render RFC 3339 strings.

Idempotence: every table has a natural unique key (``score_history``:
``(account_id, as_of)``; the others: the message's deterministic id), and the
sink inserts with ``ON CONFLICT DO NOTHING``, so replaying a topic adds no rows.

The schema is created by the Alembic migrations in ``service/history/migrations``
(never by ``metadata.create_all`` in production); a test checks that the
migrations and these models agree.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

__all__ = [
    "NAMING_CONVENTION",
    "Base",
    "BucketChangeRow",
    "CsmPulseRow",
    "PlaybookTriggerRow",
    "ScoreHistoryRow",
]

#: Deterministic constraint / index names, so migrations can refer to them.
NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Surrogate key: BIGINT on PostgreSQL, INTEGER on SQLite (only ``INTEGER
#: PRIMARY KEY`` is SQLite's auto-incrementing rowid).
Id: Final[TypeEngine[int]] = BigInteger().with_variant(Integer(), "sqlite")
#: JSON documents: JSONB on PostgreSQL, JSON (text) elsewhere.
Document: Final[TypeEngine[Any]] = JSON().with_variant(JSONB(), "postgresql")

_MS = "epoch milliseconds, UTC"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ScoreHistoryRow(Base):
    """A stored health score: on change, and at least daily per active account."""

    __tablename__ = "score_history"
    __table_args__ = (
        # Also the index of per-account time-range queries.
        UniqueConstraint("account_id", "as_of"),
        Index("ix_score_history_as_of", "as_of"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    account_id: Mapped[str] = mapped_column(String(128))
    as_of: Mapped[int] = mapped_column(BigInteger, comment=_MS)
    score: Mapped[float] = mapped_column(Float)
    bucket: Mapped[str] = mapped_column(String(16))
    grade: Mapped[str] = mapped_column(String(1))
    stage: Mapped[str] = mapped_column(Text)
    scorecard_name: Mapped[str] = mapped_column(Text)
    scorecard_version: Mapped[str] = mapped_column(Text)
    low_confidence: Mapped[bool] = mapped_column(Boolean)
    payload: Mapped[dict[str, Any]] = mapped_column(
        Document, comment="the whole vitals.health.scores message"
    )


class BucketChangeRow(Base):
    """A message of ``vitals.health.bucket-changes``."""

    __tablename__ = "bucket_changes"
    __table_args__ = (
        UniqueConstraint("change_id"),
        Index("ix_bucket_changes_account_id_as_of", "account_id", "as_of"),
        Index("ix_bucket_changes_as_of", "as_of"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    change_id: Mapped[str] = mapped_column(Text)
    account_id: Mapped[str] = mapped_column(String(128))
    from_bucket: Mapped[str] = mapped_column(String(16))
    to_bucket: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Float)
    previous_score: Mapped[float] = mapped_column(Float)
    as_of: Mapped[int] = mapped_column(BigInteger, comment=_MS)
    drivers: Mapped[list[dict[str, Any]]] = mapped_column(Document)


class PlaybookTriggerRow(Base):
    """A message of ``vitals.playbooks.triggers``."""

    __tablename__ = "playbook_triggers"
    __table_args__ = (
        UniqueConstraint("trigger_id"),
        Index("ix_playbook_triggers_account_id_as_of", "account_id", "as_of"),
        Index("ix_playbook_triggers_playbook_as_of", "playbook", "as_of"),
        Index("ix_playbook_triggers_as_of", "as_of"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    trigger_id: Mapped[str] = mapped_column(Text)
    playbook: Mapped[str] = mapped_column(Text)
    account_id: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text)
    as_of: Mapped[int] = mapped_column(BigInteger, comment=_MS)
    context: Mapped[dict[str, Any]] = mapped_column(Document)


class CsmPulseRow(Base):
    """A CSM pulse (``pulse`` events of the engagement input topic)."""

    __tablename__ = "csm_pulses"
    __table_args__ = (
        UniqueConstraint("event_id"),
        Index("ix_csm_pulses_account_id_occurred_at", "account_id", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128))
    account_id: Mapped[str] = mapped_column(String(128))
    rating: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[int] = mapped_column(BigInteger, comment=_MS)
    expires_at: Mapped[int] = mapped_column(BigInteger, comment=_MS)
