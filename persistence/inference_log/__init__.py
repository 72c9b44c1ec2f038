"""The non-blocking inference log: every served prediction becomes a row of `inferences`.

A request thread only calls `InferenceLog.enqueue`, which appends the rows to this process's
journal on local disk (one ``os.write``, no fsync: see `journal`) and puts them on a bounded
in-memory queue; it never waits on the database and never raises. Because the rows are in the
journal before the answer is sent, a prediction that was answered survives the death of the
process that answered it (SIGKILL, the OOM killer), not only an orderly shutdown. One background
writer thread per process takes rows off the queue in batches and inserts each batch with a
single ``INSERT ... ON CONFLICT (request_id, item, created_at) DO NOTHING`` (on SQLite, whose
table is not partitioned, ``(request_id, item)``), so a row written twice (a retried batch, a
replayed journal, which carries the row's `created_at`) is stored exactly once; journal segments
whose rows are all committed are deleted. The same thread keeps the table's daily partitions on
PostgreSQL (`persistence.partitions`): at its start and hourly, it makes the coming days' and
drops the expired ones.

The key (`request_id`, `item`) is made by the server (`web.request_ids.request_id`: 128 random
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

- ``spool-<pid>-<uuid>.jsonl``: journal segments, JSON lines, one `InferenceRecord` per line
  with the field names of the dataclass, `created_at` in ISO 8601 with its UTC offset. Each
  process appends only to its own segments and holds an exclusive `fcntl.flock` on each while
  it owns it. Replay (`replay`) takes those of dead workers, of a previous run, and the
  process's own released segments: at the writer's start, when the database comes back, and
  every 30 s.
- ``rejected-<pid>-<uuid>.jsonl``: rows the database refused for their values, rows that
  conflict with a different stored row, and spool lines that do not parse (`quarantine`).

Metrics (`InferenceLog.stats()`, and the `listener` callback for Prometheus): see `counters`.
Nothing happens on import: no folder, no thread, no connection.

The modules, each with one job:

- `record`: the row's shape (`InferenceRecord`) and its forms: journal line, storage row.
- `journal`: this process's append-only segment files and the accounting of their rows.
- `rowqueue`: the in-memory queue between the request threads and the writer.
- `spool`: the rows on disk: journal appends, the spill of a full queue, settle and keep.
- `replay`: spool files of dead workers (and kept rows) into the database.
- `quarantine`: the rejected file.
- `outage`: which errors are an outage, and whether the database is available.
- `database`: the idempotent insert, its row-by-row fallback and conflict detection;
  `postgres`: its COPY form on PostgreSQL.
- `writer`: the writer thread; `counters`: the counters and `LogStats`.
- `service`: `InferenceLog`, which puts them together.
"""

from __future__ import annotations

from persistence.inference_log.counters import LogStats
from persistence.inference_log.journal import SEGMENT_PREFIX as SPOOL_PREFIX
from persistence.inference_log.journal import SEGMENT_SUFFIX as SPOOL_SUFFIX
from persistence.inference_log.outage import is_outage
from persistence.inference_log.quarantine import REJECTED_PREFIX
from persistence.inference_log.record import (
    InferenceRecord,
    record_from_json,
    record_to_json,
    record_to_line,
    record_to_row,
)
from persistence.inference_log.service import InferenceLog

__all__ = [
    "REJECTED_PREFIX",
    "SPOOL_PREFIX",
    "SPOOL_SUFFIX",
    "InferenceLog",
    "InferenceRecord",
    "LogStats",
    "is_outage",
    "record_from_json",
    "record_to_json",
    "record_to_line",
    "record_to_row",
]
