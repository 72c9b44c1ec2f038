"""The writer thread: queue batches into the database, or into the spool while it is away.

One thread per process takes rows off the queue in batches and inserts each batch with one
idempotent statement; committed rows are settled in the journal. The outage rule: while the
database is unreachable a batch is simply kept (its rows are in the journal already) and the
database is probed every `retry_interval_s`; when it answers, the spool is replayed. Spilled
rows are replayed as soon as the queue has room, other processes' left-behind files every
`_ORPHAN_SCAN_S`. Whatever goes wrong, every row taken off the queue ends up in the database
or on disk (or, disk full, counted as dropped), and is counted as done exactly once.

The thread also keeps the table's daily partitions on PostgreSQL (`persistence.partitions`):
once the database answers at its start, then every `_MAINTENANCE_S` while it is available,
between batches, never on a request's path. Every worker's writer does so; the first to take
the maintenance lock does the work, the others find nothing left to do. A failure (a lock not
granted within its timeout, say) is a WARNING, and the next interval tries again: the
partitions made `partitions_ahead_days` ahead leave days of slack, and a row whose day has no
partition still goes to the default one.
"""

from __future__ import annotations

import logging
import threading
import time

from persistence.inference_log.counters import Counters
from persistence.inference_log.database import Database
from persistence.inference_log.outage import Availability, summary
from persistence.inference_log.quarantine import Quarantine
from persistence.inference_log.replay import Replayer
from persistence.inference_log.rowqueue import Item, RowQueue
from persistence.inference_log.spool import Spool

log = logging.getLogger(__name__)

# How often the writer looks for spool files left by other (dead) processes while the database
# is available; its own spilled rows are replayed as soon as the queue has room.
_ORPHAN_SCAN_S = 30.0
# How often the writer keeps the table's partitions (PostgreSQL) while the database is available.
_MAINTENANCE_S = 3600.0


class Writer:
    """The writer of one log: its thread, and the same work done by another thread when the
    thread is not running (`drain`) or has to be given up (`close`).

    Args:
        max_queue: the queue's limit (replay waits while it is more than half full).
        batch_size: most rows per insert.
        flush_interval_s: longest the thread waits to fill a batch once a row is queued.
        partitions_ahead_days: daily partitions kept made ahead of today (PostgreSQL).
        retention_days: partitions older than this many days are dropped (0: none).
    """

    def __init__(
        self,
        *,
        rows: RowQueue,
        database: Database,
        spool: Spool,
        availability: Availability,
        counters: Counters,
        quarantine: Quarantine,
        max_queue: int,
        batch_size: int,
        flush_interval_s: float,
        partitions_ahead_days: int,
        retention_days: int,
    ) -> None:
        self._rows = rows
        self._database = database
        self._spool = spool
        self._availability = availability
        self._counters = counters
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._poll_s = min(max(flush_interval_s, 0.05), 0.5)
        self._replayer = Replayer(
            spool=spool,
            database=database,
            availability=availability,
            counters=counters,
            quarantine=quarantine,
            batch_size=batch_size,
            between_chunks=self._serve_queue_during_replay,
        )
        # Held by whoever takes rows off the queue, while taking them; lets close() take over a
        # stuck writer's work without losing the batch it holds (`_inflight`).
        self._take_lock = threading.Lock()
        self._inflight: list[Item] | None = None
        self._abandoned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_orphan_scan = 0.0
        self._partitions_ahead_days = partitions_ahead_days
        self._retention_days = retention_days
        self._next_maintenance = 0.0

    def start(self) -> None:
        """Start the thread (a daemon), once; it first replays spool files left behind."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="inference-log-writer", daemon=True
            )
            self._thread.start()

    def running(self) -> bool:
        """Whether the thread is there to handle the queue."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._abandoned

    def replay_spool(self) -> int:
        """Replay the spool folder now (see `Replayer.replay`); rows committed."""
        return self._replayer.replay()

    def close(self, deadline: float, timeout_s: float) -> None:
        """Stop the thread once it has handled the queue, then handle what is left.

        A thread still busy at `deadline` (a database that hangs) is given up: the batch it
        holds and the rest of the queue are kept in the journal instead.
        """
        self._stop.set()
        self._rows.wake()
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.error(
                    "inference log: writer still busy after %.1f s; spooling what it holds",
                    timeout_s,
                )
                self._abandoned = True
                with self._take_lock:
                    held = list(self._inflight or ())
                if held:
                    self._spool.keep(held, sync=True)
        # Rows still queued: a writer never started, or given up on above.
        self.drain(to_database=not self._abandoned, deadline=deadline)

    def drain(self, *, to_database: bool, deadline: float) -> None:
        """Handle whatever is queued in the calling thread (no writer running)."""
        with self._take_lock:
            while self._rows.qsize():
                items = self._rows.take()
                if not items:
                    continue  # only a wake-up marker
                if to_database and time.monotonic() < deadline:
                    self._handle_batch(items)
                else:
                    try:
                        self._spool.keep(items, sync=True)
                    finally:
                        self._counters.done(len(items))

    # --- the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        log.info(
            "inference log writer started (queue %d, batch %d, spool %s)",
            self._max_queue,
            self._batch_size,
            self._spool.folder,
        )
        if self._try_database():  # and replay what earlier runs or dead workers left
            self._maintain_partitions()
        while True:
            try:
                with self._take_lock:
                    if self._abandoned:
                        return
                    # Never wait for rows while shutting down.
                    items = self._rows.take(0.0 if self._stop.is_set() else self._poll_s)
                    self._inflight = items
                try:
                    if not items and self._stop.is_set() and not self._rows.qsize():
                        return
                    if items:
                        self._handle_batch(items)
                finally:
                    self._inflight = None
                self._housekeeping()
            except Exception:  # never let the writer die
                log.exception("inference log writer: unexpected error")
                time.sleep(self._poll_s)

    def _handle_batch(self, items: list[Item]) -> None:
        """Write one queue batch to the database, or keep it in the journal while it is away.

        Never raises: whatever goes wrong, the rows end up in the database or on disk (or,
        disk full, counted as dropped), and they are counted as done exactly once.
        """
        records = [record for record, _, _ in items]
        availability = self._availability
        try:
            stopping = self._stop.is_set()
            if not availability.available and not stopping and availability.retry_due():
                self._try_database()
            if not availability.available:
                self._spool.keep(items, sync=True)
                return
            outcome = self._database.insert(records)
            if outcome.committed:
                self._counters.count("written", outcome.committed)
                self._counters.set_lag(time.monotonic() - min(at for _, at, _ in items))
            if outcome.unsent:
                availability.went_down(outcome.error)
                unsent = {id(record) for record in outcome.unsent}
                self._spool.settle([item for item in items if id(item[0]) not in unsent])
                self._spool.keep([item for item in items if id(item[0]) in unsent], sync=True)
            else:
                self._spool.settle(items)
        except Exception:  # a bug must not lose the batch; replay is idempotent
            log.exception(
                "inference log: unexpected error writing %d rows; keeping them on disk",
                len(records),
            )
            self._spool.keep(items, sync=True)
        finally:
            self._counters.done(len(records))

    def _housekeeping(self) -> None:
        """Between batches: retry the database when due; replay spilled and orphaned rows;
        keep the partitions when due."""
        if self._stop.is_set():
            return
        now = time.monotonic()
        if not self._availability.available:
            if self._availability.retry_due():
                self._try_database()
            return
        if now >= self._next_maintenance:
            self._maintain_partitions()
        # Replay only with room in the queue: an overloaded writer first serves the queue.
        roomy = self._rows.qsize() < max(self._max_queue // 2, 1)
        if roomy and (self._spool.pending or now >= self._next_orphan_scan):
            self._next_orphan_scan = now + _ORPHAN_SCAN_S
            if (
                self._spool.pending
                or self._spool.has_kept()
                or any(True for _ in self._spool.candidates())
            ):
                self.replay_spool()

    def _maintain_partitions(self) -> None:
        """Drop the expired partitions and make the coming days' (`Database.maintain_partitions`).

        Never raises: an error is logged at WARNING and the next interval tries again.
        """
        self._next_maintenance = time.monotonic() + _MAINTENANCE_S
        try:
            done = self._database.maintain_partitions(
                self._partitions_ahead_days, self._retention_days
            )
        except Exception as error:  # the writer's own work goes on; retried next interval
            log.warning(
                "inference log: partition maintenance failed (%s); trying again in %.0f s",
                summary(error),
                _MAINTENANCE_S,
            )
            return
        if done is not None and done.busy:
            log.debug("inference log: partition maintenance left to the session that holds it")

    def _try_database(self) -> bool:
        """Probe the database; when it answers, mark it available and replay the spool."""
        if not self._database.probe():
            self._availability.went_down(self._database.probe_error)
            return False
        self._availability.came_back()
        self._next_orphan_scan = time.monotonic() + _ORPHAN_SCAN_S
        self.replay_spool()
        return self._availability.available

    def _serve_queue_during_replay(self) -> None:
        """In the writer thread, write a queue batch between replay chunks when rows pile up.

        A long spool must not starve the live rows: without this the queue would fill up and
        spill into the spool while the spool is being emptied.
        """
        if threading.current_thread() is not self._thread:
            return
        if self._rows.qsize() < min(self._batch_size, max(self._max_queue // 2, 1)):
            return
        held = self._inflight  # the batch that led to this replay, if any: still held
        with self._take_lock:
            items = self._rows.take()
            self._inflight = [*(held or ()), *items]
        try:
            if items:
                self._handle_batch(items)
        finally:
            self._inflight = held
