"""The SQL of the production reports: aggregates of one model's inference log (and its feedback)
over a time window, grouped into hour, day or week buckets.

Everything is summed by the database; only the request latencies come back row by row, on
SQLite (PostgreSQL computes the percentiles itself, with `percentile_cont`, the same linear
interpolation as numpy's default). Both back-ends are supported: PostgreSQL in production,
SQLite for the embedded single-machine default.

On PostgreSQL the scans of the log read the (model, region, created_at) index alone, which
carries the summed columns (migration 0006); only the share of phrases seen in training needs
the texts, and the fallback rate of a version whose rule is unknown needs the top-k. Feedback
is read from its own table, which holds a copy of each prediction's time, label and
probability: no join into the log.

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
    or_,
    select,
    text,
    tuple_,
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

    def where(self, table=_inferences, time: str = "created_at") -> ColumnElement[bool]:
        """The scope's rows of `table` (the log, or feedback by its `prediction_time`)."""
        clauses = [
            table.c.model == self.model,
            table.c.region == self.region,
            table.c[time] >= to_utc(self.start),
            table.c[time] < to_utc(self.end),
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


def _bin(connection: Connection, probability, bins: int) -> ColumnElement[int]:
    """The bin of `probability` among `bins` equal parts of [0, 1], the last one closed: the
    floor of probability * bins, as numpy's astype(int) gives it for values >= 0. PostgreSQL's
    integer cast rounds (9.5 -> 10), so it takes floor; SQLite's CAST truncates, which is floor
    here (and SQLite has no floor unless built with its math functions)."""
    scaled = probability * bins
    if connection.dialect.name == "postgresql":
        raw = cast(func.floor(scaled), Integer)
    else:
        raw = cast(scaled, Integer)
    return case((raw >= bins, bins - 1), (raw < 0, 0), else_=raw)


def _as_int(condition: ColumnElement[bool]) -> ColumnElement[int]:
    return case((condition, 1), else_=0)


def traffic(connection: Connection, scope: Scope, granularity: Granularity) -> list[dict[str, Any]]:
    """Per bucket and version: texts, requests (rows of item 0), cache hits and the sum of the
    served labels' probabilities."""
    bucket = bucket_start(connection, granularity).label("bucket")
    c = _inferences.c
    query = (
        select(
            bucket,
            c.version,
            func.count().label("texts"),
            func.sum(_as_int(c.item == 0)).label("requests"),
            func.sum(_as_int(c.cache_hit)).label("cache_hits"),
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
            "probability_sum": float(row.probability_sum or 0.0),
        }
        for row in connection.execute(query)
    ]


def fallback_counts(
    connection: Connection, scope: Scope, rules: dict[str, float | None]
) -> dict[str, int]:
    """Per version: the predictions its `[serving]` fallback rule answered.

    `rules` gives each version's `min_probability` when its rule is known: the rule answers a
    prediction exactly when the top probability is under it, and then the served probability
    (the fallback label's, or the top one when the fallback label is no class) is under it too,
    while any other served probability is the top one. So the count reads the summed columns
    only. None marks a version whose rule is unknown (its files are not here): its rows are
    checked one by one, the served label against the top of the top-k. A version whose rule is
    off (0) counts 0, without a query.
    """
    c = _inferences.c
    known = {v: p for v, p in rules.items() if p is not None and p > 0}
    unknown = sorted(v for v, p in rules.items() if p is None)
    counts = dict.fromkeys(rules, 0)
    conditions = [and_(c.version == v, c.probability < p) for v, p in sorted(known.items())]
    if unknown:
        conditions.append(
            and_(c.version.in_(unknown), c.predicted_label != _served_top_label(connection))
        )
    if not conditions:
        return counts
    query = (
        select(c.version, func.count()).where(scope.where(), or_(*conditions)).group_by(c.version)
    )
    counts.update({version: int(n) for version, n in connection.execute(query)})
    return counts


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
        # One pass: per bucket and, in the same statement, over the window (the empty set).
        query = (
            select(func.grouping(bucket).label("overall"), bucket, percentiles.label("p"))
            .where(where)
            .group_by(func.grouping_sets(tuple_(bucket), tuple_()))
        )
        overall, buckets = None, {}
        for row in connection.execute(query):
            if row.p is None:
                continue
            values = [float(v) for v in row.p]
            if row.overall:
                overall = values
            else:
                buckets[to_bucket(row.bucket)] = values
        return overall, buckets
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
    index = _bin(connection, c.probability, PROBABILITY_BINS)
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


def _latest_feedback(scope: Scope):
    """The scope's feedback, one row per prediction: where sources disagree, the most recently
    recorded label (a later correction wins; ties go to the source that sorts first)."""
    f = _feedback.c
    rank = (
        func.row_number()
        .over(partition_by=(f.request_id, f.item), order_by=(f.recorded_at.desc(), f.source))
        .label("rank")
    )
    ranked = select(f.prediction_time, f.predicted_label, f.label, f.probability, rank).where(
        scope.where(_feedback, "prediction_time")
    )
    return ranked.subquery("ranked")


def feedback_counts(
    connection: Connection, scope: Scope, granularity: Granularity
) -> list[tuple[datetime, str, str, int]]:
    """(bucket of the prediction, served label, true label, count) over the scope's predictions
    with feedback, one label per prediction (`_latest_feedback`)."""
    latest = _latest_feedback(scope)
    bucket = bucket_start(connection, granularity, latest.c.prediction_time).label("bucket")
    query = (
        select(bucket, latest.c.predicted_label, latest.c.label, func.count())
        .where(latest.c.rank == 1)
        .group_by(bucket, latest.c.predicted_label, latest.c.label)
    )
    return [
        (to_bucket(b), served, true, int(n)) for b, served, true, n in connection.execute(query)
    ]


def calibration_bins(
    connection: Connection, scope: Scope, bins: int
) -> list[tuple[int, bool, int, float]]:
    """(confidence bin, served label right, count, sum of the served probability) over the
    scope's predictions with feedback, one label per prediction: `bins` equal parts of [0, 1],
    the last one closed, as `dc.reports.stats.expected_calibration_error` cuts them."""
    latest = _latest_feedback(scope)
    index = _bin(connection, latest.c.probability, bins).label("bin")
    right = case((latest.c.predicted_label == latest.c.label, 1), else_=0).label("right")
    query = (
        select(index, right, func.count(), func.sum(latest.c.probability))
        .where(latest.c.rank == 1)
        .group_by(index, right)
    )
    return [
        (int(b), bool(ok), int(n), float(total)) for b, ok, n, total in connection.execute(query)
    ]
