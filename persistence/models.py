"""SQLAlchemy 2.0 typed models, portable to PostgreSQL (production, tests) and SQLite (embedded).

Alembic owns the schema (`persistence/migrations`): a change here needs a new revision there.

Every timestamp is stored in UTC. `UtcDateTime` converts aware datetimes to UTC before they are
written and hands back aware UTC datetimes on both back-ends; a naive datetime is taken to be
UTC already. Without it SQLite would drop the offset silently and PostgreSQL would read a naive
value in the session's time zone, and the history window would shift by the difference.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy import text as sql_text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so later migrations can refer to them (and SQLite batch mode works).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

SPLITS = ("train", "validation", "test")
VERSION_STATUSES = ("trained", "promoted", "archived")

# BIGINT on PostgreSQL; on SQLite only INTEGER PRIMARY KEY is an alias of the rowid that
# autoincrements, so the same column is INTEGER there.
BigIntId = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    """The current time, aware, in UTC."""
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """`value` as an aware UTC datetime; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE that always stores and returns aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else to_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else to_utc(value)


class Base(DeclarativeBase):
    """Declarative base of every table; its metadata is Alembic's target."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class TrainingExample(Base):
    """One labelled phrase of a model's training data, for one region."""

    __tablename__ = "training_examples"
    __table_args__ = (
        # The history window: WHERE model = ? AND region = ? AND example_time BETWEEN ? AND ?
        Index("ix_training_examples_model_region_time", "model", "region", "example_time"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(100), index=True)
    region: Mapped[str] = mapped_column(String(50), index=True)
    text: Mapped[str] = mapped_column(Text)
    label: Mapped[str] = mapped_column(String(200))
    # "train" | "validation" | "test", or NULL: split later by data preparation.
    split: Mapped[str | None] = mapped_column(String(20))
    # When the example happened (the history window filters on it).
    example_time: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    loaded_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # The file the row came from (absolute path), so a reload can replace exactly its rows.
    source: Mapped[str] = mapped_column(String(500))

    def __repr__(self) -> str:
        return f"TrainingExample(id={self.id}, model={self.model!r}, label={self.label!r})"


class ModelVersion(Base):
    """The model registry: one trained version of a model head for one region."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("name", "region", "version"),
        # The database, not only the code, keeps "at most one promoted version" true, also
        # when two promotions race (partial unique index: PostgreSQL and SQLite both have them).
        Index(
            "uq_model_versions_one_promoted",
            "name",
            "region",
            unique=True,
            postgresql_where=sql_text("status = 'promoted'"),
            sqlite_where=sql_text("status = 'promoted'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100))
    region: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(40))
    # "trained" | "promoted" | "archived"; at most one "promoted" per name and region.
    status: Mapped[str] = mapped_column(String(20), default="trained")
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    embedder_fingerprint: Mapped[str] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(Text)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Set by the admin "reload" call: every API worker reloads the version's files when this
    # changes (serving workers poll the promoted rows, so no restart or broadcast is needed).
    reload_requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    def __repr__(self) -> str:
        return (
            f"ModelVersion({self.name!r}, {self.region!r}, {self.version!r}, "
            f"status={self.status!r})"
        )


class Inference(Base):
    """One served prediction (the inference log), written by `persistence.inference_log`.

    A request of N texts gives N rows, `item` 0..N-1; (`request_id`, `item`) names the
    prediction (feedback refers to it). `request_id` is always made by the server (no client can
    collide with another request's rows); the caller's own X-Request-ID, when it sent one, is
    `client_request_id`, for correlation only. There is no surrogate id, whose extra index
    every prediction would pay for.

    On PostgreSQL the table is partitioned by day of `created_at` (migration 0005,
    `persistence.partitions`), and the key of a partitioned table must hold the partition key:
    the primary key is (`request_id`, `item`, `created_at`), as declared here. A row written
    twice (a replayed spool, a retried batch) carries the same `created_at`, so it is still
    stored once; a look-up by (`request_id`, `item`) uses the key's prefix in each partition.
    SQLite keeps the plain table and the key (`request_id`, `item`) of migration 0002 (0005
    changes nothing there); `create_all` on SQLite gives a plain table with this model's key.
    """

    __tablename__ = "inferences"
    __table_args__ = (
        # Production analysis: one model over a time range. On PostgreSQL it also carries the
        # columns the reports sum, so their scans of a window read the index alone (0006).
        Index(
            "ix_inferences_model_region_created_at",
            "model",
            "region",
            "created_at",
            postgresql_include=[
                "version",
                "item",
                "predicted_label",
                "probability",
                "cache_hit",
                "latency_ms",
            ],
        ),
        # Look-ups by the caller's id. Partial: most requests send none, and a row without one
        # then costs no index entry.
        Index(
            "ix_inferences_client_request_id",
            "client_request_id",
            postgresql_where=sql_text("client_request_id IS NOT NULL"),
            sqlite_where=sql_text("client_request_id IS NOT NULL"),
        ),
        # PostgreSQL only; the partitions themselves are made by `persistence.partitions`.
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    request_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    item: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True, default=utcnow)
    model: Mapped[str] = mapped_column(String(100))
    region: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(40))
    model_type: Mapped[str] = mapped_column(String(100))
    input_text: Mapped[str] = mapped_column(Text)
    predicted_label: Mapped[str] = mapped_column(String(200))
    probability: Mapped[float] = mapped_column(Float)
    # [{"label": ..., "probability": ...}, ...], best first.
    top_k: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    latency_ms: Mapped[float] = mapped_column(Float)
    cache_hit: Mapped[bool] = mapped_column(Boolean)
    embedder_fingerprint: Mapped[str] = mapped_column(String(64))
    # The caller's X-Request-ID (sane ones only: 1-64 of A-Z a-z 0-9 . _ : -), or NULL.
    client_request_id: Mapped[str | None] = mapped_column(String(64))

    def __repr__(self) -> str:
        return (
            f"Inference({self.request_id!r}#{self.item}, {self.model!r} {self.version!r} -> "
            f"{self.predicted_label!r})"
        )


class Feedback(Base):
    """The true label of one served prediction, from a source (a reviewer, a CRM, a CSV).

    One row per (`request_id`, `item`, `source`): the same feedback sent again changes nothing,
    a new label from the same source replaces the old one, and two sources may disagree (both
    kept). `model`, `region`, `version`, the prediction's time, served label and probability are
    copied from the prediction's inference row when the feedback is recorded, so reports read
    one model's feedback without a join into the log.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        UniqueConstraint("request_id", "item", "source"),
        # One model's feedback over a time range: by when it was known, and (the reports) by
        # when the prediction was made.
        Index("ix_feedback_model_region_time", "model", "region", "feedback_time"),
        Index("ix_feedback_model_region_prediction_time", "model", "region", "prediction_time"),
    )

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64))
    item: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(100))
    label: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(100))
    region: Mapped[str] = mapped_column(String(50))
    version: Mapped[str] = mapped_column(String(40))
    # When the truth was known (the caller's time, else the time it was recorded).
    feedback_time: Mapped[datetime] = mapped_column(UtcDateTime)
    # Copied from the prediction (its created_at, served label and probability) when the
    # feedback is recorded: the reports read feedback alone, also after the log's retention
    # dropped the prediction. NULL only for rows older than migration 0006 whose prediction was
    # gone by then.
    prediction_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    predicted_label: Mapped[str | None] = mapped_column(String(200))
    probability: Mapped[float | None] = mapped_column(Float)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    def __repr__(self) -> str:
        return f"Feedback({self.request_id!r}#{self.item}, {self.source!r} -> {self.label!r})"
