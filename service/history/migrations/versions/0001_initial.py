"""Initial history schema: score_history, bucket_changes, playbook_triggers, csm_pulses.

Revision ID: 0001
Revises:
Create Date: 2024-05-10
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MS = "epoch milliseconds, UTC"


def _id() -> sa.Column[int]:
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


def _document() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "score_history",
        _id(),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("as_of", sa.BigInteger(), nullable=False, comment=_MS),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("bucket", sa.String(16), nullable=False),
        sa.Column("grade", sa.String(1), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("scorecard_name", sa.Text(), nullable=False),
        sa.Column("scorecard_version", sa.Text(), nullable=False),
        sa.Column("low_confidence", sa.Boolean(), nullable=False),
        sa.Column(
            "payload",
            _document(),
            nullable=False,
            comment="the whole vitals.health.scores message",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_score_history"),
        sa.UniqueConstraint("account_id", "as_of", name="uq_score_history_account_id_as_of"),
    )
    op.create_index("ix_score_history_as_of", "score_history", ["as_of"])

    op.create_table(
        "bucket_changes",
        _id(),
        sa.Column("change_id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("from_bucket", sa.String(16), nullable=False),
        sa.Column("to_bucket", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("previous_score", sa.Float(), nullable=False),
        sa.Column("as_of", sa.BigInteger(), nullable=False, comment=_MS),
        sa.Column("drivers", _document(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_bucket_changes"),
        sa.UniqueConstraint("change_id", name="uq_bucket_changes_change_id"),
    )
    op.create_index("ix_bucket_changes_account_id_as_of", "bucket_changes", ["account_id", "as_of"])
    op.create_index("ix_bucket_changes_as_of", "bucket_changes", ["as_of"])

    op.create_table(
        "playbook_triggers",
        _id(),
        sa.Column("trigger_id", sa.Text(), nullable=False),
        sa.Column("playbook", sa.Text(), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("as_of", sa.BigInteger(), nullable=False, comment=_MS),
        sa.Column("context", _document(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_playbook_triggers"),
        sa.UniqueConstraint("trigger_id", name="uq_playbook_triggers_trigger_id"),
    )
    op.create_index(
        "ix_playbook_triggers_account_id_as_of", "playbook_triggers", ["account_id", "as_of"]
    )
    op.create_index(
        "ix_playbook_triggers_playbook_as_of", "playbook_triggers", ["playbook", "as_of"]
    )
    op.create_index("ix_playbook_triggers_as_of", "playbook_triggers", ["as_of"])

    op.create_table(
        "csm_pulses",
        _id(),
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("account_id", sa.String(128), nullable=False),
        sa.Column("rating", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("occurred_at", sa.BigInteger(), nullable=False, comment=_MS),
        sa.Column("expires_at", sa.BigInteger(), nullable=False, comment=_MS),
        sa.PrimaryKeyConstraint("id", name="pk_csm_pulses"),
        sa.UniqueConstraint("event_id", name="uq_csm_pulses_event_id"),
    )
    op.create_index(
        "ix_csm_pulses_account_id_occurred_at", "csm_pulses", ["account_id", "occurred_at"]
    )


def downgrade() -> None:
    op.drop_table("csm_pulses")
    op.drop_table("playbook_triggers")
    op.drop_table("bucket_changes")
    op.drop_table("score_history")
