"""The promoted registry rows of one region, as a model store reads them at each refresh.

The last rows read are kept on local disk: a worker that starts (or is recycled) while the
database is away serves from that copy instead of answering 503 to everything. The file is
replaced atomically, and written only when the rows changed, so that the polling thread does
not write a file every couple of seconds. An unreachable registry is logged once when it goes
away and once when it is back, not at every refresh.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dc.config import Settings
from dc.serve.state import iso, row_facts
from persistence import registry

log = logging.getLogger(__name__)

_TIMESTAMPS = ("promoted_at", "reload_requested_at")


class RegistryRows:
    """Reads the promoted rows of `settings.serving_region`, with the disk copy as fallback.

    Args:
        settings: `serving_region`, `spool_dir` (where the copy is kept: `registry-<region>.json`)
            and `model_refresh_s` (for the log).
        sessions: a session factory on the registry's database.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.region = settings.serving_region
        self.path = Path(settings.spool_dir) / f"registry-{self.region}.json"
        self._refresh_s = settings.model_refresh_s
        self._sessions = sessions
        self._error: str | None = None  # why the registry was unreachable at the last read
        self._saved: str | None = None  # the text last written, to skip identical writes

    def read(self, *, synced: bool, served: int) -> list[dict[str, Any]] | None:
        """The promoted rows (`dc.serve.state.row_facts`), saved to disk when they changed.

        While the registry is unreachable: the disk copy if the store has never synced, else
        None (keep serving what is loaded). Never raises for a database error.

        Args:
            synced: the store has read rows before.
            served: how many models the store serves (for the log).
        """
        try:
            with self._sessions() as session:
                rows = [row_facts(row) for row in registry.promoted_versions(session, self.region)]
        except Exception as exc:  # SQLAlchemy, driver or network errors: keep serving
            return self._unreachable(exc, synced=synced, served=served)
        if self._error is not None:
            log.info("model registry reachable again")
            self._error = None
        self.save(rows)
        return rows

    def _unreachable(
        self, exc: Exception, *, synced: bool, served: int
    ) -> list[dict[str, Any]] | None:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if self._error is None:
            log.warning(
                "model registry unreachable (%s); serving the %d models loaded, retrying "
                "every %.1f s",
                message,
                served,
                self._refresh_s,
            )
        else:
            log.debug("model registry still unreachable: %s", message)
        self._error = message
        if synced:
            return None
        saved = self.load()
        if saved is not None:
            log.warning(
                "starting from the registry rows saved in %s (%d models) until the database "
                "answers",
                self.path,
                len(saved),
            )
        return saved

    def save(self, rows: list[dict[str, Any]]) -> None:
        """Write `rows` unless they are what was written last; an OS error is logged."""
        text = json.dumps(rows, default=iso, sort_keys=True)
        if text == self._saved:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.path)  # readers never see half a file
            self._saved = text
        except OSError as exc:
            log.warning("could not save the registry rows to %s: %s", self.path, exc)

    def load(self) -> list[dict[str, Any]] | None:
        """The saved rows (timestamps as datetimes again), or None when there is no copy."""
        try:
            rows = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for row in rows:
            for key in _TIMESTAMPS:
                if row.get(key):
                    row[key] = datetime.fromisoformat(row[key])
        return rows
