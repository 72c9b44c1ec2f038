"""The inference log's on-disk journal: every row is on local disk before its answer is sent.

`InferenceLog.enqueue` appends each request's rows to this process's live segment with one
``os.write`` on an ``O_APPEND`` descriptor, then queues them. The write lands in the kernel's
page cache, so the rows outlive the process that wrote them (SIGKILL, the OOM killer, ECS
stopping a task); no fsync is paid per request, so a machine crash is not covered. The same
files are the spool of a database outage: a row the database cannot take is simply left in its
segment (`keep`) instead of being written a second time somewhere else.

Segments (``spool-<pid>-<uuid>.jsonl`` in the spool folder, one JSON line per row):

- Each process appends to its own *live* segment and holds an exclusive ``flock`` on every
  segment it owns. A segment is created under a hidden name, locked, then renamed into place, so
  a replayer never finds an unlocked file that a live writer is about to append to.
- A segment is *sealed* (no more appends) when it reaches `segment_bytes`, or when its kept rows
  are to be replayed. Rows that overflow the in-memory queue go to a separate *spill* segment,
  all of whose rows are kept by construction.
- The writer accounts for every row it takes off the queue: *settled* (committed, or quarantined
  in the rejected file) or *kept* (left on disk for replay). A sealed segment whose rows are all
  accounted for is deleted when none was kept, else unlocked (*released*) and left for replay,
  which any live process (or ``scripts/replay_spool.py``) does with the idempotent insert. The
  live segment is truncated whenever every row in it is settled, so it stays small.
- A dead process's segments are unlocked by the kernel when it dies: they are replayed whole.
  Rows of them that were already committed are inserted again, which the idempotent insert
  makes harmless.

One lock guards appends and the accounting; fsync, when asked for, runs outside it, so a
request thread never waits on the disk for another thread's fsync.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import uuid
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SEGMENT_PREFIX = "spool-"
SEGMENT_SUFFIX = ".jsonl"


def is_segment_name(name: str) -> bool:
    """Whether a file name in the spool folder is a journal segment (replayable)."""
    return name.startswith(SEGMENT_PREFIX) and name.endswith(SEGMENT_SUFFIX)


class Segment:
    """One journal file of this process and the accounting of its rows.

    Only `Journal` changes it, under its lock; the writer holds references (queue items) to
    settle or keep the rows later.
    """

    __slots__ = ("appended", "done", "fd", "kept", "path", "sealed", "settled", "size")

    def __init__(self, folder: Path) -> None:
        name = f"{SEGMENT_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{SEGMENT_SUFFIX}"
        self.path = folder / name
        # Locked under a name replay does not look at, then renamed (see the module docstring).
        hidden = folder / f".{name}.tmp"
        fd = os.open(hidden, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(hidden, self.path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                hidden.unlink()
            raise
        self.fd: int | None = fd
        self.size = 0  # bytes appended (since the last truncation)
        self.appended = 0  # rows in the file (complete lines)
        self.settled = 0  # rows committed or quarantined
        self.kept = 0  # rows left for replay
        self.sealed = False
        self.done = False  # deleted or released: nothing more to do with it

    @property
    def accounted(self) -> bool:
        return self.settled + self.kept >= self.appended

    def __repr__(self) -> str:
        return (
            f"Segment({self.path.name}, appended={self.appended}, settled={self.settled}, "
            f"kept={self.kept}, sealed={self.sealed}, done={self.done})"
        )


class Journal:
    """This process's journal segments in `folder` (created at the first append).

    Args:
        folder: the spool folder, shared by every worker of the machine.
        segment_bytes: the live segment is sealed and a new one started beyond this size.
    """

    def __init__(self, folder: str | Path, *, segment_bytes: int = 1 << 20) -> None:
        if segment_bytes < 1:
            raise ValueError("segment_bytes must be at least 1")
        self._folder = Path(folder)
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._live: Segment | None = None
        self._spill: Segment | None = None
        self._sealed: list[Segment] = []  # sealed, not yet deleted or released

    def append(self, data: bytes, rows: int, *, spill: bool = False) -> Segment:
        """Append `rows` complete lines (`data`, ending in a newline) in one write.

        Args:
            spill: write to the spill segment: the rows are kept for replay at once (they are
                not on the queue).

        Returns:
            The segment that holds the rows (the writer settles or keeps them there later).

        Raises:
            OSError: the folder or the file cannot be written (disk full, permissions). The
                segment is then sealed, so no line is ever appended after a torn one.
        """
        closing: list[tuple[int, bool]] = []
        try:
            return self._append(data, rows, spill, closing)
        finally:
            if closing:
                _close_all(closing)

    def _append(
        self, data: bytes, rows: int, spill: bool, closing: list[tuple[int, bool]]
    ) -> Segment:
        with self._lock:
            segment = self._spill if spill else self._live
            if segment is None:
                self._folder.mkdir(parents=True, exist_ok=True)
                segment = Segment(self._folder)
                if spill:
                    self._spill = segment
                else:
                    self._live = segment
            try:
                written = os.write(segment.fd, data)  # type: ignore[arg-type]
                if written != len(data):
                    raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            except BaseException:
                self._seal_locked(segment)
                self._finish_locked(segment, closing)
                raise
            segment.size += written
            segment.appended += rows
            if spill:
                segment.kept += rows
            if segment.size >= self._segment_bytes:
                self._seal_locked(segment)
                self._finish_locked(segment, closing)
            return segment

    def account(
        self,
        *,
        settled: Mapping[Segment, int] | None = None,
        kept: Mapping[Segment, int] | None = None,
        sync: bool = False,
    ) -> bool:
        """Record what became of rows taken off the queue; finish segments that are done.

        Args:
            settled: rows per segment committed or quarantined (no longer needed on disk).
            kept: rows per segment left for replay (the database is away, or shutting down).
            sync: fsync the segments that keep rows (the writer's outage path: the rows may
                wait there for a long time).

        Returns:
            True when a segment with kept rows was released, so that it can be replayed now.
        """
        released = False
        to_sync: list[int] = []
        closing: list[tuple[int, bool]] = []
        with self._lock:
            for segment, rows in (settled or {}).items():
                if not segment.done:
                    segment.settled += rows
            for segment, rows in (kept or {}).items():
                if not segment.done:
                    segment.kept += rows
                    if sync and segment.fd is not None:
                        to_sync.append(segment.fd)
            for segment in [*self._sealed]:
                released |= self._finish_locked(segment, closing, sync=sync)
            live = self._live
            if live is not None and live.kept == 0 and live.size and live.accounted:
                # Every row in it is committed: start it over, so a killed process leaves
                # little to replay and the disk holds only rows in flight.
                os.ftruncate(live.fd, 0)  # type: ignore[arg-type]
                live.size = live.appended = live.settled = 0
        # Outside the lock: a request thread appending meanwhile must not wait on the disk.
        # A descriptor may have been closed since by another thread (nothing to sync then).
        for fd in to_sync:
            with contextlib.suppress(OSError):
                os.fsync(fd)
        _close_all(closing)
        return released

    def seal_kept(self) -> None:
        """Seal the segments that keep rows (live and spill), so they are released for replay
        as soon as every row in them is accounted for (at once for the spill segment)."""
        closing: list[tuple[int, bool]] = []
        with self._lock:
            for segment in (self._live, self._spill):
                if segment is not None and segment.kept:
                    self._seal_locked(segment)
            for segment in [*self._sealed]:
                self._finish_locked(segment, closing)
        _close_all(closing)

    def close(self) -> None:
        """Finish every segment: delete those whose rows are all settled, fsync and release
        (unlock) the others, which are left for replay. Appending afterwards starts anew."""
        closing: list[tuple[int, bool]] = []
        with self._lock:
            for segment in (self._live, self._spill):
                if segment is not None:
                    self._seal_locked(segment)
            for segment in [*self._sealed]:
                if not segment.accounted:
                    segment.kept = segment.appended - segment.settled
                self._finish_locked(segment, closing, sync=True)
        _close_all(closing)

    def private_paths(self) -> set[str]:
        """Paths of this process's segments that hold no row waiting for replay (the journal
        of rows in flight, as opposed to the spool)."""
        with self._lock:
            segments = [self._live, self._spill, *self._sealed]
            return {str(s.path) for s in segments if s is not None and not s.kept and not s.done}

    def has_kept(self) -> bool:
        """Whether this process holds rows kept for replay that are not released yet."""
        with self._lock:
            segments = [self._live, self._spill, *self._sealed]
            return any(s is not None and s.kept and not s.done for s in segments)

    # --- under the lock ------------------------------------------------------------------------

    def _seal_locked(self, segment: Segment) -> None:
        if segment.sealed:
            return
        segment.sealed = True
        self._sealed.append(segment)
        if segment is self._live:
            self._live = None
        elif segment is self._spill:
            self._spill = None

    def _finish_locked(
        self, segment: Segment, closing: list[tuple[int, bool]], *, sync: bool = False
    ) -> bool:
        """Delete or release a sealed segment whose rows are all accounted for.

        Its descriptor (and with it the lock) is added to `closing`, for `_close_all` once the
        journal lock is let go.

        Returns:
            True when it is released with kept rows (to be replayed).
        """
        if segment.done or not segment.sealed or not segment.accounted:
            return False
        segment.done = True
        self._sealed.remove(segment)
        fd, segment.fd = segment.fd, None
        if segment.kept == 0:
            # Unlinked while still locked: no replayer can take it in between.
            try:
                segment.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as error:
                log.error("inference journal: deleting %s failed: %s", segment.path.name, error)
        if fd is not None:
            closing.append((fd, sync and segment.kept > 0))
        return segment.kept > 0


def _close_all(closing: list[tuple[int, bool]]) -> None:
    """fsync (where asked) and close descriptors: their locks go, replay may take the files."""
    for fd, sync in closing:
        try:
            if sync:
                os.fsync(fd)
        except OSError as error:
            log.error("inference journal: fsync failed: %s", error)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    closing.clear()
