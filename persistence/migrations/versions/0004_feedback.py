"""Ground truth for served predictions: the `feedback` table.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 19:00:00+00:00

One row per (request_id, item, source), unique; an index on (model, region, feedback_time) for
the reports. No foreign key to `inferences`: the inference log is written asynchronously and
may later be partitioned and pruned by time, while feedback is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# BIGINT on PostgreSQL; INTEGER on SQLite, whose INTEGER PRIMARY KEY alone autoincrements.
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "feedback",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("item", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("region", sa.String(length=50), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("feedback_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint(
            "request_id", "item", "source", name=op.f("uq_feedback_request_id_item_source")
        ),
    )
    op.create_index(
        "ix_feedback_model_region_time", "feedback", ["model", "region", "feedback_time"]
    )


def downgrade() -> None:
    op.drop_index("ix_feedback_model_region_time", table_name="feedback")
    op.drop_table("feedback")
