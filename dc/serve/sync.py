"""One promoted model's next state: load its files when the registry row asks for it, then
decide what is served under the running embedder.

A head trained on another embedder than the running one (fingerprints differ) is refused, and
a version whose files fail to load leaves the version served before it in place, tried again
with a doubling back-off (a missing S3 backup is not fetched every couple of seconds).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from dc.predict import Head
from dc.serve.state import ModelState, first_line

log = logging.getLogger(__name__)

# A version whose files fail to load is tried again after this many seconds, doubling per
# failure up to the maximum.
RETRY_MIN_S = 2.0
RETRY_MAX_S = 60.0


class _Attempt(NamedTuple):
    """What is loaded for a model after this refresh, and the promoted version's load error."""

    head: Head | None
    loaded_key: tuple | None
    loaded_at: datetime | None
    error: str | None = None
    failures: int = 0
    retry_at: float = 0.0


def sync_model(
    region: str,
    row: dict[str, Any],
    old: ModelState | None,
    running: str | None,
    load: Callable[[dict[str, Any]], Head],
) -> ModelState:
    """The new state of one promoted model, loading its files when needed.

    Args:
        region: the store's region.
        row: the promoted registry row (`dc.serve.state.row_facts`).
        old: the model's state before this refresh, or None.
        running: the running embedder's fingerprint, or None while it is not known.
        load: loads a row's head (`dc.serve.version_files.load_version`); any error it raises
            is logged and kept in the state, never raised.
    """
    name, version = row["name"], row["version"]
    key = (version, row["artifact_uri"], row["reload_requested_at"])
    # The registry row names the embedder too: a version refused on it is never fetched.
    refused_early = running is not None and row["embedder_fingerprint"] != running
    attempt = _attempt_load(region, row, key, old, load, skip=refused_early)

    promoted_head = attempt.head if attempt.loaded_key == key else None
    trained_on = (
        promoted_head.embedder_fingerprint if promoted_head else row["embedder_fingerprint"]
    )
    status, reason, head = _decide(
        version, attempt, promoted_head, trained_on, running, refused_early
    )
    state = ModelState(
        name=name,
        region=region,
        version=version,
        status=status,
        reason=reason,
        head=head,
        key=key,
        loaded_key=attempt.loaded_key if head is not None else None,
        loaded_at=attempt.loaded_at if head is not None else None,
        row=row,
        error=attempt.error,
        failures=attempt.failures,
        retry_at=attempt.retry_at,
    )
    _log_change(state, old, trained_on, running)
    return state


def _attempt_load(
    region: str,
    row: dict[str, Any],
    key: tuple,
    old: ModelState | None,
    load: Callable[[dict[str, Any]], Head],
    *,
    skip: bool,
) -> _Attempt:
    """Load the promoted version unless it is loaded, refused (`skip`) or backing off."""
    if old is not None and old.head is not None:
        kept = _Attempt(old.head, old.loaded_key, old.loaded_at)
    else:
        kept = _Attempt(None, None, None)
    if kept.loaded_key == key or skip:
        return kept
    if old is not None and old.key == key and time.monotonic() < old.retry_at:
        return kept._replace(error=old.error, failures=old.failures, retry_at=old.retry_at)
    name, version = row["name"], row["version"]
    try:
        head = load(row)
    except Exception as exc:  # files, S3, a damaged archive: keep what we have
        # The reason is shown to callers (/models, a 503): no path or S3 detail in it; those
        # are in the log line below.
        error = f"version {version} could not be loaded (see the API log)"
        failures = (old.failures if old is not None and old.key == key else 0) + 1
        retry_at = time.monotonic() + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (failures - 1))
        repeated = old is not None and old.error == error and failures > 1
        log.log(
            logging.DEBUG if repeated else logging.WARNING,
            "%s/%s: version %s could not be loaded: %s (attempt %d)",
            region,
            name,
            version,
            first_line(exc),
            failures,
        )
        return kept._replace(error=error, failures=failures, retry_at=retry_at)
    log.info(
        "loaded %s/%s %s (%s, %d classes) from %s",
        region,
        name,
        version,
        head.model_type,
        head.classes,
        head.version_dir,
    )
    return _Attempt(head, key, datetime.now(UTC))


def _decide(
    version: str,
    attempt: _Attempt,
    promoted_head: Head | None,
    trained_on: str,
    running: str | None,
    refused_early: bool,
) -> tuple[str, str | None, Head | None]:
    """(status, reason, head kept in the state) of a model after its load attempt."""
    head = attempt.head
    if running is not None and (refused_early or trained_on != running):
        # A refusal is a decision about the promoted version: nothing older is served.
        reason = (
            f"version {version} was trained on embedder {trained_on}, but the running "
            f"embedder is {running}"
        )
        return "refused", reason, promoted_head
    if attempt.error is not None:
        # Keep serving the version loaded before, if any, until the promoted one loads.
        if head is not None and running is not None and head.embedder_fingerprint == running:
            reason = f"{attempt.error}; still serving version {head.version} until it loads"
            return "serving", reason, head
        return "failed", attempt.error, head
    if running is None:
        reason = "the running embedder's fingerprint is not known yet (embedder unreachable)"
        return "pending", reason, head
    return "serving", None, head


def _log_change(
    state: ModelState, old: ModelState | None, trained_on: str, running: str | None
) -> None:
    """Say it once when a model starts being refused or served (or serves another head)."""
    if state.status == "refused" and (
        old is None or (old.status, old.version) != (state.status, state.version)
    ):
        log.warning(
            "refusing %s/%s version %s: trained on embedder %s, the running embedder is %s",
            state.region,
            state.name,
            state.version,
            trained_on,
            running,
        )
    elif state.status == "serving" and (
        old is None or old.status != "serving" or old.head is not state.head
    ):
        log.info("serving %s/%s version %s", state.region, state.name, state.head.version)
