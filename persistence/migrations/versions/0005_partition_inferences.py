"""The inference log partitioned by day on PostgreSQL, with a default partition.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 21:30:00+00:00

On PostgreSQL `inferences` becomes a table partitioned by range of `created_at`: one partition
per UTC day, `inferences_pYYYYMMDD` for [day 00:00 UTC, next day 00:00 UTC), and the DEFAULT
partition `inferences_default`, which takes any row no daily partition covers (a spool
replayed weeks later, a skewed clock) so that no row is ever refused for its time. Old days are
then dropped whole instead of deleted row by row, and new ones made ahead of time, by
`persistence.partitions` (the log writer and `scripts/maintain_partitions.py`).

A primary key of a partitioned table must hold the partition key: it becomes (`request_id`,
`item`, `created_at`). The upgrade renames the plain table out of the way, creates the
partitioned one with a partition for every day that has rows and for today and the next 7 days
(one PL/pgSQL block, so `alembic upgrade --sql` writes it too), moves the rows, then builds the
key and both indexes (the (model, region, created_at) index and the partial client_request_id
one) once over the loaded partitions, which is faster than maintaining them row by row. The rows
are copied inside the migration's transaction, with the table locked: about 10 s per million
rows on the 2-core CI machine (1 M rows: 10 s up, 6 s down), while the API's log writers wait
and their rows stay in their journals.

The downgrade does the reverse: a plain table with the key (`request_id`, `item`), every row
moved back. It fails, changing nothing, when two rows share a (`request_id`, `item`) under
different times, which the plain table cannot hold.

On SQLite (the embedded default) both directions do nothing: the plain table and its key
(`request_id`, `item`) stay. Plain SQLAlchemy types only, and no application code: the naming
below is `persistence.partitions`'s, frozen here (a test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE = "inferences"
# The table being replaced, while its rows move: the plain one (upgrade), the partitioned one.
_ASIDE = "inferences_unpartitioned"
_ASIDE_DOWN = "inferences_partitioned"
_DEFAULT = "inferences_default"
_DAYS_AHEAD = 7  # the writers' maintenance keeps DC_PARTITIONS_AHEAD_DAYS from then on
_COLUMNS = (
    "request_id, item, created_at, model, region, version, model_type, input_text, "
    "predicted_label, probability, top_k, latency_ms, cache_hit, embedder_fingerprint, "
    "client_request_id"
)
_WITH_CLIENT_ID = sa.text("client_request_id IS NOT NULL")
_INDEXES = ("ix_inferences_model_region_created_at", "ix_inferences_client_request_id")

# One partition per UTC day that has rows in the table set aside, and per day from today to
# today + _DAYS_AHEAD. Bounds are written with their offset, so the session's time zone does
# not matter.
_CREATE_DAILY_PARTITIONS = f"""
DO $$
DECLARE
    day date;
BEGIN
    FOR day IN
        SELECT DISTINCT (created_at AT TIME ZONE 'UTC')::date FROM {_ASIDE}
        UNION
        SELECT (now() AT TIME ZONE 'UTC')::date + ahead
        FROM generate_series(0, {_DAYS_AHEAD}) AS ahead
    LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF {_TABLE} FOR VALUES FROM (%L) TO (%L)',
            'inferences_p' || to_char(day, 'YYYYMMDD'),
            to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
            to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00'
        );
    END LOOP;
END
$$
"""


def _columns() -> list[sa.Column]:
    """The columns of `inferences` as 0002 and 0003 made them, in the same order."""
    return [
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
        sa.Column("client_request_id", sa.String(length=64), nullable=True),
    ]


def _on_postgresql() -> bool:
    return op.get_context().dialect.name == "postgresql"


def _set_aside(aside: str) -> None:
    """Rename `inferences`, its key and its indexes to `aside`'s, out of their successors' way."""
    op.rename_table(_TABLE, aside)
    op.execute(f"ALTER TABLE {aside} RENAME CONSTRAINT pk_{_TABLE} TO pk_{aside}")
    for name in _INDEXES:
        op.execute(f"ALTER INDEX {name} RENAME TO {name.replace(_TABLE, aside, 1)}")


def _move_rows_and_index(aside: str, key: list[str]) -> None:
    """Copy the rows of `aside` into the new `inferences`, drop `aside`, then build the primary
    key `key` and both indexes over the loaded rows."""
    op.execute(f"INSERT INTO {_TABLE} ({_COLUMNS}) SELECT {_COLUMNS} FROM {aside}")
    op.drop_table(aside)  # its key, its indexes and its partitions go with it
    op.create_primary_key(f"pk_{_TABLE}", _TABLE, key)
    op.create_index(_INDEXES[0], _TABLE, ["model", "region", "created_at"])
    op.create_index(
        _INDEXES[1],
        _TABLE,
        ["client_request_id"],
        postgresql_where=_WITH_CLIENT_ID,
        sqlite_where=_WITH_CLIENT_ID,
    )


def upgrade() -> None:
    if not _on_postgresql():
        return  # SQLite: the plain table stays
    _set_aside(_ASIDE)
    op.create_table(_TABLE, *_columns(), postgresql_partition_by="RANGE (created_at)")
    op.execute(f"CREATE TABLE {_DEFAULT} PARTITION OF {_TABLE} DEFAULT")
    op.execute(_CREATE_DAILY_PARTITIONS)
    _move_rows_and_index(_ASIDE, ["request_id", "item", "created_at"])


def downgrade() -> None:
    if not _on_postgresql():
        return
    _set_aside(_ASIDE_DOWN)  # the partitioned table, with every partition
    op.create_table(_TABLE, *_columns())
    try:
        _move_rows_and_index(_ASIDE_DOWN, ["request_id", "item"])
    except sa.exc.IntegrityError as error:
        raise RuntimeError(
            "cannot downgrade the inference log below 0005: some rows share a (request_id, "
            "item) under different created_at values, which the unpartitioned key (request_id, "
            "item) cannot hold; delete the unwanted ones, then downgrade again (nothing was "
            "changed)"
        ) from error
