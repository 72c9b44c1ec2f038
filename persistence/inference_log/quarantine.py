"""The rejected file: rows that no retry can store are set aside here, never dropped silently.

``rejected-<pid>-<uuid>.jsonl`` in the spool folder, one JSON object per line: a row the
database refused for its values (a string too long, a value of the wrong type), a row whose key
is already stored with different values (a conflict), or a spool line that does not parse (a
torn last line of a full disk). Each is logged at ERROR (WARNING for a spool line) and counted
(as dropped, or as a conflict); nothing replays them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

from persistence.inference_log.counters import Counters
from persistence.inference_log.journal import SEGMENT_SUFFIX
from persistence.inference_log.outage import summary
from persistence.inference_log.record import InferenceRecord, record_to_json

log = logging.getLogger(__name__)

REJECTED_PREFIX = "rejected-"


class Quarantine:
    """This process's rejected file in `spool_dir` (created at the first rejected row)."""

    def __init__(self, spool_dir: Path, counters: Counters) -> None:
        self._spool_dir = spool_dir
        self._counters = counters
        self._lock = threading.Lock()
        self._path: Path | None = None

    def reject(self, record: InferenceRecord, error: BaseException) -> None:
        """Quarantine a record the database refused (or that cannot be stored at all)."""
        log.error(
            "inference log: rejected row %s#%s: %s",
            getattr(record, "request_id", "?"),
            getattr(record, "item", "?"),
            summary(error),
        )
        self.write({"error": summary(error), "record": _payload(record)})
        self._counters.count("dropped", 1)

    def conflict(self, record: InferenceRecord) -> None:
        """Quarantine a record whose key holds a different row: never dropped silently."""
        log.error(
            "inference log: conflicting row %s#%s: a different row is stored under its key; "
            "kept in the rejected file",
            record.request_id,
            record.item,
        )
        self.write(
            {
                "error": "conflict: a different row is stored under this key",
                "record": _payload(record),
            }
        )
        self._counters.count("conflicts", 1)

    def write(self, entry: dict[str, Any]) -> None:
        """Append one entry to the rejected file; a disk that refuses it is logged at ERROR."""
        line = (json.dumps(entry, ensure_ascii=True, default=str) + "\n").encode("ascii")
        try:
            with self._lock:
                if self._path is None:
                    self._spool_dir.mkdir(parents=True, exist_ok=True)
                    name = f"{REJECTED_PREFIX}{os.getpid()}-{uuid.uuid4().hex}{SEGMENT_SUFFIX}"
                    self._path = self._spool_dir / name
                with open(self._path, "ab") as handle:
                    handle.write(line)
        except OSError as error:
            log.error("inference log: cannot write the rejected file: %s", error)


def _payload(record: InferenceRecord) -> Any:
    """A quarantined record as JSON-ready values, or its repr when it cannot be serialised."""
    try:
        return json.loads(record_to_json(record))
    except Exception:  # unserialisable: keep what can be kept
        return repr(record)
