"""`InferenceLog`, the one object the API holds: it takes rows from the request threads and
puts the parts together (queue, journal and spool, writer thread, database, counters).

A request thread only calls `enqueue`: the rows are appended to the journal (one ``os.write``)
and put on the queue, under one lock, so that after `close()` no row can land on a queue that
nobody drains any more. Nothing here waits on the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from persistence.inference_log.counters import Counters, LogStats, Throttle
from persistence.inference_log.database import Database
from persistence.inference_log.outage import Availability
from persistence.inference_log.quarantine import Quarantine
from persistence.inference_log.record import InferenceRecord, record_to_line
from persistence.inference_log.rowqueue import RowQueue
from persistence.inference_log.spool import Spool
from persistence.inference_log.writer import Writer

log = logging.getLogger(__name__)


class InferenceLog:
    """Writes `InferenceRecord`s to the `inferences` table without ever slowing a request.

    One instance per process, started after gunicorn forks (its thread, engine connections and
    journal files belong to the process that starts it)::

        inference_log = InferenceLog(settings.database_url_or_default, settings.spool_dir).start()
        inference_log.enqueue(records)   # request threads
        inference_log.close()            # gunicorn worker_exit

    Args:
        url: SQLAlchemy URL of the inference database (PostgreSQL or a SQLite file), schema at
            Alembic head.
        spool_dir: folder of the journal and spool files, shared by the workers of one machine;
            created at the first row.
        max_queue: rows held in memory; beyond it rows go straight to the spool.
        batch_size: most rows per INSERT.
        flush_interval_s: longest the writer waits to fill a batch once a row is queued.
        retry_interval_s: while the database is unreachable, how often it is tried again.
        segment_bytes: a journal segment is sealed (and a new one started) beyond this size,
            so the disk holds little more than the rows not yet committed.
        listener: called as ``listener(kind, value)`` for "enqueued", "written", "spooled",
            "replayed", "dropped", "conflicts" (value: rows) and "lag" (value: seconds), from the
            thread that did the work. Must be cheap; an exception from it is logged and ignored.
        partitions_ahead_days: on PostgreSQL, the writer keeps the daily partitions of
            `inferences` made from today to this many days ahead (`persistence.partitions`; at
            its start, then hourly).
        retention_days: on PostgreSQL, the writer drops the partitions older than this many
            days (the rows in them are gone); 0 keeps everything.
    """

    def __init__(
        self,
        url: str,
        spool_dir: str | Path,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        retry_interval_s: float = 2.0,
        segment_bytes: int = 1 << 20,
        listener: Callable[[str, float], None] | None = None,
        partitions_ahead_days: int = 7,
        retention_days: int = 0,
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        if flush_interval_s <= 0 or retry_interval_s <= 0:
            raise ValueError("flush_interval_s and retry_interval_s must be positive")
        if partitions_ahead_days < 0 or retention_days < 0:
            raise ValueError("partitions_ahead_days and retention_days must be 0 or more")
        folder = Path(spool_dir)
        self._max_queue = max_queue
        self._counters = Counters(listener)
        quarantine = Quarantine(folder, self._counters)
        self._database = Database(url, quarantine)  # no connection until the first query
        self._spool = Spool(folder, segment_bytes, self._counters, quarantine)
        self._availability = Availability(retry_interval_s, folder, self._counters)
        self._rows = RowQueue(batch_size, flush_interval_s)
        self._writer = Writer(
            rows=self._rows,
            database=self._database,
            spool=self._spool,
            availability=self._availability,
            counters=self._counters,
            quarantine=quarantine,
            max_queue=max_queue,
            batch_size=batch_size,
            flush_interval_s=flush_interval_s,
            partitions_ahead_days=partitions_ahead_days,
            retention_days=retention_days,
        )
        # Held while checking `_closed` and putting rows on the queue, and by close() to set it:
        # after close() no row can land on a queue that nobody drains any more.
        self._accept_lock = threading.Lock()
        self._closed = False
        self._warn = Throttle(log)

    def start(self) -> InferenceLog:
        """Start the writer thread (a daemon); it first replays spool files left behind.

        Returns:
            self, so that ``log = InferenceLog(...).start()`` works. Calling it again is a no-op.
        """
        with self._accept_lock:
            if self._closed:
                raise RuntimeError("this InferenceLog is closed")
            self._writer.start()
        return self

    def enqueue(self, records: Sequence[InferenceRecord]) -> None:
        """Hand rows to the writer. Never blocks on the database, never raises.

        The rows are appended to the journal before this returns, so once the caller has
        answered, they survive the death of this process. Rows that do not fit in the queue
        go to the spill segment right here; after `close()`, every row does. A record that
        cannot be stored at all (a value of the wrong type) is quarantined at once.
        """
        try:
            if not records:
                return
            now = time.monotonic()
            try:
                lines = [record_to_line(record) for record in records]
                good: Sequence[InferenceRecord] = records
            except Exception:  # a bad value: set that record aside, keep the others
                good, lines = self._spool.lines(records)
            fit = 0
            with self._accept_lock:
                if good and not self._closed:
                    fit = min(len(good), self._max_queue - self._rows.qsize())
                if fit > 0:
                    data = lines[0] if len(lines) == 1 else b"".join(lines[:fit])
                    segment = self._spool.append(data, fit)
                    self._rows.put(good[:fit] if fit < len(good) else good, now, segment)
                    self._counters.queued(fit)
            self._counters.count("enqueued", len(records))
            fit = max(fit, 0)
            if fit < len(good):
                if not self._closed:
                    self._warn(
                        "full",
                        "inference log queue full (%d rows): spooling to disk",
                        self._max_queue,
                    )
                # The request thread writes to the local disk itself (no database): this is
                # the slow path of an overloaded or closing writer, and it keeps every row.
                self._spool.spill(good[fit:], lines[fit:])
        except Exception:  # a prediction must never fail because of its log
            log.exception("inference log: enqueue failed for %d rows", len(records or ()))

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row enqueued so far is written to the database or spooled.

        Without a running writer (never started, or closed) the calling thread does the work.

        Args:
            timeout_s: the longest to wait.

        Returns:
            True if everything was handled in time.
        """
        target = self._counters.queued_total()
        self._rows.wake()
        if not self._writer.running():
            self._writer.drain(to_database=True, deadline=time.monotonic() + timeout_s)
        return self._counters.wait_done(target, timeout_s)

    def replay_spool(self) -> int:
        """Insert the rows of every spool file not owned by a live writer, then delete it.

        The process's own segments that keep rows are sealed first, so that they are replayed
        too (each as soon as none of its rows is still on the queue). Stops at the first
        outage, keeping the file being replayed (it is replayed again later, idempotently) and
        marking the database unavailable.

        Returns:
            Rows committed from the spool by this call (rows already stored count too).
        """
        return self._writer.replay_spool()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the writer after it has written (or, the database down, spooled) the queue.

        Idempotent. If the writer does not finish within `timeout_s` (a database that hangs),
        the remaining rows and the batch it holds are kept in the journal (that batch may then
        be both in the database and the spool: replay stores it once). The journal's segments
        are then deleted, or fsync'ed and unlocked when they keep rows. Afterwards `enqueue`
        spools.
        """
        with self._accept_lock:
            if self._closed:
                return
            self._closed = True
        self._writer.close(deadline=time.monotonic() + timeout_s, timeout_s=timeout_s)
        try:
            self._spool.close()
        except Exception:  # a shutdown hook must finish
            log.exception("inference log: closing the journal failed")
        self._database.engine.dispose()
        stats = self.stats()
        log.info(
            "inference log closed: %d enqueued, %d written, %d spooled, %d replayed, "
            "%d dropped, %d conflicts",
            stats.enqueued,
            stats.written,
            stats.spooled,
            stats.replayed,
            stats.dropped,
            stats.conflicts,
        )

    def stats(self) -> LogStats:
        """A snapshot of this process's counters (and of the spool folder's size)."""
        files, size = self._spool.waiting()
        counts, lag = self._counters.snapshot()
        return LogStats(
            **counts,
            queue_depth=self._rows.depth(),
            lag_s=lag,
            database_available=self._availability.available,
            spool_files=files,
            spool_bytes=size,
        )
