"""Replay: rows left in spool files go to the database, and each file is deleted once all its
rows are stored.

A replay takes every ``spool-*.jsonl`` it can lock with ``LOCK_EX | LOCK_NB``: segments of live
writers are skipped; segments of dead (or killed) workers, of a previous run, and the process's
own released segments are replayed by whichever writer gets there first. A file is deleted only
after every one of its rows is committed (or quarantined); a replay cut short by an outage
keeps the file, and the next replay inserts it again, harmlessly (the insert is idempotent). A
line that does not parse (a torn last line of a full disk) is skipped with a WARNING and kept in
the rejected file.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from persistence.inference_log.counters import Counters
from persistence.inference_log.database import Database
from persistence.inference_log.outage import Availability
from persistence.inference_log.quarantine import Quarantine
from persistence.inference_log.record import InferenceRecord, record_from_json
from persistence.inference_log.spool import Spool

log = logging.getLogger(__name__)


class Replayer:
    """Replays the spool folder of one log into its database.

    Args:
        batch_size: rows per insert.
        between_chunks: called after each chunk written (the writer serves its queue there,
            so that a long spool does not starve the live rows).
    """

    def __init__(
        self,
        *,
        spool: Spool,
        database: Database,
        availability: Availability,
        counters: Counters,
        quarantine: Quarantine,
        batch_size: int,
        between_chunks: Callable[[], None],
    ) -> None:
        self._spool = spool
        self._database = database
        self._availability = availability
        self._counters = counters
        self._quarantine = quarantine
        self._batch_size = batch_size
        self._between_chunks = between_chunks

    def replay(self) -> int:
        """Insert the rows of every spool file not owned by a live writer, then delete it.

        The process's own segments that keep rows are sealed first, so that they are replayed
        too (each as soon as none of its rows is still on the queue). Stops at the first
        outage, keeping the file being replayed and marking the database unavailable.

        Returns:
            Rows committed from the spool by this call (rows already stored count too).
        """
        self._spool.pending = False
        total = files = 0
        try:
            self._spool.seal_kept()
            for path in self._spool.candidates():
                replayed, finished = self._replay_file(path)
                total += replayed
                files += finished
                if not finished and not self._availability.available:
                    break
        except Exception:  # the writer thread must survive a surprise
            log.exception("inference log: spool replay failed")
        if total or files:
            log.info("inference log: replayed %d rows from %d spool file(s)", total, files)
        return total

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
            for chunk in self._read(path, handle):
                outcome = self._database.insert(chunk)
                replayed += outcome.committed
                if outcome.committed:
                    self._counters.count("replayed", outcome.committed)
                if outcome.unsent:
                    self._availability.went_down(outcome.error)
                    log.warning(
                        "inference log: replay of %s stopped by the outage after %d rows; "
                        "the file is kept",
                        path.name,
                        replayed,
                    )
                    return replayed, False
                self._between_chunks()
                if not self._availability.available:  # a queue batch found the database gone
                    return replayed, False
            path.unlink()
            return replayed, True
        finally:
            handle.close()

    def _read(self, path: Path, handle: BinaryIO) -> Iterator[list[InferenceRecord]]:
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
                self._quarantine.write(
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
