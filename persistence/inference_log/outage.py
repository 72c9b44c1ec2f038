"""The outage rule: which errors mean "the database cannot take rows now", and the state that
follows from it (available or not, when to try again).

An outage keeps rows (in the journal, which is the spool) and retries later; any other error is
about the values of a row, and only that row is quarantined. The writer consults this rule after
every failed statement; see `persistence.inference_log.database` for where it is applied.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path

from sqlalchemy import exc as sa_exc

from persistence.inference_log.counters import Counters
from persistence.transient import is_transient_db_error

log = logging.getLogger(__name__)

# PostgreSQL error classes (SQLSTATE's first two characters) that say "the database cannot take
# rows right now", whatever the rows: connection (08), transaction rollback (40), syntax or
# access rule, e.g. a missing table or privilege (42), insufficient resources (53), object not
# in prerequisite state (55), operator intervention, e.g. shutdown (57), system error (58),
# internal error (XX). The rows are kept in the spool and retried. Anything else (22 data
# exception, 23 integrity constraint, ...) is about a row's values: that row is quarantined.
_PG_OUTAGE_CLASSES = frozenset({"08", "40", "42", "53", "55", "57", "58", "XX"})


def summary(error: BaseException) -> str:
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


class Availability:
    """Whether the database takes rows, and when the writer may try it again.

    Changed only by the writer (or the thread standing in for it); read by anyone.

    Args:
        retry_interval_s: while the database is unreachable, how often it is tried again.
        spool_dir: where the rows are kept meanwhile (for the log records).
        counters: the log's counters (rows spooled during an outage are reported at its end).
    """

    def __init__(self, retry_interval_s: float, spool_dir: Path, counters: Counters) -> None:
        self.available = True
        self._retry_interval_s = retry_interval_s
        self._spool_dir = spool_dir
        self._counters = counters
        self._down_since = 0.0
        self._spooled_at_down = 0
        self._next_attempt = 0.0

    def retry_due(self) -> bool:
        return time.monotonic() >= self._next_attempt

    def went_down(self, error: BaseException | None) -> None:
        """The database did not take rows: keep them, and try again in `retry_interval_s`."""
        self._next_attempt = time.monotonic() + self._retry_interval_s
        if self.available:
            self.available = False
            self._down_since = time.monotonic()
            self._spooled_at_down = self._counters.get("spooled")
            log.warning(
                "inference database unavailable (%s): keeping rows in the spool in %s, "
                "retrying every %.1f s",
                summary(error) if error else "unknown error",
                self._spool_dir,
                self._retry_interval_s,
            )
        else:
            log.debug("inference database still unavailable: %s", error and summary(error))

    def came_back(self) -> None:
        """The database answered a probe: rows go to it again."""
        if self.available:
            return
        spooled = self._counters.get("spooled") - self._spooled_at_down
        log.info(
            "inference database reachable again after %.1f s (%d rows spooled meanwhile); "
            "replaying the spool",
            time.monotonic() - self._down_since,
            spooled,
        )
        self.available = True
