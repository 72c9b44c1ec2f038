"""The non-blocking inference log: every served prediction becomes a row of `inferences`.

A request thread only calls `InferenceLog.enqueue`, which appends the rows to this process's
journal on local disk (one ``os.write``, no fsync: see `persistence.journal`) and puts them on a
bounded in-memory queue; it never waits on the database and never raises. Because the rows are
in the journal before the answer is sent, a prediction that was answered survives the death of
the process that answered it (SIGKILL, the OOM killer), not only an orderly shutdown. One
background writer thread per process takes rows off the queue in batches and inserts each batch
with a single ``INSERT ... ON CONFLICT (request_id, item) DO NOTHING``, so a row written twice (a
retried batch, a replayed journal) is stored exactly once; journal segments whose rows are all
committed are deleted.

The key (`request_id`, `item`) is made by the server (`api.errors.request_id`: 128 random
bits), never taken from a client, so no client can make another request's row collide. A row
whose key is already stored *with different values* is never dropped silently: it is a
conflict, quarantined like a refused row (the rejected file, an ERROR log line and the
`conflicts` counter). An identical row under the same key is the replay of a row already
stored, and is harmless.

While the database is unreachable the rows simply stay in the journal (which is the spool) and
the writer tries the database again every `retry_interval_s`; when it answers, the kept segments
are replayed. A full queue spills to a spill segment from the request thread (an append to an
open file, no database access), so overload degrades to disk writes, never to blocked requests.

The spool folder (`spool_dir`, shared by every worker process on the machine):

- ``spool-<pid>-<uuid>.jsonl``: journal segments (see `persistence.journal`), JSON lines, one
  `InferenceRecord` per line with the field names of the dataclass, `created_at` in ISO 8601
  with its UTC offset. Each process appends only to its own segments and holds an exclusive
  `fcntl.flock` on each while it owns it.
- Replay takes every ``spool-*.jsonl`` it can lock with ``LOCK_EX | LOCK_NB``: segments of live
  writers are skipped; segments of dead (or killed) workers, of a previous run, and the
  process's own released segments are replayed by whichever writer gets there first: at its
  start, when the database comes back, and every `_ORPHAN_SCAN_S`. A file is deleted only after
  every one of its rows is committed (or quarantined); a replay cut short by an outage keeps the
  file, and the next replay inserts it again, harmlessly. A line that does not parse (a torn
  last line of a full disk) is skipped with a WARNING and kept in the rejected file.
- ``rejected-<pid>-<uuid>.jsonl``: rows the database refused for their values (a string too long,
  a value of the wrong type) or that conflict with a different stored row: one JSON object per
  line, ``{"error": ..., "record": ...}``. They are logged at ERROR and counted (as dropped, or
  as conflicts); nothing replays them.

Metrics (`stats()`, and the `listener` callback for Prometheus): enqueued, written (queue rows
committed), spooled (rows kept on disk for replay), replayed (spool rows committed), dropped
(rows rejected by the database, or that could not even be written to disk: disk full),
conflicts (rows quarantined because a different row holds their key) and lag. Nothing happens
on import: no folder, no thread, no connection.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from sqlalchemy import Engine, select, text, tuple_
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from dc.utilities.decorators import is_transient_db_error
from persistence.db import make_engine
from persistence.journal import SEGMENT_PREFIX, SEGMENT_SUFFIX, Journal, Segment, is_segment_name
from persistence.models import Inference, to_utc

log = logging.getLogger(__name__)

_COLUMNS = tuple(column.name for column in Inference.__table__.columns)

SPOOL_PREFIX = SEGMENT_PREFIX
REJECTED_PREFIX = "rejected-"
SPOOL_SUFFIX = SEGMENT_SUFFIX

# PostgreSQL error classes (SQLSTATE's first two characters) that say "the database cannot take
# rows right now", whatever the rows: connection (08), transaction rollback (40), syntax or
# access rule, e.g. a missing table or privilege (42), insufficient resources (53), object not
# in prerequisite state (55), operator intervention, e.g. shutdown (57), system error (58),
# internal error (XX). The rows are kept in the spool and retried. Anything else (22 data
# exception, 23 integrity constraint, ...) is about a row's values: that row is quarantined.
_PG_OUTAGE_CLASSES = frozenset({"08", "40", "42", "53", "55", "57", "58", "XX"})

# How often the writer looks for spool files left by other (dead) processes while the database
# is available; its own spilled rows are replayed as soon as the queue has room.
_ORPHAN_SCAN_S = 30.0
# Repeated warnings (queue full, listener failures) are logged at most this often.
_WARN_EVERY_S = 10.0
# Put on the queue by flush() and close(): a writer waiting to fill a batch writes it at once.
_WAKE = (None, 0.0, None)
# Keys per look-up of stored rows when a batch stored fewer rows than it was given.
_LOOKUP_CHUNK = 400
_COUNTERS = ("enqueued", "written", "spooled", "replayed", "dropped", "conflicts")

# A queued row: the record, time.monotonic() at enqueue, and the journal segment holding it
# (None when the journal could not be written).
_Item = tuple["InferenceRecord", float, "Segment | None"]


@dataclass(frozen=True)
class InferenceRecord:
    """One served prediction for one text: a future row of `inferences`.

    A request of N texts gives N records with the same `request_id` and `item` 0..N-1;
    (`request_id`, `item`) is the idempotency key, made by the server. `client_request_id` is
    the caller's own id (its X-Request-ID), kept beside it for correlation only.
    """

    request_id: str
    item: int
    created_at: datetime  # aware UTC (a naive value is taken to be UTC)
    model: str
    region: str
    version: str
    model_type: str
    input_text: str
    predicted_label: str
    probability: float
    top_k: list[dict[str, Any]]  # [{"label": str, "probability": float}, ...], best first
    latency_ms: float
    cache_hit: bool
    embedder_fingerprint: str
    client_request_id: str | None = None


_RECORD_FIELDS = tuple(f.name for f in fields(InferenceRecord))
_OPTIONAL_FIELDS = ("client_request_id",)  # absent from older spool lines
_TEXT_FIELDS = (
    "request_id",
    "model",
    "region",
    "version",
    "model_type",
    "input_text",
    "predicted_label",
    "embedder_fingerprint",
)


@dataclass(frozen=True)
class LogStats:
    """This process's view of its inference log.

    The counters count rows since the log was created. `lag_s` is the time from `enqueue` to
    commit of the oldest row of the last queue batch written to the database (0.0 before the
    first one); rows that went through the spool are not part of it. `spool_files` and
    `spool_bytes` cover the ``spool-*.jsonl`` files in the spool folder that hold rows waiting
    for replay: any process's kept or left-behind segments, not this process's journal of rows
    still in flight (those are `queue_depth`).
    """

    enqueued: int
    written: int
    spooled: int
    replayed: int
    dropped: int
    conflicts: int
    queue_depth: int
    lag_s: float
    database_available: bool
    spool_files: int
    spool_bytes: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for JSON status pages)."""
        return asdict(self)


def record_to_row(record: InferenceRecord) -> dict[str, Any]:
    """The column values of `record`, coerced to the types the table stores.

    The API may hand over numpy scalars or UUID objects; neither the JSON spool nor the database
    driver accepts those, so every value is converted to its plain Python type here.
    `top_k` keeps exactly the documented keys, ``label`` and ``probability``; an empty
    `client_request_id` is stored as NULL.

    Raises:
        ValueError, TypeError, KeyError: a value that cannot be converted (a missing field, a
            probability that is not a number...). The record cannot be stored.
    """
    row: dict[str, Any] = {}
    for name in _TEXT_FIELDS:
        value = getattr(record, name)
        if value is None:
            raise ValueError(f"{name} is missing")
        row[name] = value if isinstance(value, str) else str(value)
    if not isinstance(record.created_at, datetime):
        raise TypeError(f"created_at must be a datetime, not {type(record.created_at).__name__}")
    row["item"] = int(record.item)
    row["created_at"] = to_utc(record.created_at)
    row["probability"] = float(record.probability)
    row["latency_ms"] = float(record.latency_ms)
    row["cache_hit"] = bool(record.cache_hit)
    row["top_k"] = [
        {"label": str(entry["label"]), "probability": float(entry["probability"])}
        for entry in record.top_k
    ]
    client = record.client_request_id
    row["client_request_id"] = str(client) if client else None
    return row


def _ascii_json(row: dict[str, Any]) -> str:
    row = {**row, "created_at": row["created_at"].isoformat()}
    return json.dumps(row, ensure_ascii=True, separators=(",", ":"))


def record_to_json(record: InferenceRecord) -> str:
    """One spool line (without the newline): the record as JSON, `created_at` in ISO 8601.

    ASCII only (``ensure_ascii``), so any text, even one with an unpaired surrogate, has a
    byte form, and a line break inside a text can never split a line.
    """
    return _ascii_json(record_to_row(record))


def record_to_line(record: InferenceRecord) -> bytes:
    """One journal line, newline included: what `enqueue` writes for each record.

    UTF-8 JSON by orjson, straight from the dataclass when its values are plain (the API's
    are): about 0.7 us, against 3 us through `record_to_row`, on every request. Anything else
    (numpy scalars, which orjson refuses, or a non-finite float, which it would write as null)
    goes through `record_to_row` first, and its ASCII form when orjson still cannot write it
    exactly (an unpaired surrogate). `record_from_json` reads every form, and for any record
    ``record_to_row(record_from_json(line))`` equals ``record_to_row(record)``: a replayed
    line is recognised as the row already stored.

    Raises:
        ValueError, TypeError, KeyError: as `record_to_row`.
    """
    if isinstance(record.created_at, datetime):
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            pass
        else:
            # The one null it may hold is an absent client id; another is a lost float (or a
            # text that contains "null": rare, and the slow path is as good).
            if line.count(b"null") == (record.client_request_id is None):
                return line
    row = record_to_row(record)
    if row["client_request_id"] is None:
        del row["client_request_id"]
    try:
        line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        line = b"null"
    if b"null" in line:
        line = (_ascii_json(row) + "\n").encode("ascii")
    return line


def record_from_json(line: str | bytes) -> InferenceRecord:
    """Parse one spool line back into a record (unknown keys are ignored).

    Raises:
        ValueError: not JSON, not an object, a field missing or of the wrong type.
    """
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a spool line must be a JSON object")
        values = {
            name: data.get(name) if name in _OPTIONAL_FIELDS else data[name]
            for name in _RECORD_FIELDS
        }
        values["created_at"] = to_utc(datetime.fromisoformat(values["created_at"]))
        record = InferenceRecord(**values)
        record_to_row(record)  # fail here, on a bad line, rather than later in a batch
    except KeyError as missing:
        raise ValueError(f"field {missing} missing") from None
    except (TypeError, AttributeError) as error:
        raise ValueError(str(error)) from None
    return record


def _summary(error: BaseException) -> str:
    """The first line of an error, for log records (drivers add SQL and parameters below)."""
    message = str(getattr(error, "orig", None) or error).strip()
    return message.splitlines()[0] if message else type(error).__name__


def is_outage(error: BaseException) -> bool:
    """Whether `error` means the database cannot take rows now (keep them, retry later).

    True: a lost, refused or timed-out connection, a server shutting down, a locked or missing
    SQLite file or table, a missing table or privilege on PostgreSQL. False: an error about the
    values of the rows (too long, wrong type, constraint), which retrying cannot fix.
    """
    if is_transient_db_error(error):
        code = getattr(getattr(error, "orig", None), "pgcode", None)
        # psycopg2 files a few value errors (class 54: program limit exceeded) under
        # OperationalError; a SQLSTATE, when there is one, is the better witness.
        return code is None or code[:2] in _PG_OUTAGE_CLASSES
    if isinstance(error, sa_exc.DBAPIError):
        orig = error.orig
        if isinstance(orig, sqlite3.OperationalError):  # no such table, unable to open, I/O
            return True
        code = getattr(orig, "pgcode", None)
        return bool(code) and code[:2] in _PG_OUTAGE_CLASSES
    return False


def _same_values(a: dict[str, Any], b: Any) -> bool:
    """Whether two rows (a `record_to_row` dict, and such a dict or a stored row's mapping)
    hold the same values in every column: a replay, not a conflict."""
    for name in _COLUMNS:
        x, y = a[name], b[name]
        if x != y and not (x != x and y != y):  # NaN equals NaN here: the same float
            return False
    return True


def _by_segment(items: Sequence[_Item]) -> dict[Segment, int]:
    """How many of `items` each journal segment holds."""
    counts: dict[Segment, int] = {}
    for _, _, segment in items:
        if segment is not None:
            counts[segment] = counts.get(segment, 0) + 1
    return counts


@dataclass
class _Outcome:
    """What became of a list of rows handed to `_insert`."""

    committed: int = 0  # committed to the database (including identical rows already there)
    rejected: int = 0  # refused for their values: quarantined, counted as dropped
    conflicts: int = 0  # a different row holds their key: quarantined, counted as conflicts
    unsent: list[InferenceRecord] | None = None  # not stored: the database went away
    error: BaseException | None = None  # the outage error, when unsent


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
    ) -> None:
        if max_queue < 1 or batch_size < 1:
            raise ValueError("max_queue and batch_size must be at least 1")
        if flush_interval_s <= 0 or retry_interval_s <= 0:
            raise ValueError("flush_interval_s and retry_interval_s must be positive")
        self._url = url
        self._spool_dir = Path(spool_dir)
        self._max_queue = max_queue
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._retry_interval_s = retry_interval_s
        self._listener = listener
        self._engine = _make_log_engine(url)  # no connection until the first query
        table = Inference.__table__
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        self._insert_statement = dialect.insert(table).on_conflict_do_nothing(
            index_elements=["request_id", "item"]
        )
        # PostgreSQL gets its batches by COPY (see `_copy_batch`); this statement serves it
        # only for the row-by-row retry of a refused batch, and SQLite for everything.
        self._copy = dialect is postgresql
        # PostgreSQL text cannot hold NUL characters (SQLite can): stored as U+FFFD there.
        self._strip_nul = self._engine.dialect.name == "postgresql"
        self._journal = Journal(self._spool_dir, segment_bytes=segment_bytes)

        # Items are `_Item`s, or the `_WAKE` marker. Unbounded: `enqueue` keeps it within
        # `max_queue` itself (under `_accept_lock`), so a put never fails half-way through.
        self._queue: queue.Queue[_Item] = queue.Queue()
        # Held while checking `_closed` and putting rows on the queue, and by close() to set it:
        # after close() no row can land on a queue that nobody drains any more.
        self._accept_lock = threading.Lock()
        self._closed = False
        # Held by whoever takes rows off the queue, while taking them; lets close() take over a
        # stuck writer's work without losing the batch it holds (`_inflight`).
        self._take_lock = threading.Lock()
        self._inflight: list[_Item] | None = None
        self._abandoned = False
        self._stop = threading.Event()
        # Set when a full batch is queued, or by flush()/close(): ends the writer's batch wait.
        self._batch_ready = threading.Event()
        self._thread: threading.Thread | None = None

        self._spool_pending = False  # own rows kept on disk: replay when there is room
        self._rejected_lock = threading.Lock()
        self._rejected_path: Path | None = None

        self._stats_lock = threading.Lock()
        self._done_cond = threading.Condition(self._stats_lock)
        self._queued_total = 0  # rows put on the queue
        self._done_total = 0  # rows taken off the queue and written, kept or dropped
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._lag_s = 0.0
        self._wake_pending = False  # a _WAKE marker is on the queue (not a row)

        self._available = True
        self._probe_error: BaseException | None = None
        self._down_since = 0.0
        self._spooled_at_down = 0
        self._next_attempt = 0.0
        self._next_orphan_scan = 0.0
        self._last_warning: dict[str, float] = {}

    # --- public interface ------------------------------------------------------------------

    def start(self) -> InferenceLog:
        """Start the writer thread (a daemon); it first replays spool files left behind.

        Returns:
            self, so that ``log = InferenceLog(...).start()`` works. Calling it again is a no-op.
        """
        with self._accept_lock:
            if self._closed:
                raise RuntimeError("this InferenceLog is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="inference-log-writer", daemon=True
                )
                self._thread.start()
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
                good, lines = self._lines(records)
            fit = 0
            with self._accept_lock:
                if good and not self._closed:
                    fit = min(len(good), self._max_queue - self._queue.qsize())
                if fit > 0:
                    data = lines[0] if len(lines) == 1 else b"".join(lines[:fit])
                    segment = self._journal_append(data, fit)
                    put = self._queue.put_nowait
                    for record in good[:fit] if fit < len(good) else good:
                        put((record, now, segment))
                    with self._stats_lock:
                        self._queued_total += fit
                    if self._queue.qsize() >= self._batch_size:
                        self._batch_ready.set()
            self._count("enqueued", len(records))
            fit = max(fit, 0)
            if fit < len(good):
                if not self._closed:
                    self._warn_sometimes(
                        "full",
                        "inference log queue full (%d rows): spooling to disk",
                        self._max_queue,
                    )
                # The request thread writes to the local disk itself (no database): this is
                # the slow path of an overloaded or closing writer, and it keeps every row.
                self._spill(good[fit:], lines[fit:])
        except Exception:  # a prediction must never fail because of its log
            log.exception("inference log: enqueue failed for %d rows", len(records or ()))

    def _lines(
        self, records: Sequence[InferenceRecord]
    ) -> tuple[list[InferenceRecord], list[bytes]]:
        """The journal lines of `records`; a record that cannot be stored at all (a value of
        the wrong type) is quarantined here, since no database would take it either."""
        good: list[InferenceRecord] = []
        lines: list[bytes] = []
        for record in records:
            try:
                lines.append(record_to_line(record))
                good.append(record)
            except Exception as error:  # a bad value
                self._reject(record, error)
        return good, lines

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every row enqueued so far is written to the database or spooled.

        Without a running writer (never started, or closed) the calling thread does the work.

        Args:
            timeout_s: the longest to wait.

        Returns:
            True if everything was handled in time.
        """
        with self._stats_lock:
            target = self._queued_total
        self._wake()
        thread = self._thread
        if thread is None or not thread.is_alive() or self._abandoned:
            self._drain(to_database=True, deadline=time.monotonic() + timeout_s)
        with self._done_cond:
            return self._done_cond.wait_for(lambda: self._done_total >= target, timeout_s)

    def replay_spool(self) -> int:
        """Insert the rows of every spool file not owned by a live writer, then delete it.

        The process's own segments that keep rows are sealed first, so that they are replayed
        too (each as soon as none of its rows is still on the queue). Stops at the first
        outage, keeping the file being replayed (it is replayed again later, idempotently) and
        marking the database unavailable.

        Returns:
            Rows committed from the spool by this call (rows already stored count too).
        """
        self._spool_pending = False
        total = files = 0
        try:
            self._journal.seal_kept()
            for path in self._spool_candidates():
                replayed, finished = self._replay_file(path)
                total += replayed
                files += finished
                if not finished and not self._available:
                    break
        except Exception:  # the writer thread must survive a surprise
            log.exception("inference log: spool replay failed")
        if total or files:
            log.info("inference log: replayed %d rows from %d spool file(s)", total, files)
        return total

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
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        self._wake()
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
                    self._keep(held, sync=True)
        # Rows still queued: a writer never started, or given up on above.
        self._drain(to_database=not self._abandoned, deadline=deadline)
        try:
            self._journal.close()
        except Exception:  # a shutdown hook must finish
            log.exception("inference log: closing the journal failed")
        self._engine.dispose()
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
        private = self._journal.private_paths()
        files = size = 0
        with contextlib.suppress(OSError), os.scandir(self._spool_dir) as entries:
            for entry in entries:
                if is_segment_name(entry.name) and entry.path not in private:
                    with contextlib.suppress(OSError):
                        length = entry.stat().st_size
                        if length:
                            size += length
                            files += 1
        with self._stats_lock:
            counts = dict(self._counts)
            lag = self._lag_s
            depth = max(0, self._queue.qsize() - self._wake_pending)
        return LogStats(
            **counts,
            queue_depth=depth,
            lag_s=lag,
            database_available=self._available,
            spool_files=files,
            spool_bytes=size,
        )

    # --- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        log.info(
            "inference log writer started (queue %d, batch %d, spool %s)",
            self._max_queue,
            self._batch_size,
            self._spool_dir,
        )
        self._try_database()  # and replay what earlier runs or dead workers left
        poll_s = min(max(self._flush_interval_s, 0.05), 0.5)
        while True:
            try:
                with self._take_lock:
                    if self._abandoned:
                        return
                    items = self._take(first_wait_s=poll_s)
                    self._inflight = items
                try:
                    if not items and self._stop.is_set() and not self._queue.qsize():
                        return
                    if items:
                        self._handle_batch(items)
                finally:
                    self._inflight = None
                self._housekeeping()
            except Exception:  # never let the writer die
                log.exception("inference log writer: unexpected error")
                time.sleep(poll_s)

    def _take(self, first_wait_s: float = 0.0) -> list[_Item]:
        """Take up to `batch_size` queued rows (call with `_take_lock`).

        Waits up to `first_wait_s` for a first row, then up to `flush_interval_s` for more;
        never waits while shutting down or when `first_wait_s` is 0. A wake-up marker (from
        `flush` or `close`) ends the wait at once.
        """
        wait = not self._stop.is_set() and first_wait_s > 0
        items: list[_Item] = []
        try:
            first = self._queue.get(timeout=first_wait_s) if wait else self._queue.get_nowait()
        except queue.Empty:
            return items
        if first[0] is not None and wait and self._queue.qsize() < self._batch_size - 1:
            # Let the batch fill without taking the rows one by one: a blocking get() per row
            # would wake this thread (and move the GIL) on every request. Only a full batch,
            # flush() or close() ends the wait early (`_batch_ready`).
            self._batch_ready.wait(self._flush_interval_s)
        self._batch_ready.clear()
        item = first
        while True:
            if item[0] is None:  # _WAKE
                with self._stats_lock:
                    self._wake_pending = False
                break
            items.append(item)
            if len(items) >= self._batch_size:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        return items

    def _wake(self) -> None:
        """Make a writer waiting for rows go on at once (a full queue wakes it anyway).

        At most one marker is on the queue at a time, so flush() calls cannot fill it up.
        """
        self._batch_ready.set()
        with self._stats_lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._queue.put_nowait(_WAKE)  # type: ignore[arg-type]

    def _handle_batch(self, items: list[_Item]) -> None:
        """Write one queue batch to the database, or keep it in the journal while it is away.

        Never raises: whatever goes wrong, the rows end up in the database or on disk (or,
        disk full, counted as dropped), and they are counted as done exactly once.
        """
        records = [record for record, _, _ in items]
        try:
            if not self._available and not self._stop.is_set() and self._retry_due():
                self._try_database()
            if not self._available:
                self._keep(items, sync=True)
                return
            outcome = self._insert(records)
            if outcome.committed:
                self._count("written", outcome.committed)
                self._set_lag(time.monotonic() - min(enqueued for _, enqueued, _ in items))
            if outcome.unsent:
                self._mark_unavailable(outcome.error)
                unsent = {id(record) for record in outcome.unsent}
                self._settle([item for item in items if id(item[0]) not in unsent])
                self._keep([item for item in items if id(item[0]) in unsent], sync=True)
            else:
                self._settle(items)
        except Exception:  # a bug must not lose the batch; replay is idempotent
            log.exception(
                "inference log: unexpected error writing %d rows; keeping them on disk",
                len(records),
            )
            self._keep(items, sync=True)
        finally:
            self._mark_done(len(records))

    def _housekeeping(self) -> None:
        """Between batches: retry the database when due; replay spilled and orphaned rows."""
        if self._stop.is_set():
            return
        now = time.monotonic()
        if not self._available:
            if self._retry_due():
                self._try_database()
            return
        # Replay only with room in the queue: an overloaded writer first serves the queue.
        roomy = self._queue.qsize() < max(self._max_queue // 2, 1)
        if roomy and (self._spool_pending or now >= self._next_orphan_scan):
            self._next_orphan_scan = now + _ORPHAN_SCAN_S
            if (
                self._spool_pending
                or self._journal.has_kept()
                or any(True for _ in self._spool_candidates())
            ):
                self.replay_spool()

    def _drain(self, *, to_database: bool, deadline: float) -> None:
        """Handle whatever is queued in the calling thread (no writer running)."""
        with self._take_lock:
            while self._queue.qsize():
                items = self._take()
                if not items:
                    continue  # only a wake-up marker
                if to_database and time.monotonic() < deadline:
                    self._handle_batch(items)
                else:
                    try:
                        self._keep(items, sync=True)
                    finally:
                        self._mark_done(len(items))

    # --- the journal -----------------------------------------------------------------------

    def _journal_append(self, data: bytes, rows: int) -> Segment | None:
        """Append queue rows to the live segment (call with `_accept_lock`).

        Returns:
            The segment, or None when the disk refused: the rows then live in memory only
            (they still reach the database, unless this process dies first).
        """
        try:
            return self._journal.append(data, rows)
        except OSError as error:
            self._warn_sometimes(
                "journal",
                "inference log: cannot write the journal in %s (%s): rows are held in memory "
                "only until written",
                self._spool_dir,
                error,
                level=logging.ERROR,
            )
            return None

    def _spill(self, records: Sequence[InferenceRecord], lines: Sequence[bytes]) -> None:
        """Append rows that are not on the queue to the spill segment; never raises.

        If the file cannot be written (disk full, permissions) the rows are counted as dropped
        and logged at ERROR: the one case in which rows are lost.
        """
        if not records:
            return
        try:
            self._journal.append(b"".join(lines), len(records), spill=True)
        except Exception as error:  # disk full, permissions...
            log.error(
                "inference log: DROPPED %d rows: cannot write the spool in %s: %s",
                len(records),
                self._spool_dir,
                error,
            )
            self._count("dropped", len(records))
            return
        self._spool_pending = True
        self._count("spooled", len(records))

    def _settle(self, items: Sequence[_Item]) -> None:
        """Rows committed or quarantined: their journal lines are no longer needed."""
        if not items:
            return
        try:
            if self._journal.account(settled=_by_segment(items)):
                self._spool_pending = True
        except Exception:  # the rows are stored; a journal error costs only a replay
            log.exception("inference log: journal accounting failed")

    def _keep(self, items: Sequence[_Item], *, sync: bool) -> None:
        """Leave rows on disk for a later replay (the database is away, or shutting down).

        Rows already in the journal cost no write; `sync` fsyncs their segments, since they may
        wait there for a long time. Rows the journal could not take are written to the spill
        segment now (or counted as dropped).
        """
        if not items:
            return
        counts = _by_segment(items)
        if counts:
            try:
                if self._journal.account(kept=counts, sync=sync):
                    self._spool_pending = True
            except Exception:  # the rows are still in their files: a replay finds them
                log.exception("inference log: journal accounting failed")
            self._count("spooled", sum(counts.values()))
        loose = [record for record, _, segment in items if segment is None]
        if loose:
            self._spill(*self._lines(loose))

    def _spool_candidates(self) -> Iterator[Path]:
        """Spool files in the folder, oldest first (they may vanish while we look).

        This process's own segments of rows in flight are left out: they are locked anyway.
        """
        try:
            entries = [
                entry for entry in os.scandir(self._spool_dir) if is_segment_name(entry.name)
            ]
        except OSError:
            return
        private = self._journal.private_paths()
        found = []
        for entry in entries:
            if entry.path in private:
                continue
            with contextlib.suppress(OSError):
                found.append((entry.stat().st_mtime, entry.path))
        for _, path in sorted(found):
            yield Path(path)

    def _replay_file(self, path: Path) -> tuple[int, bool]:
        """Replay one spool file if it can be locked.

        Returns:
            (rows committed, whether the file is finished and deleted).
        """
        try:
            handle = open(path, "rb")  # noqa: SIM115 (closed in the finally below)
        except FileNotFoundError:
            return 0, False
        try:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0, False  # a live writer's segment, or another replayer's
            # Another replayer may have finished (and deleted) this file between our open() and
            # our lock: then we hold a lock on a file that is gone.
            try:
                if os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino:
                    return 0, False
            except FileNotFoundError:
                return 0, False
            replayed = 0
            for chunk in self._read_spool(path, handle):
                outcome = self._insert(chunk)
                replayed += outcome.committed
                if outcome.committed:
                    self._count("replayed", outcome.committed)
                if outcome.unsent:
                    self._mark_unavailable(outcome.error)
                    log.warning(
                        "inference log: replay of %s stopped by the outage after %d rows; "
                        "the file is kept",
                        path.name,
                        replayed,
                    )
                    return replayed, False
                self._serve_queue_during_replay()
                if not self._available:  # a queue batch found the database gone
                    return replayed, False
            path.unlink()
            return replayed, True
        finally:
            handle.close()

    def _read_spool(self, path: Path, handle: BinaryIO) -> Iterator[list[InferenceRecord]]:
        """The records of a spool file in chunks of `batch_size`; bad lines are set aside."""
        chunk: list[InferenceRecord] = []
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                chunk.append(record_from_json(line))
            except Exception as error:  # a torn or corrupt line
                torn = not line.endswith(b"\n")
                log.warning(
                    "inference log: skipping %s line %d of %s (%s); kept in the rejected file",
                    "torn" if torn else "unreadable",
                    number,
                    path.name,
                    error,
                )
                self._write_rejected(
                    {
                        "error": f"unreadable spool line {number} of {path.name}: {error}",
                        "line": line.decode("utf-8", errors="replace"),
                    }
                )
                continue
            if len(chunk) >= self._batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _serve_queue_during_replay(self) -> None:
        """In the writer thread, write a queue batch between replay chunks when rows pile up.

        A long spool must not starve the live rows: without this the queue would fill up and
        spill into the spool while the spool is being emptied.
        """
        if threading.current_thread() is not self._thread:
            return
        if self._queue.qsize() < min(self._batch_size, max(self._max_queue // 2, 1)):
            return
        held = self._inflight  # the batch that led to this replay, if any: still held
        with self._take_lock:
            items = self._take()
            self._inflight = [*(held or ()), *items]
        try:
            if items:
                self._handle_batch(items)
        finally:
            self._inflight = held

    # --- the database ----------------------------------------------------------------------

    def _retry_due(self) -> bool:
        return time.monotonic() >= self._next_attempt

    def _probe(self) -> bool:
        """Whether the database answers ``SELECT 1`` (errors are logged at DEBUG)."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception as error:  # whatever it is, the database does not answer
            self._probe_error = error
            log.debug("inference database probe failed: %s", _summary(error))
            return False
        return True

    def _try_database(self) -> bool:
        """Probe the database; when it answers, mark it available and replay the spool."""
        if not self._probe():
            self._mark_unavailable(self._probe_error)
            return False
        if not self._available:
            with self._stats_lock:
                spooled = self._counts["spooled"] - self._spooled_at_down
            log.info(
                "inference database reachable again after %.1f s (%d rows spooled meanwhile); "
                "replaying the spool",
                time.monotonic() - self._down_since,
                spooled,
            )
            self._available = True
        self._next_orphan_scan = time.monotonic() + _ORPHAN_SCAN_S
        self.replay_spool()
        return self._available

    def _mark_unavailable(self, error: BaseException | None) -> None:
        self._next_attempt = time.monotonic() + self._retry_interval_s
        if self._available:
            self._available = False
            self._down_since = time.monotonic()
            with self._stats_lock:
                self._spooled_at_down = self._counts["spooled"]
            log.warning(
                "inference database unavailable (%s): keeping rows in the spool in %s, "
                "retrying every %.1f s",
                _summary(error) if error else "unknown error",
                self._spool_dir,
                self._retry_interval_s,
            )
        else:
            log.debug("inference database still unavailable: %s", error and _summary(error))

    def _insert(self, records: Sequence[InferenceRecord]) -> _Outcome:
        """Insert `records`, in one statement if possible, else row by row.

        A batch refused for the values of some row is retried row by row, so one bad row costs
        only itself: it is quarantined (rejected file, counted as dropped). A row is blamed
        only when the database still answers a probe right after refusing it: an error this
        module does not know (a pool timeout, say) must not turn rows into rejects. A row whose
        key is already stored with other values (or taken by another row of the same batch)
        is a conflict: quarantined too, never dropped silently. An outage at any point returns
        the rows not yet stored as `unsent`, for the caller to keep.
        """
        outcome = _Outcome()
        rows: list[dict[str, Any]] = []
        good: list[InferenceRecord] = []
        for record in records:
            try:
                rows.append(self._db_row(record))
                good.append(record)
            except Exception as error:  # a bad value, not an outage
                self._reject(record, error)
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
                _summary(error),
            )
        for i, (row, record) in enumerate(zip(rows, good, strict=True)):
            try:
                clashes = self._execute([row])
            except Exception as error:  # classified below
                if is_outage(error) or not self._probe():
                    outcome.unsent, outcome.error = good[i:], error
                    return outcome
                self._reject(record, error)
                outcome.rejected += 1
                continue
            self._conflicts([record], clashes, outcome)
            outcome.committed += 1 - len(clashes)
        return outcome

    def _dedupe(
        self, rows: list[dict[str, Any]], good: list[InferenceRecord], outcome: _Outcome
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
            elif _same_values(kept_rows[index], row):
                outcome.committed += 1
            else:
                self._conflict(record)
                outcome.conflicts += 1
        return kept_rows, kept_good

    def _conflicts(
        self, good: Sequence[InferenceRecord], clashes: Sequence[int], outcome: _Outcome
    ) -> None:
        for index in clashes:
            self._conflict(good[index])
        outcome.conflicts += len(clashes)

    def _db_row(self, record: InferenceRecord) -> dict[str, Any]:
        row = record_to_row(record)
        if self._strip_nul:
            for name in _TEXT_FIELDS:
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
        with self._engine.begin() as connection:  # one transaction per batch
            if self._copy and len(rows) > 1:
                return _copy_batch(connection, rows)
            result = connection.execute(self._insert_statement, rows)
            if result.rowcount == len(rows):
                return []
            return _differing_rows(connection, rows)

    # --- quarantine ------------------------------------------------------------------------

    def _reject(self, record: InferenceRecord, error: BaseException) -> None:
        """Quarantine a record the database refused (or that cannot be stored at all)."""
        log.error(
            "inference log: rejected row %s#%s: %s",
            getattr(record, "request_id", "?"),
            getattr(record, "item", "?"),
            _summary(error),
        )
        self._write_rejected({"error": _summary(error), "record": _payload(record)})
        self._count("dropped", 1)

    def _conflict(self, record: InferenceRecord) -> None:
        """Quarantine a record whose key holds a different row: never dropped silently."""
        log.error(
            "inference log: conflicting row %s#%s: a different row is stored under its key; "
            "kept in the rejected file",
            record.request_id,
            record.item,
        )
        self._write_rejected(
            {
                "error": "conflict: a different row is stored under this key",
                "record": _payload(record),
            }
        )
        self._count("conflicts", 1)

    def _write_rejected(self, entry: dict[str, Any]) -> None:
        line = (json.dumps(entry, ensure_ascii=True, default=str) + "\n").encode("ascii")
        try:
            with self._rejected_lock:
                if self._rejected_path is None:
                    self._spool_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{REJECTED_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{SPOOL_SUFFIX}"
                    self._rejected_path = self._spool_dir / name
                with open(self._rejected_path, "ab") as handle:
                    handle.write(line)
        except OSError as error:
            log.error("inference log: cannot write the rejected file: %s", error)

    # --- counters --------------------------------------------------------------------------

    def _count(self, kind: str, rows: int) -> None:
        with self._stats_lock:
            self._counts[kind] += rows
        self._emit(kind, rows)

    def _set_lag(self, seconds: float) -> None:
        with self._stats_lock:
            self._lag_s = seconds
        self._emit("lag", seconds)

    def _mark_done(self, rows: int) -> None:
        with self._done_cond:
            self._done_total += rows
            self._done_cond.notify_all()

    def _emit(self, kind: str, value: float) -> None:
        if self._listener is None:
            return
        try:
            self._listener(kind, value)
        except Exception:  # metrics must not break logging
            if self._warn_sometimes("listener", "inference log: listener failed on %r", kind):
                log.debug("listener traceback", exc_info=True)

    def _warn_sometimes(
        self, key: str, message: str, *args: Any, level: int = logging.WARNING
    ) -> bool:
        """Log `message` at most every `_WARN_EVERY_S` per `key`; True if it was logged."""
        now = time.monotonic()
        if now - self._last_warning.get(key, -_WARN_EVERY_S) < _WARN_EVERY_S:
            return False
        self._last_warning[key] = now
        log.log(level, message, *args)
        return True


def _payload(record: InferenceRecord) -> Any:
    """A quarantined record as JSON-ready values, or its repr when it cannot be serialised."""
    try:
        return json.loads(record_to_json(record))
    except Exception:  # unserialisable: keep what can be kept
        return repr(record)


def _differing_rows(connection: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Indexes of `rows` whose key holds a stored row with other values (inside the caller's
    transaction, after its insert), compared in Python: SQLite, and single rows anywhere."""
    table = Inference.__table__
    key = tuple_(table.c.request_id, table.c.item)
    stored: dict[tuple[str, int], Any] = {}
    keys = [(row["request_id"], row["item"]) for row in rows]
    for start in range(0, len(keys), _LOOKUP_CHUNK):
        query = select(table).where(key.in_(keys[start : start + _LOOKUP_CHUNK]))
        for found in connection.execute(query).mappings():
            stored[(found["request_id"], found["item"])] = found
    return [
        i
        for i, (k, row) in enumerate(zip(keys, rows, strict=True))
        if k in stored and not _same_values(row, stored[k])
    ]


# The batch path on PostgreSQL: COPY into a per-connection temporary table, then one
# INSERT ... SELECT ... ON CONFLICT DO NOTHING. Measured on this machine with 500-row batches
# (30,000 rows): an executemany through SQLAlchemy cost 42-52 us of the API worker's CPU per row
# and sent one statement per row (SQLAlchemy 2.1 does not page ON CONFLICT without RETURNING);
# with RETURNING, 24 us; COPY, about 10 us, and the least server CPU. That CPU is taken from
# the request threads of the same worker, so it shows directly in requests/s (bench_api.py).
_COPY_COLUMNS = _COLUMNS
_STAGE = "inferences_stage"
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(_COPY_COLUMNS)} FROM inferences WITH NO DATA"
)
# Every field is quoted (QUOTE_ALL), so an empty string stays a string; FORCE_NULL makes the
# one nullable column's empty field NULL (record_to_row never gives it an empty string).
_COPY_STAGE = (
    f"COPY {_STAGE} ({', '.join(_COPY_COLUMNS)}) FROM STDIN "
    "WITH (FORMAT csv, FORCE_NULL (client_request_id))"
)
_MERGE_STAGE = (
    f"INSERT INTO inferences ({', '.join(_COPY_COLUMNS)}) "
    f"SELECT {', '.join(_COPY_COLUMNS)} FROM {_STAGE} ON CONFLICT (request_id, item) DO NOTHING"
)
# Run only when the merge stored fewer rows than the stage holds: the staged rows whose key
# holds a stored row with other values. json has no equality operator: compared as jsonb.
_COMPARED = [
    f"{{0}}.{name}::jsonb" if name == "top_k" else f"{{0}}.{name}"
    for name in _COPY_COLUMNS
    if name not in ("request_id", "item")
]
_DIFFERING_STAGE = (
    f"SELECT s.request_id, s.item FROM {_STAGE} s "
    "JOIN inferences i ON i.request_id = s.request_id AND i.item = s.item "
    f"WHERE ({', '.join(c.format('s') for c in _COMPARED)}) "
    f"IS DISTINCT FROM ({', '.join(c.format('i') for c in _COMPARED)})"
)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""  # NULL through FORCE_NULL
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()  # NaN becomes null, valid JSON for PostgreSQL
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _copy_batch(connection: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Write `rows` (from `record_to_row`, distinct keys) with COPY, in the caller's transaction.

    Driver errors come back as SQLAlchemy's `DBAPIError`, as from any other statement, so
    `is_outage` tells an outage from a bad value the same way.

    Returns:
        The indexes of the rows not stored because a different row holds their key.
    """
    import psycopg2

    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows([_csv_value(row[name]) for name in _COPY_COLUMNS] for row in rows)
    buffer.seek(0)
    try:
        with connection.connection.cursor() as cursor:
            cursor.execute(_CREATE_STAGE)
            cursor.copy_expert(_COPY_STAGE, buffer)
            cursor.execute(_MERGE_STAGE)
            if cursor.rowcount == len(rows):
                return []
            cursor.execute(_DIFFERING_STAGE)
            differing = cursor.fetchall()
    except psycopg2.Error as error:
        raise sa_exc.DBAPIError.instance(
            _COPY_STAGE, None, error, psycopg2.Error, connection_invalidated=False
        ) from error
    if not differing:
        return []
    index = {(row["request_id"], row["item"]): i for i, row in enumerate(rows)}
    return sorted(index[(request_id, item)] for request_id, item in differing)


def _make_log_engine(url: str) -> Engine:
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
