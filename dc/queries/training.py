"""The SQL the training scripts run: one model's training rows for a region and a window."""

from __future__ import annotations

from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Engine, Select, func, select

from dc.utilities.decorators import db_retry
from persistence.models import TrainingExample, to_utc, utcnow

TRAINING_COLUMNS = ("text", "label", "split", "example_time")

_examples = TrainingExample.__table__


def select_training_rows(
    model: str, region: str, since: datetime, until: datetime | None = None
) -> Select:
    """Training rows of `model` in `region` with `since <= example_time` (`<= until` if given).

    Columns text, label, split, example_time; ordered by id (load order), so the same data
    always comes back in the same order and a seeded split is reproducible.
    """
    query = select(
        _examples.c.text, _examples.c.label, _examples.c.split, _examples.c.example_time
    ).where(
        _examples.c.model == model,
        _examples.c.region == region,
        _examples.c.example_time >= to_utc(since),
    )
    if until is not None:
        query = query.where(_examples.c.example_time <= to_utc(until))
    return query.order_by(_examples.c.id)


def fetch_training_rows(
    engine: Engine,
    model: str,
    region: str,
    history_days: int,
    *,
    now: datetime | None = None,
    retries: int = 3,
) -> pd.DataFrame:
    """The training data of `model` in `region` from the last `history_days` days.

    The window is closed on both ends: ``now - history_days <= example_time <= now``. Rows
    time-stamped after `now` (a clock ahead, or a fixed `now` in the past) are left out, so a
    fixed `now` gives the same rows however late the query runs.

    A lost or refused connection is retried `retries` times with backoff (`db_retry`); the
    query only reads, so repeating it is safe.

    Args:
        engine: where the `training_examples` table lives.
        history_days: length of the window in days (> 0).
        now: end of the window (default: the current time); naive means UTC.
        retries: retries on transient database errors (settings: `db_retries`).

    Returns:
        Columns text, label, split (None where unassigned) and example_time (datetime64, UTC),
        in load order; empty, with the same columns, when nothing matches.
    """
    if history_days <= 0:
        raise ValueError(f"history_days must be positive, got {history_days}")
    end = to_utc(now) if now is not None else utcnow()
    query = select_training_rows(model, region, end - timedelta(days=history_days), end)

    @db_retry(retries=retries)
    def fetch() -> list:
        with engine.connect() as connection:
            return connection.execute(query).all()

    frame = pd.DataFrame(fetch(), columns=list(TRAINING_COLUMNS))
    frame["example_time"] = pd.to_datetime(frame["example_time"], utc=True)
    return frame


def regions_with_rows(
    engine: Engine, model: str, since: datetime, *, retries: int = 3
) -> dict[str, tuple[int, int]]:
    """Where `model`'s training rows are: per region, (rows since `since`, rows in all)."""
    recent = func.count().filter(_examples.c.example_time >= to_utc(since))
    query = (
        select(_examples.c.region, recent, func.count())
        .where(_examples.c.model == model)
        .group_by(_examples.c.region)
        .order_by(_examples.c.region)
    )

    @db_retry(retries=retries)
    def fetch() -> list:
        with engine.connect() as connection:
            return connection.execute(query).all()

    return {region: (int(window), int(total)) for region, window, total in fetch()}
