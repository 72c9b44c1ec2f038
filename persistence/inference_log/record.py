"""The shape of one row of `inferences`, and its two written forms: the journal line and the
storage row.

A record is written as a journal line on every request (`record_to_line`, the hot path) and read
back only by a replay (`record_from_json`); the database gets `record_to_row`'s plain values.
Every form round-trips: ``record_to_row(record_from_json(line))`` equals
``record_to_row(record)``, which is what lets a replayed line be recognised as the row already
stored rather than taken for a conflict.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import orjson

from persistence.models import Inference, to_utc

# The columns of `inferences`, in table order (the COPY path and the conflict check use them).
COLUMNS = tuple(column.name for column in Inference.__table__.columns)


@dataclass(frozen=True)
class InferenceRecord:
    """One served prediction for one text: a future row of `inferences`.

    A request of N texts gives N records with the same `request_id` and `item` 0..N-1;
    (`request_id`, `item`) is the idempotency key, made by the server. `client_request_id` is
    the caller's own id (its X-Request-ID), kept beside it for correlation only.
    """

    request_id: str
    item: int
    created_at: datetime  # aware UTC (a naive value is taken to be UTC)
    model: str
    region: str
    version: str
    model_type: str
    input_text: str
    predicted_label: str
    probability: float
    top_k: list[dict[str, Any]]  # [{"label": str, "probability": float}, ...], best first
    latency_ms: float
    cache_hit: bool
    embedder_fingerprint: str
    client_request_id: str | None = None


_RECORD_FIELDS = tuple(f.name for f in fields(InferenceRecord))
_OPTIONAL_FIELDS = ("client_request_id",)  # absent from older spool lines
TEXT_FIELDS = (
    "request_id",
    "model",
    "region",
    "version",
    "model_type",
    "input_text",
    "predicted_label",
    "embedder_fingerprint",
)


def record_to_row(record: InferenceRecord) -> dict[str, Any]:
    """The column values of `record`, coerced to the types the table stores.

    The API may hand over numpy scalars or UUID objects; neither the JSON spool nor the database
    driver accepts those, so every value is converted to its plain Python type here.
    `top_k` keeps exactly the documented keys, ``label`` and ``probability``; an empty
    `client_request_id` is stored as NULL.

    Raises:
        ValueError, TypeError, KeyError: a value that cannot be converted (a missing field, a
            probability that is not a number...). The record cannot be stored.
    """
    row: dict[str, Any] = {}
    for name in TEXT_FIELDS:
        value = getattr(record, name)
        if value is None:
            raise ValueError(f"{name} is missing")
        row[name] = value if isinstance(value, str) else str(value)
    if not isinstance(record.created_at, datetime):
        raise TypeError(f"created_at must be a datetime, not {type(record.created_at).__name__}")
    row["item"] = int(record.item)
    row["created_at"] = to_utc(record.created_at)
    row["probability"] = float(record.probability)
    row["latency_ms"] = float(record.latency_ms)
    row["cache_hit"] = bool(record.cache_hit)
    row["top_k"] = [
        {"label": str(entry["label"]), "probability": float(entry["probability"])}
        for entry in record.top_k
    ]
    client = record.client_request_id
    row["client_request_id"] = str(client) if client else None
    return row


def _ascii_json(row: dict[str, Any]) -> str:
    row = {**row, "created_at": row["created_at"].isoformat()}
    return json.dumps(row, ensure_ascii=True, separators=(",", ":"))


def record_to_json(record: InferenceRecord) -> str:
    """One spool line (without the newline): the record as JSON, `created_at` in ISO 8601.

    ASCII only (``ensure_ascii``), so any text, even one with an unpaired surrogate, has a
    byte form, and a line break inside a text can never split a line.
    """
    return _ascii_json(record_to_row(record))


def record_to_line(record: InferenceRecord) -> bytes:
    """One journal line, newline included: what `enqueue` writes for each record.

    UTF-8 JSON by orjson, straight from the dataclass when its values are plain (the API's
    are): about 0.7 us, against 3 us through `record_to_row`, on every request. Anything else
    (numpy scalars, which orjson refuses, or a non-finite float, which it would write as null)
    goes through `record_to_row` first, and its ASCII form when orjson still cannot write it
    exactly (an unpaired surrogate). `record_from_json` reads every form, and for any record
    ``record_to_row(record_from_json(line))`` equals ``record_to_row(record)``: a replayed
    line is recognised as the row already stored.

    Raises:
        ValueError, TypeError, KeyError: as `record_to_row`.
    """
    if isinstance(record.created_at, datetime):
        try:
            line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
        except orjson.JSONEncodeError:
            pass
        else:
            # The one null it may hold is an absent client id; another is a lost float (or a
            # text that contains "null": rare, and the slow path is as good).
            if line.count(b"null") == (record.client_request_id is None):
                return line
    row = record_to_row(record)
    if row["client_request_id"] is None:
        del row["client_request_id"]
    try:
        line = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        line = b"null"
    if b"null" in line:
        line = (_ascii_json(row) + "\n").encode("ascii")
    return line


def record_from_json(line: str | bytes) -> InferenceRecord:
    """Parse one spool line back into a record (unknown keys are ignored).

    Raises:
        ValueError: not JSON, not an object, a field missing or of the wrong type.
    """
    try:
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError("a spool line must be a JSON object")
        values = {
            name: data.get(name) if name in _OPTIONAL_FIELDS else data[name]
            for name in _RECORD_FIELDS
        }
        values["created_at"] = to_utc(datetime.fromisoformat(values["created_at"]))
        record = InferenceRecord(**values)
        record_to_row(record)  # fail here, on a bad line, rather than later in a batch
    except KeyError as missing:
        raise ValueError(f"field {missing} missing") from None
    except (TypeError, AttributeError) as error:
        raise ValueError(str(error)) from None
    return record


def same_values(a: dict[str, Any], b: Any) -> bool:
    """Whether two rows (a `record_to_row` dict, and such a dict or a stored row's mapping)
    hold the same values in every column: a replay, not a conflict."""
    for name in COLUMNS:
        x, y = a[name], b[name]
        if x != y and not (x != x and y != y):  # NaN equals NaN here: the same float
            return False
    return True
