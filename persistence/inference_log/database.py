"""Rows into the `inferences` table: one idempotent statement per batch, row by row when a
batch is refused.

Every insert is ``INSERT ... ON CONFLICT (<key>) DO NOTHING`` (or its COPY form on PostgreSQL,
`persistence.inference_log.postgres`), so a row written twice (a retried batch, a replayed
journal) is stored once. The key is the table's primary key: (request_id, item, created_at) on
PostgreSQL, whose table is partitioned by `created_at` (migration 0005), (request_id, item) on
SQLite; a replayed row carries its journal line's `created_at`, so it meets its twin either way.
When a batch stores fewer rows than it was given, the rows whose key holds *different* values
are found and quarantined as conflicts; an identical row under the same key is a replay, and
harmless. The outage rule (`is_outage`) decides, after any error, whether the rows are kept for
later or a row is to blame. The writer also keeps the table's partitions through this class
(`maintain_partitions`), on the same engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, text, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from persistence.db import make_engine
from persistence.inference_log.outage import is_outage, summary
from persistence.inference_log.postgres import KEY as POSTGRES_KEY
from persistence.inference_log.postgres import copy_batch
from persistence.inference_log.quarantine import Quarantine
from persistence.inference_log.record import (
    TEXT_FIELDS,
    InferenceRecord,
    record_to_row,
    same_values,
)
from persistence.models import Inference, utcnow
from persistence.partitions import Maintenance, maintain

log = logging.getLogger(__name__)

# Keys per look-up of stored rows when a batch stored fewer rows than it was given.
_LOOKUP_CHUNK = 400
# The primary key of `inferences` on SQLite, which migration 0005 leaves unpartitioned.
SQLITE_KEY = ("request_id", "item")


@dataclass
class Outcome:
    """What became of a list of rows handed to `Database.insert`."""

    committed: int = 0  # committed to the database (including identical rows already there)
    rejected: int = 0  # refused for their values: quarantined, counted as dropped
    conflicts: int = 0  # a different row holds their key: quarantined, counted as conflicts
    unsent: list[InferenceRecord] | None = None  # not stored: the database went away
    error: BaseException | None = None  # the outage error, when unsent


class Database:
    """The inference database of one log: its engine and its insert path.

    Args:
        url: SQLAlchemy URL (PostgreSQL or a SQLite file), schema at Alembic head. No
            connection is made until the first query.
        quarantine: where rows that cannot be stored go.
    """

    def __init__(self, url: str, quarantine: Quarantine) -> None:
        self.engine = make_log_engine(url)
        self._quarantine = quarantine
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        # The primary key as the migrations make it on each back-end (see the module docstring).
        self._key = POSTGRES_KEY if dialect is postgresql else SQLITE_KEY
        self._insert_statement = dialect.insert(Inference.__table__).on_conflict_do_nothing(
            index_elements=list(self._key)
        )
        # PostgreSQL gets its batches by COPY (see `copy_batch`); this statement serves it
        # only for the row-by-row retry of a refused batch, and SQLite for everything.
        self._copy = dialect is postgresql
        self._partitioned = dialect is postgresql  # SQLite's table is never partitioned
        # PostgreSQL text cannot hold NUL characters (SQLite can): stored as U+FFFD there.
        self._strip_nul = dialect is postgresql
        self.probe_error: BaseException | None = None

    def probe(self) -> bool:
        """Whether the database answers ``SELECT 1`` (the error is kept in `probe_error`)."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:  # whatever it is, the database does not answer
            self.probe_error = error
            log.debug("inference database probe failed: %s", summary(error))
            return False
        return True

    def maintain_partitions(self, days_ahead: int, retention_days: int) -> Maintenance | None:
        """Keep the daily partitions of `inferences` (`persistence.partitions.maintain`), in a
        transaction of its own: drop those older than `retention_days` (0: none), make those
        up to `days_ahead` days from today.

        Returns:
            What was done; None on SQLite, without a connection.

        Raises:
            Whatever the database raises (a lock not granted in time, an outage).
        """
        if not self._partitioned:
            return None
        with self.engine.begin() as connection:
            return maintain(
                connection, utcnow(), days_ahead=days_ahead, retention_days=retention_days
            )

    def insert(self, records: Sequence[InferenceRecord]) -> Outcome:
        """Insert `records`, in one statement if possible, else row by row.

        A batch refused for the values of some row is retried row by row, so one bad row costs
        only itself: it is quarantined (rejected file, counted as dropped). A row is blamed
        only when the database still answers a probe right after refusing it: an error this
        module does not know (a pool timeout, say) must not turn rows into rejects. A row whose
        key is already stored with other values (or taken by another row of the same batch)
        is a conflict: quarantined too, never dropped silently. An outage at any point returns
        the rows not yet stored as `unsent`, for the caller to keep.
        """
        outcome = Outcome()
        rows: list[dict[str, Any]] = []
        good: list[InferenceRecord] = []
        for record in records:
            try:
                rows.append(self._db_row(record))
                good.append(record)
            except Exception as error:  # a bad value, not an outage
                self._quarantine.reject(record, error)
                outcome.rejected += 1
        rows, good = self._dedupe(rows, good, outcome)
        if not rows:
            return outcome
        try:
            clashes = self._execute(rows)
            self._conflicts(good, clashes, outcome)
            outcome.committed += len(rows) - len(clashes)
            return outcome
        except Exception as error:  # classified below
            if is_outage(error):
                outcome.unsent, outcome.error = good, error
                return outcome
            log.warning(
                "inference log: a batch of %d rows was refused (%s); retrying row by row",
                len(rows),
                summary(error),
            )
        self._insert_one_by_one(rows, good, outcome)
        return outcome

    def _insert_one_by_one(
        self, rows: list[dict[str, Any]], good: list[InferenceRecord], outcome: Outcome
    ) -> None:
        for i, (row, record) in enumerate(zip(rows, good, strict=True)):
            try:
                clashes = self._execute([row])
            except Exception as error:  # classified below
                if is_outage(error) or not self.probe():
                    outcome.unsent, outcome.error = good[i:], error
                    return
                self._quarantine.reject(record, error)
                outcome.rejected += 1
                continue
            self._conflicts([record], clashes, outcome)
            outcome.committed += 1 - len(clashes)

    def _dedupe(
        self, rows: list[dict[str, Any]], good: list[InferenceRecord], outcome: Outcome
    ) -> tuple[list[dict[str, Any]], list[InferenceRecord]]:
        """Rows of one batch with distinct keys: an identical repeat counts as committed (its
        twin is stored), a different row under a key already in the batch is a conflict."""
        first: dict[tuple[str, int], int] = {}
        for row in rows:
            first.setdefault((row["request_id"], row["item"]), len(first))
        if len(first) == len(rows):
            return rows, good
        kept_rows: list[dict[str, Any]] = []
        kept_good: list[InferenceRecord] = []
        seen: dict[tuple[str, int], int] = {}
        for row, record in zip(rows, good, strict=True):
            key = (row["request_id"], row["item"])
            index = seen.get(key)
            if index is None:
                seen[key] = len(kept_rows)
                kept_rows.append(row)
                kept_good.append(record)
            elif same_values(kept_rows[index], row):
                outcome.committed += 1
            else:
                self._quarantine.conflict(record)
                outcome.conflicts += 1
        return kept_rows, kept_good

    def _conflicts(
        self, good: Sequence[InferenceRecord], clashes: Sequence[int], outcome: Outcome
    ) -> None:
        for index in clashes:
            self._quarantine.conflict(good[index])
        outcome.conflicts += len(clashes)

    def _db_row(self, record: InferenceRecord) -> dict[str, Any]:
        row = record_to_row(record)
        if self._strip_nul:
            for name in TEXT_FIELDS:
                if "\x00" in row[name]:
                    row[name] = row[name].replace("\x00", "\ufffd")
            client = row["client_request_id"]
            if client is not None and "\x00" in client:
                row["client_request_id"] = client.replace("\x00", "\ufffd")
        return row

    def _execute(self, rows: list[dict[str, Any]]) -> list[int]:
        """Insert `rows` (distinct keys) in one transaction.

        Returns:
            The indexes of the rows that were not stored because a row with other values
            holds their key (identical rows already stored are a replay, not listed). Finding
            them costs one more query, only when fewer rows were stored than given.
        """
        with self.engine.begin() as connection:  # one transaction per batch
            if self._copy and len(rows) > 1:
                return copy_batch(connection, rows)
            result = connection.execute(self._insert_statement, rows)
            if result.rowcount == len(rows):
                return []
            return _differing_rows(connection, rows, self._key)


def _differing_rows(
    connection: Any, rows: list[dict[str, Any]], key_columns: Sequence[str]
) -> list[int]:
    """Indexes of `rows` whose key (`key_columns`, the conflict target) holds a stored row with
    other values (inside the caller's transaction, after its insert), compared in Python:
    SQLite, and single rows anywhere."""
    table = Inference.__table__
    key = tuple_(*(table.c[name] for name in key_columns))
    stored: dict[tuple[Any, ...], Any] = {}
    keys = [tuple(row[name] for name in key_columns) for row in rows]
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        query = select(table).where(key.in_(keys[start : start + _LOOKUP_CHUNK]))
        for found in connection.execute(query).mappings():
            stored[tuple(found[name] for name in key_columns)] = found
    return [
        i
        for i, (k, row) in enumerate(zip(keys, rows, strict=True))
        if k in stored and not same_values(row, stored[k])
    ]


def make_log_engine(url: str) -> Engine:
    """An engine that fails fast: a short connect timeout (PostgreSQL) or busy wait (SQLite).

    Pooled connections are pinged on checkout, so after a database restart the first batch gets
    a fresh connection instead of an error.
    """
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        # The writer of another worker may hold the file's write lock: wait up to 5 s for it.
        connect_args: dict[str, Any] = {"timeout": 5.0}
        return make_engine(url, connect_args=connect_args, pool_pre_ping=True)
    connect_args = {
        "connect_timeout": 3,
        "application_name": "dc-inference-log",
        # Notice a server that vanished without closing the connection within about 25 s.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    return make_engine(
        url, connect_args=connect_args, pool_pre_ping=True, pool_size=2, max_overflow=2
    )
