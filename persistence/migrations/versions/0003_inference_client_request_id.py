"""The caller's own request id beside the server's key in the inference log.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00+00:00

`inferences.request_id` is now always made by the server; a client's X-Request-ID goes to the
new nullable `client_request_id`, with a partial index for look-ups (rows without one cost no
index entry). Adding a nullable column without a default is a catalogue change on PostgreSQL
(no table rewrite); SQLite goes through batch mode, as in 0002.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("client_request_id IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("inferences") as batch:
        batch.add_column(sa.Column("client_request_id", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_inferences_client_request_id",
        "inferences",
        ["client_request_id"],
        postgresql_where=_WHERE,
        sqlite_where=_WHERE,
    )


def downgrade() -> None:
    op.drop_index("ix_inferences_client_request_id", table_name="inferences")
    with op.batch_alter_table("inferences") as batch:
        batch.drop_column("client_request_id")
