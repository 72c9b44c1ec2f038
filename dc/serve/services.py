"""Everything one prediction worker holds, started after fork and closed on exit together.

The embedder is remote (an HTTP client, ready at once) or local: then the encoder (TensorFlow,
~0.8 GB) is loaded on a `BackgroundLoader` thread, so `/health` answers at once and `/ready`
tells when it is warm; the model store refreshes again as soon as it is, since the heads wait
for its fingerprint.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from dc.config import Settings
from dc.errors import DCError
from dc.nlp.embeddings import Embedder, RemoteEmbedder
from dc.postprocessing import PredictionCache
from dc.serve.loader import BackgroundLoader
from dc.serve.store import ModelStore
from persistence.inference_log import InferenceLog

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Services:
    """What one worker needs to answer predictions: settings, embedder, model store, inference
    log and prediction cache (a service may subclass it to add its own, such as metrics)."""

    settings: Settings
    embedder: BackgroundLoader[Embedder]
    store: ModelStore
    inference_log: InferenceLog
    predictions: PredictionCache
    closed: bool = field(default=False)

    def start(self) -> Services:
        self.inference_log.start()
        self.embedder.start(on_ready=self.store.refresh)
        self.store.start()
        return self

    def close(self) -> None:
        """Stop polling, flush the inference log (to the database or the spool), release."""
        if self.closed:
            return
        self.closed = True
        self.store.close()
        self.inference_log.close(timeout_s=max(1.0, self.settings.api_graceful_timeout_s / 2))
        self.embedder.close()

    def embedder_fingerprint(self) -> str | None:
        """The running embedder's fingerprint, or None while it cannot be known."""
        return embedder_fingerprint(self.embedder)


def embedder_loader(
    settings: Settings, embedder: Embedder | None = None
) -> BackgroundLoader[Embedder]:
    """The worker's embedder: `embedder` if given, a `RemoteEmbedder` in remote mode (both
    ready at once), else the local encoder of `settings.embedder_handle`, loaded on `start()`.
    """
    if embedder is None and settings.embedder_mode == "remote":
        embedder = RemoteEmbedder.from_settings(settings)  # a client: no connection made yet
        if settings.client_warm_start and settings.cache_size:
            threading.Thread(
                target=embedder.warm_from_service,
                args=(settings.cache_size,),
                name="api-warm-start",
                daemon=True,
            ).start()
    return BackgroundLoader(
        lambda: _local_embedder(settings),
        source=f"the encoder from {settings.embedder_handle}",
        describe=lambda _: "encoder loaded in process",
        loading="the embedder is not ready: it is loading",
        # Why it failed (often a path) was logged when it happened; not for the caller.
        failed="the embedder is not ready: loading it failed (see the API log)",
        retry_after_s=settings.retry_after_s,
        thread_name="api-embedder-loader",
        value=embedder,
    )


def embedder_fingerprint(loader: BackgroundLoader[Embedder]) -> str | None:
    """The fingerprint of the loader's embedder, or None while it cannot be known (not loaded,
    or a remote embedder that does not answer)."""
    embedder = loader.value
    if embedder is None:
        return None
    try:
        return embedder.fingerprint
    except DCError as exc:
        log.debug("embedder fingerprint unknown: %s", exc)
        return None


def _local_embedder(settings: Settings) -> Embedder:
    from dc.nlp.embeddings import LocalEmbedder

    return LocalEmbedder.from_settings(settings)
