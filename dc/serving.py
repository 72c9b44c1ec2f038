"""The model store each API worker holds: one region's promoted heads, in step with the registry.

Every gunicorn worker builds its own `ModelStore` (after fork) and calls `start()`: one refresh
at once, then one every `settings.model_refresh_s` on a daemon thread. A refresh reads the
promoted rows of `settings.serving_region` (one small SELECT) and compares each with what the
worker holds: a new promoted version, a changed `reload_requested_at` or a changed artifact URI
means loading the version's files again; a model without a promoted version is dropped. Admin
calls (promote, rollback, reload) write the registry and refresh the worker they landed on; the
other workers pick the change up at their next refresh, so no broadcast is needed and a change
reaches every worker within `model_refresh_s`.

Loading happens only in `refresh`, never on the request path. `get` reads one immutable
snapshot (a dict of heads) that `refresh` replaces as a whole, so it takes no lock.

A head trained on another embedder than the running one (fingerprints differ) is refused: it is
not served, `get` raises `EmbedderMismatch`, and a warning names the model, the version and both
fingerprints. Database and file errors never escape `refresh`: they are logged and the worker
keeps serving what it has (a promoted version whose files fail to load leaves the version
served before it in place until they load).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from sqlalchemy.orm import Session, sessionmaker

from dc.config import Settings
from dc.errors import (
    BackupError,
    DatabaseUnavailable,
    DCError,
    EmbedderMismatch,
    NotFound,
    NotReady,
)
from dc.model_config import is_valid_name
from dc.predict import Head, load_head
from persistence import registry

log = logging.getLogger(__name__)

STATUSES = ("serving", "refused", "failed", "pending")
# A version whose files fail to load is tried again after this many seconds, doubling per
# failure up to the maximum (a missing S3 backup is not fetched every couple of seconds).
RETRY_MIN_S = 2.0
RETRY_MAX_S = 60.0


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
class _Snapshot:
    synced: bool  # a refresh has read the registry at least once
    states: dict[str, ModelState]
    served: dict[str, Head]


class ModelStore:
    """The heads one API worker serves, kept in step with the model registry.

    Args:
        settings: `serving_region`, `model_refresh_s`, `artifacts_dir`, the S3 settings (to
            restore backed-up versions) and `promotion_tolerance`.
        sessions: `persistence.db.session_factory(engine)` on the registry's database.
        embedder_fingerprint: returns the running embedder's fingerprint; None, or raising
            (e.g. `EmbedderUnavailable`), when it cannot be known yet. Called once per refresh.
    """

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        embedder_fingerprint: Callable[[], str | None],
    ) -> None:
        self.settings = settings
        self.region = settings.serving_region
        self._sessions = sessions
        self._embedder_fingerprint = embedder_fingerprint
        self._snapshot = _Snapshot(synced=False, states={}, served={})
        self._refresh_lock = threading.Lock()  # one refresh at a time (thread and admin calls)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._registry_error: str | None = None
        self._last_fingerprint: str | None = None
        # The last promoted rows read, on local disk: a worker that starts (or is recycled)
        # while the database is away serves from it instead of answering 503 to everything.
        self._registry_file = Path(settings.spool_dir) / f"registry-{self.region}.json"
        self._saved_rows: str | None = None

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> ModelStore:
        """Refresh once now (errors are logged), then every `model_refresh_s` on a daemon thread.

        Returns:
            The store itself.
        """
        self.refresh()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="model-store-refresh", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.settings.model_refresh_s):
            self.refresh()

    def close(self) -> None:
        """Stop the refresh thread (waits for a refresh in progress to end). Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=max(5.0, 2 * self.settings.model_refresh_s))

    # --- the request path -----------------------------------------------------------------

    def get(self, name: str) -> Head:
        """The head serving `name`.

        Raises:
            NotFound: no promoted model of that name in the serving region (the message lists
                the served ones).
            EmbedderMismatch: the promoted version was trained on another embedder: refused.
            NotReady: known but not loadable yet (its files fail to load, the embedder's
                fingerprint is unknown), or the registry has not been read yet.
        """
        snapshot = self._snapshot  # one read: a consistent view without a lock
        head = snapshot.served.get(name)
        if head is not None:
            return head
        self._check_name(name)
        retry = math.ceil(self.settings.model_refresh_s)
        if not snapshot.synced:
            raise NotReady(
                "the model registry has not been read yet; models are loading",
                retry_after_s=retry,
            )
        state = snapshot.states.get(name)
        if state is None:
            served = ", ".join(sorted(snapshot.served)) or "none"
            raise NotFound(
                f"no model {name!r} is served in region {self.region!r}; served models: {served}"
            )
        if state.status == "refused":
            raise EmbedderMismatch(f"model {name!r} is not served: {state.reason}")
        raise NotReady(f"model {name!r} is not ready: {state.reason}", retry_after_s=retry)

    def names(self) -> list[str]:
        """The models currently served, sorted."""
        return sorted(self._snapshot.served)

    def serves(self, name: str) -> bool:
        """Whether `name` is served now (a dict lookup: cheap enough for every request)."""
        return name in self._snapshot.served

    @property
    def ready(self) -> bool:
        """Whether the registry has been read and every promoted model is decided.

        Decided: serving, refused or failed; a model waiting for the embedder's fingerprint
        (pending) keeps the store not ready.
        """
        snapshot = self._snapshot
        return snapshot.synced and all(s.status != "pending" for s in snapshot.states.values())

    # --- refresh --------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Sync once with the registry's promoted versions of the serving region.

        Loads promoted versions not loaded yet, reloads those whose promoted version, artifact
        URI or `reload_requested_at` changed, drops models without a promoted version and
        re-checks every head against the running embedder's fingerprint. Never raises: a
        database, file or embedder error is logged and what is served stays served.

        Returns:
            True if a model's status, version or head changed, or a model appeared or left.
        """
        with self._refresh_lock:
            try:
                return self._refresh()
            except Exception:  # the refresh thread must survive anything
                log.exception("model store refresh failed; serving what is loaded")
                return False

    def _refresh(self) -> bool:
        try:
            with self._sessions() as session:
                rows = [_row_facts(row) for row in registry.promoted_versions(session, self.region)]
        except Exception as exc:  # SQLAlchemy, driver or network errors: keep serving
            message = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if self._registry_error is None:
                log.warning(
                    "model registry unreachable (%s); serving the %d models loaded, retrying "
                    "every %.1f s",
                    message,
                    len(self._snapshot.served),
                    self.settings.model_refresh_s,
                )
            else:
                log.debug("model registry still unreachable: %s", message)
            self._registry_error = message
            if self._snapshot.synced:
                return False
            saved = self._load_registry_file()
            if saved is None:
                return False
            log.warning(
                "starting from the registry rows saved in %s (%d models) until the database "
                "answers",
                self._registry_file,
                len(saved),
            )
            rows = saved
        else:
            if self._registry_error is not None:
                log.info("model registry reachable again")
                self._registry_error = None
            self._save_registry_file(rows)

        running = self._running_fingerprint()
        old = self._snapshot
        states: dict[str, ModelState] = {}
        for row in rows:
            states[row["name"]] = self._sync_model(row, old.states.get(row["name"]), running)
        for name in sorted(old.states.keys() - states.keys()):
            log.info("%s/%s has no promoted version any more: no longer served", self.region, name)
        served = {
            name: state.head
            for name, state in states.items()
            if state.status == "serving" and state.head is not None
        }
        new = _Snapshot(synced=True, states=states, served=served)
        self._snapshot = new  # one assignment: readers see the old or the new mapping whole
        return _signature(old) != _signature(new)

    def _save_registry_file(self, rows: list[dict[str, Any]]) -> None:
        text = json.dumps(rows, default=_iso, sort_keys=True)
        if text == self._saved_rows:
            return
        try:
            self._registry_file.parent.mkdir(parents=True, exist_ok=True)
            temporary = self._registry_file.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self._registry_file)  # readers never see half a file
            self._saved_rows = text
        except OSError as exc:
            log.warning("could not save the registry rows to %s: %s", self._registry_file, exc)

    def _load_registry_file(self) -> list[dict[str, Any]] | None:
        try:
            rows = json.loads(self._registry_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for row in rows:
            for key in ("promoted_at", "reload_requested_at"):
                if row.get(key):
                    row[key] = datetime.fromisoformat(row[key])
        return rows

    def _running_fingerprint(self) -> str | None:
        """The embedder's fingerprint now, else the last one seen (None before any).

        An embedder that is briefly unreachable does not unload the heads: a remote embedder's
        phrase cache keeps answering, and the fingerprint it will come back with is checked at
        the next refresh.
        """
        try:
            fingerprint = self._embedder_fingerprint()
        except Exception as exc:  # EmbedderUnavailable and anything else: not known yet
            log.debug("embedder fingerprint not available: %s", exc)
            fingerprint = None
        if fingerprint is not None and fingerprint != self._last_fingerprint:
            if self._last_fingerprint is not None:
                log.warning(
                    "the running embedder changed from %s to %s; heads are checked again",
                    self._last_fingerprint,
                    fingerprint,
                )
            self._last_fingerprint = fingerprint
        return fingerprint or self._last_fingerprint

    def _sync_model(
        self, row: dict[str, Any], old: ModelState | None, running: str | None
    ) -> ModelState:
        """The new state of one promoted model, loading its files when needed."""
        name, version = row["name"], row["version"]
        key = (version, row["artifact_uri"], row["reload_requested_at"])
        head, loaded_key, loaded_at = None, None, None
        if old is not None and old.head is not None:
            head, loaded_key, loaded_at = old.head, old.loaded_key, old.loaded_at
        error, failures, retry_at = None, 0, 0.0

        # The registry row names the embedder too: a version refused on it is never fetched.
        refused_early = running is not None and row["embedder_fingerprint"] != running
        if loaded_key != key and not refused_early:
            if old is not None and old.key == key and time.monotonic() < old.retry_at:
                error, failures, retry_at = old.error, old.failures, old.retry_at
            else:
                try:
                    head, loaded_key = self._load(row), key
                    loaded_at = datetime.now(UTC)
                    log.info(
                        "loaded %s/%s %s (%s, %d classes) from %s",
                        self.region,
                        name,
                        version,
                        head.model_type,
                        head.classes,
                        head.version_dir,
                    )
                except Exception as exc:  # files, S3, a damaged archive: keep what we have
                    # The reason is shown to callers (/models, a 503): no path or S3 detail in
                    # it; those are in the log line below.
                    error = f"version {version} could not be loaded (see the API log)"
                    detail = _first_line(exc)
                    failures = (old.failures if old is not None and old.key == key else 0) + 1
                    retry_at = time.monotonic() + min(
                        RETRY_MAX_S, RETRY_MIN_S * 2 ** (failures - 1)
                    )
                    repeated = old is not None and old.error == error and failures > 1
                    log.log(
                        logging.DEBUG if repeated else logging.WARNING,
                        "%s/%s: version %s could not be loaded: %s (attempt %d)",
                        self.region,
                        name,
                        version,
                        detail,
                        failures,
                    )

        promoted_head = head if loaded_key == key else None
        trained_on = (
            promoted_head.embedder_fingerprint if promoted_head else row["embedder_fingerprint"]
        )
        if running is not None and (refused_early or trained_on != running):
            # A refusal is a decision about the promoted version: nothing older is served.
            status, head = "refused", promoted_head
            reason = (
                f"version {version} was trained on embedder {trained_on}, but the running "
                f"embedder is {running}"
            )
        elif error is not None:
            # Keep serving the version loaded before, if any, until the promoted one loads.
            if head is not None and running is not None and head.embedder_fingerprint == running:
                status = "serving"
                reason = f"{error}; still serving version {head.version} until it loads"
            else:
                status, reason = "failed", error
        elif running is None:
            status = "pending"
            reason = "the running embedder's fingerprint is not known yet (embedder unreachable)"
        else:
            status, reason = "serving", None

        if head is None:
            loaded_key, loaded_at = None, None
        state = ModelState(
            name=name,
            region=self.region,
            version=version,
            status=status,
            reason=reason,
            head=head,
            key=key,
            loaded_key=loaded_key,
            loaded_at=loaded_at,
            row=row,
            error=error,
            failures=failures,
            retry_at=retry_at,
        )
        if status == "refused" and (old is None or (old.status, old.version) != (status, version)):
            log.warning(
                "refusing %s/%s version %s: trained on embedder %s, the running embedder is %s",
                self.region,
                name,
                version,
                trained_on,
                running,
            )
        elif status == "serving" and (
            old is None or old.status != "serving" or old.head is not head
        ):
            log.info("serving %s/%s version %s", self.region, name, head.version)
        return state

    def _load(self, row: dict[str, Any]) -> Head:
        folder = self._version_folder(row)
        head = load_head(folder)
        if (head.name, head.region, head.version) != (row["name"], row["region"], row["version"]):
            raise ValueError(
                f"{folder} holds {head.region}/{head.name} {head.version}, not the registry's "
                f"{row['region']}/{row['name']} {row['version']}"
            )
        return head

    def _version_folder(self, row: dict[str, Any]) -> Path:
        """The local version folder of a registry row, restored from S3 when needed.

        A file:// URI is used when it exists on this machine; otherwise (an s3:// backup, or a
        version trained on another machine) the folder under `artifacts_dir`, which is restored
        from the backup when missing and a bucket is configured.
        """
        uri = row["artifact_uri"]
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            path = Path(url2pathname(unquote(parsed.path)))
            if path.is_dir():
                return path
        elif parsed.scheme != "s3":
            raise ValueError(f"unsupported artifact URI {uri!r} (file:// or s3:// expected)")
        local = local_version_dir(self.settings, row["region"], row["name"], row["version"])
        if local.is_dir():
            return local
        if not self.settings.s3_bucket:
            raise FileNotFoundError(
                f"{local} does not exist and no S3 bucket is configured to restore {uri} from"
            )
        from dc.backup import restore_version  # boto3 only when a restore is needed

        try:
            return restore_version(
                self.settings,
                region=row["region"],
                model=row["name"],
                version=row["version"],
                dest=Path(self.settings.artifacts_dir),
            )
        except BackupError:
            if local.is_dir():  # another worker restored it meanwhile
                return local
            raise

    # --- describe and admin ---------------------------------------------------------------

    def describe(self, name: str | None = None) -> list[dict[str, Any]] | dict[str, Any]:
        """JSON-ready state of the models (all: a list sorted by name) or of one model.

        Each entry: `name`, `region`, `status`, `reason`, `version` (promoted), `served_version`,
        `model_type`, `embedder_fingerprint` (trained on), `classes`, `metrics`, `loaded_at`,
        `serving_rule`. One model's entry adds `labels`, `promoted_at`, `reload_requested_at`
        and `versions` from the registry (`version`, `status`, `created_at`, `promoted_at`,
        `metrics`); a model with versions but none promoted has status "unpromoted".

        Raises:
            NotFound: (one model) no version of it is recorded in the serving region.
            NotReady: (one model) the registry cannot be read.
        """
        snapshot = self._snapshot
        if name is None:
            return [_describe_state(snapshot.states[n]) for n in sorted(snapshot.states)]
        self._check_name(name)
        try:
            with self._sessions() as session:
                versions = registry.list_versions(session, name, self.region)
        except Exception as exc:  # SQLAlchemy, driver or network errors: a generic 503
            raise DatabaseUnavailable(
                "the model registry cannot be read right now; try again later",
                retry_after_s=self.settings.retry_after_s,
                detail=_first_line(exc),
            ) from exc
        state = snapshot.states.get(name)
        if state is None and not versions:
            served = ", ".join(sorted(snapshot.served)) or "none"
            raise NotFound(f"no model {name!r} in region {self.region!r}; served models: {served}")
        if state is not None:
            entry = _describe_state(state)
            head = state.head
            entry["labels"] = list(head.labels) if head is not None else None
            entry["promoted_at"] = _iso(state.row["promoted_at"])
            entry["reload_requested_at"] = _iso(state.row["reload_requested_at"])
        else:
            entry = {
                "name": name,
                "region": self.region,
                "status": "unpromoted",
                "reason": "no version is promoted",
                "version": None,
                "served_version": None,
            }
        entry["versions"] = [
            {
                "version": v.version,
                "status": v.status,
                "created_at": _iso(v.created_at),
                "promoted_at": _iso(v.promoted_at),
                "metrics": v.metrics,
            }
            for v in versions
        ]
        return entry

    def reload(self, name: str) -> dict[str, Any]:
        """Have every worker reload the promoted version's files; this one does it now.

        Returns:
            `describe(name)` after the refresh.

        Raises:
            NotFound: no promoted version of `name` in the serving region.
            NotReady: the registry cannot be written.
        """
        self._admin(registry.request_reload, name, self.region)
        self.refresh()
        return self.describe(name)

    def rollback(self, name: str) -> dict[str, Any]:
        """Promote the previously promoted version again (no promotion rule), everywhere.

        Returns:
            `describe(name)` after the refresh.

        Raises:
            NotFound: `name` has no previously promoted version in the serving region.
            NotReady: the registry cannot be written.
        """
        self._admin(registry.rollback, name, self.region)
        self.refresh()
        return self.describe(name)

    def promote(self, name: str, version: str, *, force: bool = False) -> dict[str, Any]:
        """Promote `version` of `name` under the promotion rule (`promotion_tolerance`).

        Returns:
            `describe(name)` after the refresh.

        Raises:
            NotFound: no such version in the serving region.
            PromotionRefused: the rule refuses and `force` is not set.
            NotReady: the registry cannot be written.
        """
        if not is_valid_name(version, max_length=40):
            raise NotFound(f"no version {version!r} of model {name!r} in region {self.region!r}")
        self._admin(
            registry.promote,
            name,
            self.region,
            version,
            tolerance=self.settings.promotion_tolerance,
            force=force,
        )
        self.refresh()
        return self.describe(name)

    def _admin(self, action: Callable[..., Any], name: str, *args: Any, **kwargs: Any) -> Any:
        self._check_name(name)
        try:
            with self._sessions() as session:
                return action(session, name, *args, **kwargs)
        except DCError:
            raise
        except Exception as exc:  # the database: a generic 503 for the caller, not a 500
            raise DatabaseUnavailable(
                "the model registry cannot be written right now; try again later",
                retry_after_s=self.settings.retry_after_s,
                detail=_first_line(exc),
            ) from exc

    def _check_name(self, name: str) -> None:
        """A name no config could give (a NUL, a slash, 1,000 characters) is an unknown model,
        answered without asking the database, whose driver would refuse some of them."""
        if not is_valid_name(name, max_length=100):
            served = ", ".join(self.names()) or "none"
            raise NotFound(
                f"no model {name!r} is served in region {self.region!r}; served models: {served}"
            )


def local_version_dir(settings: Settings, region: str, name: str, version: str) -> Path:
    """The version folder under `artifacts_dir`, as `dc.artifacts.version_dir` lays it out.

    Not imported from `dc.artifacts`, which imports scikit-learn (about 110 MB and 1.5 s per
    API worker); a test keeps the two equal.
    """
    return Path(settings.artifacts_dir) / region / name / version


def _row_facts(row: Any) -> dict[str, Any]:
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


def _describe_state(state: ModelState) -> dict[str, Any]:
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
        "loaded_at": _iso(state.loaded_at) if shown else None,
        "serving_rule": shown.rule.model_dump(mode="json") if shown else None,
    }


def _architecture(config: dict[str, Any]) -> str | None:
    head = config.get("head") or {}
    layers, units = head.get("hidden_layers"), head.get("units")
    if layers is None:
        return None
    return "softmax" if layers == 0 else f"mlp-{layers}x{units}"


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _signature(snapshot: _Snapshot) -> dict[str, tuple]:
    return {
        name: (state.status, state.version, id(state.head))
        for name, state in snapshot.states.items()
    }


def _first_line(error: BaseException) -> str:
    """`Type: message`, first line only (drivers append the SQL and its parameters below)."""
    text = f"{type(error).__name__}: {error}".strip()
    return text.splitlines()[0] if text else type(error).__name__
