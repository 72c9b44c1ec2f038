"""The model store each API worker holds: one region's promoted heads, in step with the registry.

Every gunicorn worker builds its own `ModelStore` (after fork) and calls `start()`: one refresh
at once, then one every `settings.model_refresh_s` on a daemon thread. A refresh reads the
promoted rows of `settings.serving_region` (one small SELECT) and compares each with what the
worker holds: a new promoted version, a changed `reload_requested_at` or a changed artifact URI
means loading the version's files again (`dc.serve.sync`); a model without a promoted version
is dropped. Admin calls (promote, rollback, reload: `dc.serve.admin`) write the registry and
refresh the worker they landed on; the other workers pick the change up at their next refresh.

Loading happens only in `refresh`, never on the request path. `get` reads one immutable
snapshot (a dict of heads) that `refresh` replaces as a whole, so it takes no lock.

A head trained on another embedder than the running one (fingerprints differ) is refused: it is
not served, `get` raises `EmbedderMismatch`, and a warning names the model, the version and both
fingerprints. Database and file errors never escape `refresh`: they are logged and the worker
keeps serving what it has (a promoted version whose files fail to load leaves the version
served before it in place until they load).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dc.config import Settings
from dc.errors import EmbedderMismatch, NotFound, NotReady
from dc.feedback import manifest_labels
from dc.model_config import is_valid_name
from dc.predict import Head
from dc.serve import admin
from dc.serve.describe import describe_model, describe_models, read_versions
from dc.serve.registry_rows import RegistryRows
from dc.serve.state import EMPTY, Snapshot, signature
from dc.serve.sync import sync_model
from dc.serve.version_files import load_version

log = logging.getLogger(__name__)


class ModelStore:
    """The heads one API worker serves, kept in step with the model registry.

    Args:
        settings: `serving_region`, `model_refresh_s`, `artifacts_dir`, `spool_dir` (the disk
            copy of the registry rows), the S3 settings (to restore backed-up versions) and
            `promotion_tolerance`.
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
        self.sessions = sessions  # the registry's; the admin actions write through it too
        self._embedder_fingerprint = embedder_fingerprint
        self._snapshot = EMPTY
        self._refresh_lock = threading.Lock()  # one refresh at a time (thread and admin calls)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_fingerprint: str | None = None
        self._rows = RegistryRows(settings, sessions)

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
        self.check_name(name)
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

    def classes_of(self, name: str, region: str, version: str) -> set[str] | None:
        """The classes of one recorded version, for checking a feedback label: the served
        head's when it is that version, else its manifest's when its files are here, else the
        model's served classes; None when neither is known (the label is then not checked)."""
        head = self._snapshot.served.get(name)
        if head is not None and head.version == version and region == self.region:
            return set(head.labels)
        labels = manifest_labels(self.settings.artifacts_dir, region, name, version)
        if labels is None and head is not None and region == self.region:
            return set(head.labels)
        return labels

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

    def check_name(self, name: str) -> None:
        """A name no config could give (a NUL, a slash, 1,000 characters) is an unknown model,
        answered without asking the database, whose driver would refuse some of them."""
        if not is_valid_name(name, max_length=100):
            served = ", ".join(self.names()) or "none"
            raise NotFound(
                f"no model {name!r} is served in region {self.region!r}; served models: {served}"
            )

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
        rows = self._rows.read(synced=self._snapshot.synced, served=len(self._snapshot.served))
        if rows is None:
            return False
        running = self._running_fingerprint()
        old = self._snapshot
        states = {
            row["name"]: sync_model(
                self.region, row, old.states.get(row["name"]), running, self._load
            )
            for row in rows
        }
        for name in sorted(old.states.keys() - states.keys()):
            log.info("%s/%s has no promoted version any more: no longer served", self.region, name)
        served = {
            name: state.head
            for name, state in states.items()
            if state.status == "serving" and state.head is not None
        }
        new = Snapshot(synced=True, states=states, served=served)
        self._snapshot = new  # one assignment: readers see the old or the new mapping whole
        return signature(old) != signature(new)

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

    def _load(self, row: dict[str, Any]) -> Head:
        return load_version(self.settings, row)

    # --- description and admin (`dc.serve.describe`, `dc.serve.admin`) ---------------------

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
            return describe_models(snapshot)
        self.check_name(name)
        versions = read_versions(
            self.sessions, name, self.region, retry_after_s=self.settings.retry_after_s
        )
        return describe_model(snapshot, name, self.region, versions)

    def reload(self, name: str) -> dict[str, Any]:
        """Have every worker reload the promoted version's files (`dc.serve.admin.reload`)."""
        return admin.reload(self, name)

    def rollback(self, name: str) -> dict[str, Any]:
        """Serve the previously promoted version again (`dc.serve.admin.rollback`)."""
        return admin.rollback(self, name)

    def promote(self, name: str, version: str, *, force: bool = False) -> dict[str, Any]:
        """Promote `version` under the promotion rule (`dc.serve.admin.promote`)."""
        return admin.promote(self, name, version, force=force)
