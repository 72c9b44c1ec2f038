"""The bounded in-memory queue between the request threads and the writer thread.

Request threads put rows (already in the journal) on it; the writer takes them in batches. The
writer does not wake up for every row: it waits for a full batch, `flush_interval_s`, or a
wake-up marker from `flush()` or `close()`, whichever comes first, so that a busy worker does
not hand the GIL to the writer on every request.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence

from persistence.inference_log.journal import Segment
from persistence.inference_log.record import InferenceRecord

# A queued row: the record, time.monotonic() at enqueue, and the journal segment holding it
# (None when the journal could not be written).
Item = tuple[InferenceRecord, float, Segment | None]

# Put on the queue by flush() and close(): a writer waiting to fill a batch writes it at once.
_WAKE = (None, 0.0, None)


class RowQueue:
    """Rows waiting for the writer, in order.

    Unbounded as a `queue.Queue`: the caller keeps it within its limit (checking `qsize`
    under its own lock), so a put never fails half-way through a request's rows.

    Args:
        batch_size: most rows per batch; a queue of that many rows wakes the writer.
        flush_interval_s: longest the writer waits to fill a batch once a row is queued.
    """

    def __init__(self, batch_size: int, flush_interval_s: float) -> None:
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._queue: queue.Queue[Item] = queue.Queue()
        # Set when a full batch is queued, or by wake(): ends the writer's batch wait.
        self._batch_ready = threading.Event()
        self._lock = threading.Lock()
        self._wake_pending = False  # a _WAKE marker is on the queue (not a row)

    def qsize(self) -> int:
        """Items on the queue (a wake-up marker included)."""
        return self._queue.qsize()

    def depth(self) -> int:
        """Rows on the queue."""
        with self._lock:
            return max(0, self._queue.qsize() - self._wake_pending)

    def put(self, records: Sequence[InferenceRecord], now: float, segment: Segment | None) -> None:
        """Queue `records`, enqueued at `now` and held in the journal by `segment`."""
        put = self._queue.put_nowait
        for record in records:
            put((record, now, segment))
        if self._queue.qsize() >= self._batch_size:
            self._batch_ready.set()

    def wake(self) -> None:
        """Make a writer waiting for rows go on at once (a full queue wakes it anyway).

        At most one marker is on the queue at a time, so flush() calls cannot fill it up.
        """
        self._batch_ready.set()
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        self._queue.put_nowait(_WAKE)  # type: ignore[arg-type]

    def take(self, first_wait_s: float = 0.0) -> list[Item]:
        """Take up to `batch_size` queued rows (one taker at a time: the caller's lock).

        Waits up to `first_wait_s` for a first row, then up to `flush_interval_s` for more;
        never waits when `first_wait_s` is 0. A wake-up marker ends the wait at once.
        """
        wait = first_wait_s > 0
        items: list[Item] = []
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
                with self._lock:
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
