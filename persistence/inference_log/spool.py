"""This process's rows on disk: the journal of rows in flight, the spill of a full queue, and
what is left for replay.

Every queued row is in a journal segment before its request is answered (`append`). The writer
then settles a row (committed or quarantined: its line is no longer needed) or keeps it (the
database is away: the line stays for a replay), and `Journal` deletes or releases segments as
they are accounted for. Rows that do not fit in the queue go straight to the spill segment,
which is all kept rows. `candidates` lists the ``spool-*.jsonl`` files a replay may take: any
process's released or left-behind segments, never this process's rows in flight.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from persistence.inference_log.counters import Counters, Throttle
from persistence.inference_log.journal import Journal, Segment, is_segment_name
from persistence.inference_log.quarantine import Quarantine
from persistence.inference_log.record import InferenceRecord, record_to_line
from persistence.inference_log.rowqueue import Item

log = logging.getLogger(__name__)


class Spool:
    """The journal of one log and the spool folder it shares with the other workers.

    Args:
        folder: the spool folder, created at the first row.
        segment_bytes: a journal segment is sealed (and a new one started) beyond this size.
        counters: the log's counters (rows spooled, rows dropped when the disk refuses them).
        quarantine: where a row that cannot even be written as a line goes.
    """

    def __init__(
        self, folder: Path, segment_bytes: int, counters: Counters, quarantine: Quarantine
    ) -> None:
        self.folder = folder
        self._journal = Journal(folder, segment_bytes=segment_bytes)
        self._counters = counters
        self._quarantine = quarantine
        self._warn = Throttle(log)
        # Own rows kept on disk: the writer replays them when the queue has room.
        self.pending = False

    def lines(
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
                self._quarantine.reject(record, error)
        return good, lines

    def append(self, data: bytes, rows: int) -> Segment | None:
        """Append queue rows to the live segment (the caller serialises appends with queueing).

        Returns:
            The segment, or None when the disk refused: the rows then live in memory only
            (they still reach the database, unless this process dies first).
        """
        try:
            return self._journal.append(data, rows)
        except OSError as error:
            self._warn(
                "journal",
                "inference log: cannot write the journal in %s (%s): rows are held in memory "
                "only until written",
                self.folder,
                error,
                level=logging.ERROR,
            )
            return None

    def spill(self, records: Sequence[InferenceRecord], lines: Sequence[bytes]) -> None:
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
                self.folder,
                error,
            )
            self._counters.count("dropped", len(records))
            return
        self.pending = True
        self._counters.count("spooled", len(records))

    def settle(self, items: Sequence[Item]) -> None:
        """Rows committed or quarantined: their journal lines are no longer needed."""
        if not items:
            return
        try:
            if self._journal.account(settled=_by_segment(items)):
                self.pending = True
        except Exception:  # the rows are stored; a journal error costs only a replay
            log.exception("inference log: journal accounting failed")

    def keep(self, items: Sequence[Item], *, sync: bool) -> None:
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
                    self.pending = True
            except Exception:  # the rows are still in their files: a replay finds them
                log.exception("inference log: journal accounting failed")
            self._counters.count("spooled", sum(counts.values()))
        loose = [record for record, _, segment in items if segment is None]
        if loose:
            self.spill(*self.lines(loose))

    def seal_kept(self) -> None:
        """Make this process's kept rows replayable (see `Journal.seal_kept`)."""
        self._journal.seal_kept()

    def has_kept(self) -> bool:
        return self._journal.has_kept()

    def close(self) -> None:
        """Finish the journal: delete what is settled, fsync and release what is kept."""
        self._journal.close()

    def candidates(self) -> Iterator[Path]:
        """Spool files in the folder, oldest first (they may vanish while we look).

        This process's own segments of rows in flight are left out: they are locked anyway.
        """
        try:
            entries = [entry for entry in os.scandir(self.folder) if is_segment_name(entry.name)]
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

    def waiting(self) -> tuple[int, int]:
        """(files, bytes) of the non-empty spool files that hold rows waiting for replay."""
        private = self._journal.private_paths()
        files = size = 0
        with contextlib.suppress(OSError), os.scandir(self.folder) as entries:
            for entry in entries:
                if is_segment_name(entry.name) and entry.path not in private:
                    with contextlib.suppress(OSError):
                        length = entry.stat().st_size
                        if length:
                            size += length
                            files += 1
        return files, size


def _by_segment(items: Sequence[Item]) -> dict[Segment, int]:
    """How many of `items` each journal segment holds."""
    counts: dict[Segment, int] = {}
    for _, _, segment in items:
        if segment is not None:
            counts[segment] = counts.get(segment, 0) + 1
    return counts
