"""What a model store knows, as immutable data: one `ModelState` per promoted model, gathered in
a `Snapshot` that a refresh replaces as a whole (so the request path reads it without a lock).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from dc.predict import Head

STATUSES = ("serving", "refused", "failed", "pending")


@dataclass(frozen=True)
class ModelState:
    """What one worker knows about one promoted model (an immutable snapshot entry).

    Attributes:
        name, region: the model.
        version: the promoted version (the registry's).
        status: "serving", "refused" (another embedder), "failed" (files not loadable) or
            "pending" (the running embedder's fingerprint is not known yet).
        reason: why it is not serving the promoted version, or None.
        head: the head `get` returns when serving (may be the previously promoted version's
            while the promoted one fails to load), else the promoted one if loaded, or None.
        key: (version, artifact URI, reload_requested_at) of the promoted row.
        loaded_key: the key `head` was loaded for.
        loaded_at: when `head` was loaded.
        row: the registry's facts: trained-on fingerprint, metrics, config, timestamps.
        error: the promoted version's last load error, or None.
        failures, retry_at: consecutive load failures and when (monotonic) to try again.
    """

    name: str
    region: str
    version: str
    status: str
    reason: str | None
    head: Head | None
    key: tuple
    loaded_key: tuple | None
    loaded_at: datetime | None
    row: dict[str, Any] = field(repr=False)
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0


@dataclass(frozen=True)
class Snapshot:
    """Everything `get` reads, replaced as a whole by each refresh.

    Attributes:
        synced: a refresh has read the registry (or its disk copy) at least once.
        states: every promoted model's state, by name.
        served: the heads served now, by name (the request path's one dict lookup).
    """

    synced: bool
    states: dict[str, ModelState]
    served: dict[str, Head]


EMPTY = Snapshot(synced=False, states={}, served={})


def row_facts(row: Any) -> dict[str, Any]:
    """The registry row's fields as plain data (the ORM object is not kept across threads)."""
    return {
        "name": row.name,
        "region": row.region,
        "version": row.version,
        "artifact_uri": row.artifact_uri,
        "embedder_fingerprint": row.embedder_fingerprint,
        "metrics": row.metrics or {},
        "config": row.config or {},
        "promoted_at": row.promoted_at,
        "reload_requested_at": row.reload_requested_at,
    }


def signature(snapshot: Snapshot) -> dict[str, tuple]:
    """What a refresh compares to tell whether anything a caller can see changed."""
    return {
        name: (state.status, state.version, id(state.head))
        for name, state in snapshot.states.items()
    }


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def first_line(error: BaseException) -> str:
    """`Type: message`, first line only (drivers append the SQL and its parameters below)."""
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0] if text else type(error).__name__
