"""The inference log (`inferences`) and the registry's reload marker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 13:05:00+00:00

Plain SQLAlchemy types only, as in 0001. The new registry column goes through batch mode, which
SQLite needs for ALTER TABLE (on PostgreSQL it is a plain ALTER TABLE ... ADD COLUMN).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inferences",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("item", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=100), nullable=False),
        sa.Column("region", sa.String(length=50), nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("model_type", sa.String(length=100), nullable=False),
        sa.Column("input_text", sa.Text(), nullable=False),
        sa.Column("predicted_label", sa.String(length=200), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("top_k", sa.JSON(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("embedder_fingerprint", sa.String(length=64), nullable=False),
        # The natural key: idempotent writes need it, and a surrogate id would only add an
        # index to maintain on every prediction.
        sa.PrimaryKeyConstraint("request_id", "item", name=op.f("pk_inferences")),
    )
    op.create_index(
        "ix_inferences_model_region_created_at",
        "inferences",
        ["model", "region", "created_at"],
    )
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("reload_requested_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("reload_requested_at")
    op.drop_index("ix_inferences_model_region_created_at", table_name="inferences")
    op.drop_table("inferences")
