"""The batch path on PostgreSQL: COPY into a per-connection temporary table, then one
``INSERT ... SELECT ... ON CONFLICT DO NOTHING``.

The conflict target is the partitioned table's primary key, (`request_id`, `item`,
`created_at`) (migration 0005: a key of a partitioned table must hold the partition key). A
replayed or retried row carries the `created_at` of its journal line, so it meets its stored
twin on the key and is stored once; a row that differs from the stored one under that key is
found by `_DIFFERING_STAGE` and quarantined. PostgreSQL cannot make (`request_id`, `item`)
alone unique across partitions; it stays unique because the server makes a fresh `request_id`
for every request (`web.request_ids`) and fixes `created_at` when it makes the record.

Measured on this machine with 500-row batches (30,000 rows): an executemany through SQLAlchemy
cost 42-52 us of the API worker's CPU per row and sent one statement per row (SQLAlchemy 2.1
does not page ON CONFLICT without RETURNING); with RETURNING, 24 us; COPY, about 10 us, and the
least server CPU. That CPU is taken from the request threads of the same worker, so it shows
directly in requests/s (bench_api.py).
"""

from __future__ import annotations

import csv
import io
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import exc as sa_exc

from persistence.inference_log.record import COLUMNS

_STAGE = "inferences_stage"
_CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ON COMMIT DELETE ROWS AS "
    f"SELECT {', '.join(COLUMNS)} FROM inferences WITH NO DATA"
)
# Every field is quoted (QUOTE_ALL), so an empty string stays a string; FORCE_NULL makes the
# one nullable column's empty field NULL (record_to_row never gives it an empty string).
_COPY_STAGE = (
    f"COPY {_STAGE} ({', '.join(COLUMNS)}) FROM STDIN "
    "WITH (FORMAT csv, FORCE_NULL (client_request_id))"
)
# The primary key of the partitioned `inferences`: the conflict target of every insert.
KEY = ("request_id", "item", "created_at")
_MERGE_STAGE = (
    f"INSERT INTO inferences ({', '.join(COLUMNS)}) "
    f"SELECT {', '.join(COLUMNS)} FROM {_STAGE} ON CONFLICT ({', '.join(KEY)}) DO NOTHING"
)
# Run only when the merge stored fewer rows than the stage holds: the staged rows whose key
# holds a stored row with other values (joined on the whole key, so that each staged row is
# looked up in its own day's partition only). json has no equality operator: compared as jsonb.
_COMPARED = [
    f"{{0}}.{name}::jsonb" if name == "top_k" else f"{{0}}.{name}"
    for name in COLUMNS
    if name not in KEY
]
_DIFFERING_STAGE = (
    f"SELECT s.request_id, s.item FROM {_STAGE} s JOIN inferences i ON "
    + " AND ".join(f"i.{name} = s.{name}" for name in KEY)
    + f" WHERE ({', '.join(c.format('s') for c in _COMPARED)}) "
    f"IS DISTINCT FROM ({', '.join(c.format('i') for c in _COMPARED)})"
)


def _csv_value(value: Any) -> str:
    if value is None:
        return ""  # NULL through FORCE_NULL
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()  # NaN becomes null, valid JSON for PostgreSQL
    if isinstance(value, float):
        return repr(value)
    return str(value)


def copy_batch(connection: Any, rows: list[dict[str, Any]]) -> list[int]:
    """Write `rows` (from `record_to_row`, distinct keys) with COPY, in the caller's transaction.

    Driver errors come back as SQLAlchemy's `DBAPIError`, as from any other statement, so
    `is_outage` tells an outage from a bad value the same way.

    Returns:
        The indexes of the rows not stored because a different row holds their key.
    """
    import psycopg2

    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n")
    writer.writerows([_csv_value(row[name]) for name in COLUMNS] for row in rows)
    buffer.seek(0)
    try:
        with connection.connection.cursor() as cursor:
            cursor.execute(_CREATE_STAGE)
            cursor.copy_expert(_COPY_STAGE, buffer)
            cursor.execute(_MERGE_STAGE)
            if cursor.rowcount == len(rows):
                return []
            cursor.execute(_DIFFERING_STAGE)
            differing = cursor.fetchall()
    except psycopg2.Error as error:
        raise sa_exc.DBAPIError.instance(
            _COPY_STAGE, None, error, psycopg2.Error, connection_invalidated=False
        ) from error
    if not differing:
        return []
    index = {(row["request_id"], row["item"]): i for i, row in enumerate(rows)}
    return sorted(index[(request_id, item)] for request_id, item in differing)
