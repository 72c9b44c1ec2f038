"""The indexes and columns that make the production reports fast on a large log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 22:30:00+00:00

- `inferences`' (model, region, created_at) index also carries, on PostgreSQL, the columns the
  reports sum (version, item, predicted_label, probability, cache_hit, latency_ms) as INCLUDE
  columns: the traffic, label, confidence and latency figures of a window are then index-only
  scans, which read about a sixth of what the table's pages hold (the top-k JSON and the text
  stay out). Measured on 1,000,000 rows (bench/bench_reports.py): about half the time of a scan
  of the partitions. The index grows by about 30 bytes a row; the writer pays that on insert.
  SQLite keeps the plain index (it has no INCLUDE).
- `feedback` gets a copy of what it is the truth for: the prediction's time, served label and
  probability (`prediction_time`, `predicted_label`, `probability`, copied from the inference
  row when the feedback is recorded, as model, region and version already are), and an index on
  (model, region, prediction_time). A report's accuracy, F1 and calibration then read the
  window's feedback alone, with no join into the log, and keep working for predictions whose
  partition the retention dropped. Existing rows are filled from `inferences` here; a row whose
  prediction is gone keeps NULLs and is left out of the reports.

On a partitioned `inferences` (PostgreSQL, 0005) the index is built on every partition inside
the migration's transaction, with the table locked for writes: about 6 s per million rows here.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_inferences_model_region_created_at"
_KEY = ["model", "region", "created_at"]
# Kept in step with persistence/models.py (Inference.__table_args__).
_COVERED = ["version", "item", "predicted_label", "probability", "cache_hit", "latency_ms"]
_FEEDBACK_INDEX = "ix_feedback_model_region_prediction_time"


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    if postgres:
        op.drop_index(_INDEX, table_name="inferences")
        op.create_index(_INDEX, "inferences", _KEY, postgresql_include=_COVERED)
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("prediction_time", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("predicted_label", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("probability", sa.Float(), nullable=True))
    op.execute(
        "UPDATE feedback SET "
        "prediction_time = (SELECT i.created_at FROM inferences i "
        "WHERE i.request_id = feedback.request_id AND i.item = feedback.item), "
        "predicted_label = (SELECT i.predicted_label FROM inferences i "
        "WHERE i.request_id = feedback.request_id AND i.item = feedback.item), "
        "probability = (SELECT i.probability FROM inferences i "
        "WHERE i.request_id = feedback.request_id AND i.item = feedback.item)"
    )
    op.create_index(_FEEDBACK_INDEX, "feedback", ["model", "region", "prediction_time"])


def downgrade() -> None:
    op.drop_index(_FEEDBACK_INDEX, table_name="feedback")
    with op.batch_alter_table("feedback") as batch:
        batch.drop_column("probability")
        batch.drop_column("predicted_label")
        batch.drop_column("prediction_time")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index(_INDEX, table_name="inferences")
        op.create_index(_INDEX, "inferences", _KEY)
