"""Which database errors are transient: worth trying the same work again later.

The rule belongs to storage: the inference log's outage rule (`persistence.inference_log`)
builds on it, and the core's `db_retry` decorator (`dc.utilities.decorators`, which re-exports
it for its callers) retries on it. Storage must not import the core, so it lives here.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

try:  # the PostgreSQL driver is a dependency, but SQLite-only use must not need it
    import psycopg2
except ImportError:  # pragma: no cover
    psycopg2 = None

# SQLite reports both "the database is busy" and "no such table" as OperationalError; only the
# first goes away by waiting.
_SQLITE_TRANSIENT = ("database is locked", "database table is locked", "busy")


def is_transient_db_error(error: BaseException) -> bool:
    """Whether retrying the same work later may succeed: a lost or refused connection.

    Retried: a connection SQLAlchemy had to invalidate; SQLAlchemy's OperationalError and
    InterfaceError (connection refused, closed, reset; server shutting down); psycopg2's own
    OperationalError and InterfaceError when raised outside SQLAlchemy; a locked SQLite file.
    Never retried: errors that would fail the same way again (IntegrityError,
    ProgrammingError, DataError, a missing SQLite table...).
    """
    if isinstance(error, sa_exc.DBAPIError):
        if error.connection_invalidated:
            return True
        if isinstance(error, sa_exc.OperationalError | sa_exc.InterfaceError):
            if isinstance(error.orig, sqlite3.Error):
                return any(marker in str(error.orig).lower() for marker in _SQLITE_TRANSIENT)
            return True
        return False
    return psycopg2 is not None and isinstance(
        error, psycopg2.OperationalError | psycopg2.InterfaceError
    )
