"""The inference log's daily partitions on PostgreSQL: made ahead of time, dropped when expired.

Migration 0005 partitions `inferences` by range of `created_at`: one partition per UTC day,
``inferences_pYYYYMMDD`` for [that day 00:00 UTC, the next day 00:00 UTC), and the DEFAULT
partition ``inferences_default``, which takes every row that no daily partition covers (a spool
replayed weeks later, a clock far ahead), so that no row is ever refused for its time.

- `ensure_partitions` makes the partitions of today and the next `days_ahead` days that are
  missing. PostgreSQL refuses a new partition while the default partition holds rows of its
  range, so those rows are moved into the new partition first, in the same transaction.
- `drop_expired` drops whole daily partitions older than the retention (a DROP TABLE: no
  row-by-row DELETE, no bloat, no vacuum), and deletes the expired rows that sit in the default
  partition; it never drops the default partition itself.
- `maintain` does both in one transaction, under one advisory lock: what the log writer of
  every API worker runs at start and hourly (`persistence.inference_log.writer`), and what
  `scripts/maintain_partitions.py` runs from cron or a scheduled job.

Every function works in the caller's transaction (``with engine.begin() as connection:``) and
first takes the transaction-scoped advisory lock `MAINTENANCE_LOCK_KEY` with
``pg_try_advisory_xact_lock``: when another session holds it (another worker doing the same
work), it does nothing rather than wait. DDL waits at most `LOCK_TIMEOUT_MS` for its table
locks (``SET LOCAL lock_timeout``), so a long report query in the way holds up the log
writers queued behind maintenance's lock request no longer than that; maintenance then fails,
the next run tries again, and the partitions made ahead leave days of slack.

Making partitions holds the writers back for its few milliseconds (a SHARE ROW EXCLUSIVE lock
on the parent: an INSERT that had already chosen its partitions would otherwise route a row of
the new day into the default partition and be refused) but never the readers: each new
partition is made apart and attached (``ATTACH PARTITION``), not created in place (``CREATE
TABLE ... PARTITION OF`` would lock the whole table). Dropping one locks the table for a moment
(a DROP TABLE of a partition takes the parent's ACCESS EXCLUSIVE lock).

On SQLite, and on a PostgreSQL whose `inferences` is not partitioned (a schema before 0005),
every function does nothing.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import text

from persistence.models import Inference, to_utc

log = logging.getLogger(__name__)

PARENT = "inferences"
DEFAULT_PARTITION = "inferences_default"
PARTITION_PREFIX = "inferences_p"
_DAILY = re.compile(rf"{PARTITION_PREFIX}(\d{{8}})")
# PostgreSQL advisory lock key of partition maintenance (a 64-bit constant of this project's
# own, beside the migrations' in persistence/migrations/env.py).
MAINTENANCE_LOCK_KEY = 0x64630000_70617274
LOCK_TIMEOUT_MS = 5000

_COLUMNS = ", ".join(column.name for column in Inference.__table__.columns)


@dataclass(frozen=True)
class Maintenance:
    """What one `maintain` (or `plan`) did, or would do."""

    partitioned: bool = True  # False: SQLite, or `inferences` not partitioned; nothing done
    busy: bool = False  # another session held the maintenance lock; nothing done
    created: tuple[str, ...] = ()  # partitions made, oldest first
    moved_rows: int = 0  # rows moved out of the default partition into the new ones
    dropped: tuple[str, ...] = ()  # expired partitions dropped, oldest first
    purged_rows: int = 0  # expired rows deleted from the default partition


def partition_name(day: date) -> str:
    """The name of `day`'s partition: ``inferences_p20261201``."""
    return f"{PARTITION_PREFIX}{day:%Y%m%d}"


def partition_day(name: str) -> date | None:
    """The day of a daily partition's name, or None for any other name."""
    match = _DAILY.fullmatch(name)
    if match is None:
        return None
    try:
        return datetime.strptime(match[1], "%Y%m%d").date()
    except ValueError:
        return None


def is_partition(name: str) -> bool:
    """Whether `name` is a partition of `inferences` by this module's naming (daily or default):
    tables made at run time, which the models do not describe (Alembic's autogenerate skips
    them)."""
    return name == DEFAULT_PARTITION or partition_day(name) is not None


def day_start(day: date) -> datetime:
    """00:00 UTC of `day`: the lower bound of its partition (the next day's is the upper)."""
    return datetime.combine(day, time(), tzinfo=UTC)


def utc_day(moment: datetime) -> date:
    """The UTC day of `moment` (a naive value is taken to be UTC)."""
    return to_utc(moment).date()


def is_partitioned(connection: Any) -> bool:
    """Whether the database is PostgreSQL and its `inferences` a partitioned table."""
    if connection.dialect.name != "postgresql":
        return False
    query = text(
        "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table WHERE partrelid = to_regclass(:t))"
    )
    return bool(connection.execute(query, {"t": PARENT}).scalar_one())


def partitions(connection: Any) -> list[str]:
    """The names of the partitions of `inferences` (daily ones and the default), sorted."""
    query = text(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(:t) ORDER BY c.relname"
    )
    return list(connection.execute(query, {"t": PARENT}).scalars())


def missing_days(existing: Iterable[str], now: datetime, days_ahead: int) -> list[date]:
    """The days from `now`'s UTC day to `days_ahead` days later whose partition is not in
    `existing`, oldest first."""
    if days_ahead < 0:
        raise ValueError(f"days_ahead must be 0 or more, not {days_ahead}")
    have = set(existing)
    today = utc_day(now)
    days = (today + timedelta(days=n) for n in range(days_ahead + 1))
    return [day for day in days if partition_name(day) not in have]


def oldest_kept_day(now: datetime, retention_days: int) -> date:
    """The first day a retention of `retention_days` keeps: every row younger than
    `retention_days` days is kept, so the day of ``now - retention_days`` is kept whole."""
    return utc_day(to_utc(now) - timedelta(days=retention_days))


def expired_partitions(existing: Iterable[str], now: datetime, retention_days: int) -> list[str]:
    """The daily partitions of `existing` entirely older than `retention_days` days (their
    upper bound at or before the start of `oldest_kept_day`), oldest first; none for a
    retention of 0 (keep everything). The default partition and other names never expire."""
    if retention_days < 0:
        raise ValueError(f"retention_days must be 0 or more, not {retention_days}")
    if retention_days == 0:
        return []
    oldest = oldest_kept_day(now, retention_days)
    days = sorted((day, name) for name in existing if (day := partition_day(name)) is not None)
    return [name for day, name in days if day < oldest]


def ensure_partitions(connection: Any, now: datetime, days_ahead: int) -> list[str]:
    """Make the missing partitions from `now`'s UTC day to `days_ahead` days later.

    Idempotent: partitions that exist are left alone. Rows of a new partition's day that sit in
    the default partition are moved into it (logged at WARNING), in the caller's transaction,
    so none is lost and PostgreSQL does not refuse the partition. The default partition is
    made too if it is missing.

    Returns:
        The partitions made, oldest first (none when all exist, when the database has no
        partitioned `inferences`, or when another session holds the maintenance lock).
    """
    return list(_ensure(connection, now, days_ahead)[0])


def drop_expired(connection: Any, now: datetime, retention_days: int) -> list[str]:
    """Drop the daily partitions entirely older than `retention_days` days, and delete the
    rows older than that from the default partition (which is never dropped).

    A retention of 0 keeps everything (nothing is dropped or deleted). In one transaction with
    `ensure_partitions`, call this first (as `maintain` does): a DROP locks the parent table,
    and taking that lock before the default partition's keeps the order in which writers take
    them, so that they cannot deadlock with it.

    Returns:
        The partitions dropped, oldest first.
    """
    return list(_drop(connection, now, retention_days)[0])


def maintain(
    connection: Any, now: datetime, *, days_ahead: int, retention_days: int
) -> Maintenance:
    """`drop_expired`, then `ensure_partitions`, in the caller's transaction, under one lock.

    Returns:
        What was done: nothing, with `busy`, when another session holds the maintenance lock;
        nothing, with `partitioned` false, on SQLite or an unpartitioned table.
    """
    if not is_partitioned(connection):
        return Maintenance(partitioned=False)
    if not _try_lock(connection):
        return Maintenance(busy=True)
    dropped, purged = _drop(connection, now, retention_days)
    created, moved = _ensure(connection, now, days_ahead)
    return Maintenance(created=created, moved_rows=moved, dropped=dropped, purged_rows=purged)


def plan(connection: Any, now: datetime, *, days_ahead: int, retention_days: int) -> Maintenance:
    """What `maintain` would do now, without changing anything (and without the lock)."""
    if not is_partitioned(connection):
        return Maintenance(partitioned=False)
    existing = partitions(connection)
    days = missing_days(existing, now, days_ahead)
    dropped = tuple(expired_partitions(existing, now, retention_days))
    moved = purged = 0
    if DEFAULT_PARTITION in existing:
        for day in days:
            moved += _count_default(connection, day_start(day), day_start(day + timedelta(days=1)))
        if retention_days:
            purged = _count_default(
                connection, None, day_start(oldest_kept_day(now, retention_days))
            )
    created = tuple(partition_name(day) for day in days)
    if DEFAULT_PARTITION not in existing:
        created = (DEFAULT_PARTITION, *created)
    return Maintenance(created=created, moved_rows=moved, dropped=dropped, purged_rows=purged)


# --- the work ------------------------------------------------------------------------------------


def _try_lock(connection: Any) -> bool:
    """Take the maintenance lock for the rest of the transaction, if no other session has it
    (a session that has it already gets it again)."""
    query = text("SELECT pg_try_advisory_xact_lock(:key)")
    return bool(connection.execute(query, {"key": MAINTENANCE_LOCK_KEY}).scalar_one())


def _limit_lock_waits(connection: Any) -> None:
    connection.exec_driver_sql(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")


def _bound(day: date) -> str:
    """A partition bound literal: 00:00 UTC of `day`, with its offset."""
    return f"'{day:%Y-%m-%d} 00:00:00+00'"


def _count_default(connection: Any, lower: datetime | None, upper: datetime) -> int:
    query = f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE created_at < :upper"
    if lower is not None:
        query += " AND created_at >= :lower"
    return int(connection.execute(text(query), {"lower": lower, "upper": upper}).scalar_one())


def _ensure(connection: Any, now: datetime, days_ahead: int) -> tuple[tuple[str, ...], int]:
    """`ensure_partitions`'s work: (partitions made, rows moved out of the default one)."""
    if days_ahead < 0:
        raise ValueError(f"days_ahead must be 0 or more, not {days_ahead}")
    if not is_partitioned(connection) or not _try_lock(connection):
        return (), 0
    existing = partitions(connection)
    days = missing_days(existing, now, days_ahead)
    made_default = DEFAULT_PARTITION not in existing
    if not days and not made_default:
        return (), 0
    _limit_lock_waits(connection)
    created: list[str] = []
    if made_default:
        connection.exec_driver_sql(
            f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF {PARENT} DEFAULT"
        )
        log.warning("inference log: the default partition was missing; made %s", DEFAULT_PARTITION)
        created.append(DEFAULT_PARTITION)
    # Both held to the commit, the parent first, in the order writers take them. The parent's
    # SHARE ROW EXCLUSIVE (readers go on) makes writers wait before they route their rows: an
    # INSERT already routing with the partitions of before would put a row of the new day into
    # the default partition once it may, and have it refused. The default partition's lock
    # keeps any row out of it between the move of a day's rows and that day's attachment.
    connection.exec_driver_sql(f"LOCK TABLE ONLY {PARENT} IN SHARE ROW EXCLUSIVE MODE")
    connection.exec_driver_sql(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
    moved_total = 0
    for day in days:
        name = partition_name(day)
        lower, upper = day_start(day), day_start(day + timedelta(days=1))
        connection.exec_driver_sql(f"CREATE TABLE {name} (LIKE {PARENT})")
        moved = connection.execute(
            text(
                f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} "
                "WHERE created_at >= :lower AND created_at < :upper "
                f"RETURNING {_COLUMNS}) "
                f"INSERT INTO {name} ({_COLUMNS}) SELECT {_COLUMNS} FROM moved"
            ),
            {"lower": lower, "upper": upper},
        ).rowcount
        # Builds the partition's key and indexes (on the rows moved in, if any).
        connection.exec_driver_sql(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name} "
            f"FOR VALUES FROM ({_bound(day)}) TO ({_bound(day + timedelta(days=1))})"
        )
        if moved:
            log.warning(
                "inference log: moved %d rows of %s out of %s into the new partition %s",
                moved,
                day.isoformat(),
                DEFAULT_PARTITION,
                name,
            )
        moved_total += moved
        created.append(name)
    log.info("inference log: made partitions %s", ", ".join(created))
    return tuple(created), moved_total


def _drop(connection: Any, now: datetime, retention_days: int) -> tuple[tuple[str, ...], int]:
    """`drop_expired`'s work: (partitions dropped, expired rows deleted from the default one)."""
    if retention_days < 0:
        raise ValueError(f"retention_days must be 0 or more, not {retention_days}")
    if retention_days == 0 or not is_partitioned(connection) or not _try_lock(connection):
        return (), 0
    existing = partitions(connection)
    expired = expired_partitions(existing, now, retention_days)
    _limit_lock_waits(connection)
    for name in expired:
        connection.exec_driver_sql(f"DROP TABLE {name}")
    purged = 0
    if DEFAULT_PARTITION in existing:
        cutoff = day_start(oldest_kept_day(now, retention_days))
        purged = connection.execute(
            text(f"DELETE FROM {DEFAULT_PARTITION} WHERE created_at < :cutoff"),
            {"cutoff": cutoff},
        ).rowcount
    if expired:
        log.info(
            "inference log: dropped %d partitions older than %d days: %s",
            len(expired),
            retention_days,
            ", ".join(expired),
        )
    if purged:
        log.info(
            "inference log: deleted %d rows older than %d days from %s",
            purged,
            retention_days,
            DEFAULT_PARTITION,
        )
    return tuple(expired), purged
