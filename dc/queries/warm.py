"""The SQL of the embedder's warm start: the most frequent input texts of the inference log's
recent past, which a freshly started embedder encodes so that they are cached before they are
asked for (dc.nlp.warm_start).

SQLAlchemy Core with bound parameters, on PostgreSQL and SQLite alike. The window is half-open,
``since <= created_at < until``; on PostgreSQL `created_at` is the partition key, so only the
window's daily partitions are read.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine, Select, func, select

from dc.utilities.decorators import db_retry
from persistence.models import Inference, to_utc, utcnow

_inferences = Inference.__table__


def select_frequent_texts(since: datetime, until: datetime, limit: int) -> Select:
    """Distinct `input_text`s logged in ``[since, until)``, most frequent first, at most
    `limit`; ties by text, so the same rows always give the same answer.

    Columns: input_text, uses (how many predictions asked for it).
    """
    uses = func.count().label("uses")
    return (
        select(_inferences.c.input_text, uses)
        .where(_inferences.c.created_at >= to_utc(since), _inferences.c.created_at < to_utc(until))
        .group_by(_inferences.c.input_text)
        .order_by(uses.desc(), _inferences.c.input_text)
        .limit(limit)
    )


def fetch_frequent_texts(
    engine: Engine,
    limit: int,
    *,
    window: timedelta = timedelta(days=1),
    now: datetime | None = None,
    retries: int = 3,
) -> list[str]:
    """The `limit` most frequent distinct texts of the last `window` before `now` (default:
    the current time), most frequent first. A lost connection is retried `retries` times (the
    query only reads)."""
    if limit <= 0:
        return []
    until = to_utc(now) if now is not None else utcnow()
    query = select_frequent_texts(until - window, until, limit)

    @db_retry(retries=retries)
    def fetch() -> list[str]:
        with engine.connect() as connection:
            return [row.input_text for row in connection.execute(query)]

    return fetch()
