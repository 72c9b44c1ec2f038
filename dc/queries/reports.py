"""The SQL of the production reports: aggregates of one model's inference log (and its feedback)
over a time window, grouped into hour, day or week buckets.

Everything that can be summed is summed by the database; only what it cannot sum portably comes
back row by row: the request latencies on SQLite (PostgreSQL computes the percentiles itself,
with `percentile_cont`, the same linear interpolation as numpy's default) and the feedback pairs,
at most one per prediction that received feedback. Both back-ends are supported: PostgreSQL in
production, SQLite for the embedded single-machine default.

The window is half-open, ``start <= created_at < end``, and filters on the inference log's
(model, region, created_at) index (on PostgreSQL also the partition key). Buckets are in UTC:
an hour, a day, or an ISO week starting on Monday.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Float,
    Integer,
    and_,
    case,
    cast,
    func,
    literal_column,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY

from persistence.models import Feedback, Inference, to_utc

Granularity = Literal["hour", "day", "week"]
GRANULARITIES: tuple[str, ...] = ("hour", "day", "week")
# Bins of the top-probability histogram: [0, 0.05), [0.05, 0.1), ... [0.95, 1.0].
PROBABILITY_BINS = 20
PERCENTILES = (0.50, 0.95, 0.99)

_inferences = Inference.__table__
_feedback = Feedback.__table__


@dataclass(frozen=True)
class Scope:
    """Which rows a report reads: one model in one region over ``[start, end)``, optionally only
    the predictions of one version."""

    model: str
    region: str
    start: datetime
    end: datetime
    version: str | None = None

    def where(self, table=_inferences) -> ColumnElement[bool]:
        clauses = [
            table.c.model == self.model,
            table.c.region == self.region,
            table.c.created_at >= to_utc(self.start),
            table.c.created_at < to_utc(self.end),
        ]
        if self.version is not None:
            clauses.append(table.c.version == self.version)
        return and_(*clauses)


def bucket_start(connection: Connection, granularity: Granularity, column=None) -> ColumnElement:
    """The start of the UTC bucket of `column` (created_at by default), as the dialect writes it:
    a naive UTC timestamp on PostgreSQL, ISO text on SQLite (`to_bucket` reads both)."""
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, not {granularity!r}")
    column = _inferences.c.created_at if column is None else column
    if connection.dialect.name == "postgresql":
        # AT TIME ZONE 'UTC' first: date_trunc of a timestamptz would cut in the session's zone.
        return func.date_trunc(granularity, column.op("AT TIME ZONE")(literal_column("'UTC'")))
    if granularity == "hour":
        return func.strftime("%Y-%m-%d %H:00:00", column)
    if granularity == "day":
        return func.date(column)
    return func.date(column, "weekday 0", "-6 days")  # the Monday on or before the day


def to_bucket(value: Any) -> datetime:
    """A bucket start as the database returned it -> an aware UTC datetime."""
    if isinstance(value, datetime):
        return to_utc(value)
    parsed = datetime.fromisoformat(str(value))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _served_top_label(connection: Connection) -> ColumnElement:
    """The top class of the row's top-k list (the head's own choice, before the fallback rule)."""
    if connection.dialect.name == "postgresql":
        return _inferences.c.top_k.op("#>>")(literal_column("'{0,label}'"))
    return func.json_extract(_inferences.c.top_k, "$[0].label")


def _as_int(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def traffic(connection: Connection, scope: Scope, granularity: Granularity) -> list[dict[str, Any]]:
    """Per bucket and version: texts, requests (rows of item 0), cache hits, fallback-rule
    answers (the served label is not the head's top class) and the sum of the served labels'
    probabilities."""
    bucket = bucket_start(connection, granularity).label("bucket")
    c = _inferences.c
    query = (
        select(
            bucket,
            c.version,
            func.count().label("texts"),
            func.sum(_as_int(c.item == 0)).label("requests"),
            func.sum(_as_int(c.cache_hit)).label("cache_hits"),
            func.sum(_as_int(c.predicted_label != _served_top_label(connection))).label(
                "fallbacks"
            ),
            func.sum(c.probability).label("probability_sum"),
        )
        .where(scope.where())
        .group_by(bucket, c.version)
        .order_by(bucket, c.version)
    )
    return [
        {
            "bucket": to_bucket(row.bucket),
            "version": row.version,
            "texts": int(row.texts),
            "requests": int(row.requests or 0),
            "cache_hits": int(row.cache_hits or 0),
            "fallbacks": int(row.fallbacks or 0),
            "probability_sum": float(row.probability_sum or 0.0),
        }
        for row in connection.execute(query)
    ]


def latency_percentiles(
    connection: Connection, scope: Scope, granularity: Granularity
) -> tuple[list[float] | None, dict[datetime, list[float]]]:
    """p50, p95 and p99 of the request latency (ms), over the window and per bucket.

    One latency per request: the row of item 0 carries it (every item of a request has the
    request's latency). On PostgreSQL the database interpolates (`percentile_cont`); on SQLite
    the latencies come back and numpy interpolates the same way.

    Returns:
        (the window's [p50, p95, p99], or None without requests; {bucket: [p50, p95, p99]}).
    """
    bucket = bucket_start(connection, granularity).label("bucket")
    c = _inferences.c
    where = and_(scope.where(), c.item == 0)
    if connection.dialect.name == "postgresql":
        fractions = cast(list(PERCENTILES), ARRAY(Float))
        percentiles = func.percentile_cont(fractions).within_group(c.latency_ms)
        overall = connection.execute(select(percentiles).where(where)).scalar()
        buckets = connection.execute(
            select(bucket, percentiles.label("p")).where(where).group_by(bucket)
        ).all()
        return (
            [float(v) for v in overall] if overall else None,
            {to_bucket(row.bucket): [float(v) for v in row.p] for row in buckets},
        )
    import numpy as np

    rows = connection.execute(select(bucket, c.latency_ms).where(where)).all()
    if not rows:
        return None, {}
    grouped: dict[datetime, list[float]] = {}
    for row in rows:
        grouped.setdefault(to_bucket(row.bucket), []).append(float(row.latency_ms))
    q = [100 * p for p in PERCENTILES]
    everything = np.fromiter((float(row.latency_ms) for row in rows), dtype=float)
    return (
        [float(v) for v in np.percentile(everything, q)],
        {key: [float(v) for v in np.percentile(values, q)] for key, values in grouped.items()},
    )


def label_counts(
    connection: Connection, scope: Scope, granularity: Granularity
) -> list[tuple[datetime, str, int]]:
    """(bucket, served label, count) for every label served in each bucket."""
    bucket = bucket_start(connection, granularity).label("bucket")
    c = _inferences.c
    query = (
        select(bucket, c.predicted_label, func.count().label("n"))
        .where(scope.where())
        .group_by(bucket, c.predicted_label)
    )
    return [(to_bucket(b), label, int(n)) for b, label, n in connection.execute(query)]


def probability_histogram(connection: Connection, scope: Scope) -> list[int]:
    """Counts of the served labels' probabilities in `PROBABILITY_BINS` equal bins over [0, 1]
    (the last bin includes 1.0)."""
    c = _inferences.c
    # CAST truncates toward zero, which is floor for probabilities >= 0 (SQLite has no floor
    # unless built with its math functions).
    raw = cast(c.probability * PROBABILITY_BINS, Integer)
    index = case((raw >= PROBABILITY_BINS, PROBABILITY_BINS - 1), (raw < 0, 0), else_=raw)
    query = select(index.label("bin"), func.count()).where(scope.where()).group_by(index)
    counts = [0] * PROBABILITY_BINS
    for position, n in connection.execute(query):
        counts[int(position)] += int(n)
    return counts


def seen_in_training(connection: Connection, scope: Scope, texts: Sequence[str]) -> int:
    """How many of the scope's predictions have an input text that is one of `texts` (exactly).

    The texts travel as one JSON parameter, unpacked by the database into a set the planner
    hashes (a hashed subplan on PostgreSQL, an ephemeral index on SQLite): one pass over the
    window's rows, no temporary table (so it also runs on a read-only replica).
    """
    c = _inferences.c
    if connection.dialect.name == "postgresql":
        members = text("SELECT json_array_elements_text(CAST(:texts AS json))")
    else:
        members = text("SELECT value FROM json_each(:texts)")
    members = members.bindparams(texts=json.dumps(list(texts), ensure_ascii=False))
    query = select(func.count()).where(scope.where(), c.input_text.in_(members))
    return int(connection.execute(query).scalar() or 0)


def feedback_pairs(connection: Connection, scope: Scope) -> list[dict[str, Any]]:
    """One (served label, true label) pair per prediction of the scope that received feedback.

    Where sources disagree on one prediction, the most recently recorded label counts (a later
    correction wins); ties go to the source that sorts first, so the choice is deterministic.

    Returns:
        Rows with created_at (aware UTC), version, predicted (label), probability, label (true).
    """
    i, f = _inferences.c, _feedback.c
    query = (
        select(
            i.request_id,
            i.item,
            i.created_at,
            i.version,
            i.predicted_label,
            i.probability,
            f.label,
            f.recorded_at,
            f.source,
        )
        .select_from(
            _feedback.join(_inferences, and_(f.request_id == i.request_id, f.item == i.item))
        )
        .where(scope.where(), f.model == scope.model, f.region == scope.region)
    )
    rows = sorted(connection.execute(query), key=lambda row: row.source)
    rows.sort(key=lambda row: to_utc(row.recorded_at), reverse=True)  # stable: source order kept
    chosen: dict[tuple[str, int], Any] = {}
    for row in rows:
        chosen.setdefault((row.request_id, row.item), row)
    return [
        {
            "created_at": to_utc(row.created_at),
            "version": row.version,
            "predicted": row.predicted_label,
            "probability": float(row.probability),
            "label": row.label,
        }
        for _, row in sorted(chosen.items())
    ]
