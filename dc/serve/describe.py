"""The JSON-ready description of a store's models (`GET /models`, `GET /models/<model>`).

Built from the store's snapshot, so it shows what this worker serves; one model's description
adds every version the registry records.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dc.errors import DatabaseUnavailable, NotFound
from dc.serve.state import ModelState, Snapshot, first_line, iso
from persistence import registry


def describe_models(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Every promoted model's entry (see `describe_state`), sorted by name."""
    return [describe_state(snapshot.states[name]) for name in sorted(snapshot.states)]


def read_versions(
    sessions: sessionmaker[Session], name: str, region: str, *, retry_after_s: int
) -> list[Any]:
    """Every version the registry records of `name` in `region`.

    Raises:
        DatabaseUnavailable: the registry cannot be read (503).
    """
    try:
        with sessions() as session:
            return registry.list_versions(session, name, region)
    except Exception as exc:  # SQLAlchemy, driver or network errors: a generic 503
        raise DatabaseUnavailable(
            "the model registry cannot be read right now; try again later",
            retry_after_s=retry_after_s,
            detail=first_line(exc),
        ) from exc


def describe_model(
    snapshot: Snapshot, name: str, region: str, versions: list[Any]
) -> dict[str, Any]:
    """One model's entry: `describe_state`'s plus `labels`, `promoted_at`,
    `reload_requested_at` and `versions` (`version`, `status`, `created_at`, `promoted_at`,
    `metrics`); a model with versions but none promoted has status "unpromoted".

    Raises:
        NotFound: the model is not promoted and no version of it is recorded.
    """
    state = snapshot.states.get(name)
    if state is None and not versions:
        served = ", ".join(sorted(snapshot.served)) or "none"
        raise NotFound(f"no model {name!r} in region {region!r}; served models: {served}")
    if state is not None:
        entry = describe_state(state)
        head = state.head
        entry["labels"] = list(head.labels) if head is not None else None
        entry["promoted_at"] = iso(state.row["promoted_at"])
        entry["reload_requested_at"] = iso(state.row["reload_requested_at"])
    else:
        entry = {
            "name": name,
            "region": region,
            "status": "unpromoted",
            "reason": "no version is promoted",
            "version": None,
            "served_version": None,
        }
    entry["versions"] = [
        {
            "version": v.version,
            "status": v.status,
            "created_at": iso(v.created_at),
            "promoted_at": iso(v.promoted_at),
            "metrics": v.metrics,
        }
        for v in versions
    ]
    return entry


def describe_state(state: ModelState) -> dict[str, Any]:
    """`name`, `region`, `status`, `reason`, `version` (promoted), `served_version`,
    `model_type`, `embedder_fingerprint` (trained on), `classes`, `metrics`, `loaded_at`,
    `serving_rule`: from the loaded head when there is one, else from the registry row."""
    head = state.head if state.status == "serving" else None
    shown = head or state.head  # the promoted head when loaded but not served (refused)
    return {
        "name": state.name,
        "region": state.region,
        "status": state.status,
        "reason": state.reason,
        "version": state.version,
        "served_version": head.version if head is not None else None,
        "model_type": shown.model_type if shown else _architecture(state.row["config"]),
        "embedder_fingerprint": (
            shown.embedder_fingerprint if shown else state.row["embedder_fingerprint"]
        ),
        "classes": shown.classes if shown else None,
        "metrics": shown.metrics if shown else state.row["metrics"],
        "loaded_at": iso(state.loaded_at) if shown else None,
        # What the rule does when serving; choose_threshold and fallback_share were training's.
        "serving_rule": (
            shown.rule.model_dump(mode="json", include={"fallback_label", "min_probability"})
            if shown
            else None
        ),
    }


def _architecture(config: dict[str, Any]) -> str | None:
    head = config.get("head") or {}
    layers, units = head.get("hidden_layers"), head.get("units")
    if layers is None:
        return None
    return "softmax" if layers == 0 else f"mlp-{layers}x{units}"
