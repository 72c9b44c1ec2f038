"""The inference log's counters: what became of the rows, for `stats()` and for Prometheus.

Every row is counted once per fate: enqueued, written (queue rows committed), spooled (kept on
disk for replay), replayed (spool rows committed), dropped (refused by the database for their
values, or not even writable to disk), conflicts (a different row holds their key), and lag.
Each change goes to the `listener` too, from the thread that did the work. Beside them, the
progress of the queue (rows queued, rows done) is what `flush()` waits on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

COUNTERS = ("enqueued", "written", "spooled", "replayed", "dropped", "conflicts")
# Repeated warnings (queue full, listener failures) are logged at most this often.
_WARN_EVERY_S = 10.0


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


class Throttle:
    """Logs a repeated message at most every `_WARN_EVERY_S` per key (a full queue, a failing
    listener or disk would otherwise log on every request)."""

    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._last: dict[str, float] = {}

    def __call__(self, key: str, message: str, *args: Any, level: int = logging.WARNING) -> bool:
        """Log `message` unless `key` was logged in the last `_WARN_EVERY_S`; True if logged."""
        now = time.monotonic()
        if now - self._last.get(key, -_WARN_EVERY_S) < _WARN_EVERY_S:
            return False
        self._last[key] = now
        self._log.log(level, message, *args)
        return True


class Counters:
    """The counters and the queue's progress, under one lock, thread-safe.

    Args:
        listener: called as ``listener(kind, value)`` for each counter (value: rows) and for
            "lag" (value: seconds). An exception from it is logged and ignored.
    """

    def __init__(self, listener: Callable[[str, float], None] | None) -> None:
        self._listener = listener
        self._warn = Throttle(log)
        self._lock = threading.Lock()
        self._done_cond = threading.Condition(self._lock)
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._lag_s = 0.0
        self._queued_total = 0  # rows put on the queue
        self._done_total = 0  # rows taken off the queue and written, kept or dropped

    def count(self, kind: str, rows: int) -> None:
        with self._lock:
            self._counts[kind] += rows
        self._emit(kind, rows)

    def set_lag(self, seconds: float) -> None:
        with self._lock:
            self._lag_s = seconds
        self._emit("lag", seconds)

    def get(self, kind: str) -> int:
        with self._lock:
            return self._counts[kind]

    def snapshot(self) -> tuple[dict[str, int], float]:
        """The counters and the lag, read together."""
        with self._lock:
            return dict(self._counts), self._lag_s

    # --- the queue's progress, for flush() ---------------------------------------------------

    def queued(self, rows: int) -> None:
        with self._lock:
            self._queued_total += rows

    def queued_total(self) -> int:
        with self._lock:
            return self._queued_total

    def done(self, rows: int) -> None:
        """Rows taken off the queue are handled (written, kept or dropped)."""
        with self._done_cond:
            self._done_total += rows
            self._done_cond.notify_all()

    def wait_done(self, target: int, timeout_s: float) -> bool:
        """Wait until `target` queued rows are handled; True if they were in time."""
        with self._done_cond:
            return self._done_cond.wait_for(lambda: self._done_total >= target, timeout_s)

    def _emit(self, kind: str, value: float) -> None:
        if self._listener is None:
            return
        try:
            self._listener(kind, value)
        except Exception:  # metrics must not break logging
            if self._warn("listener", "inference log: listener failed on %r", kind):
                log.debug("listener traceback", exc_info=True)
