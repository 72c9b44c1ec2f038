"""One prediction end to end, without HTTP: embed (cache first) -> score the head -> postprocess
-> enqueue the inference-log rows. The services a worker holds live in `Services`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from api.metrics import ApiMetrics
from api.request_handlers import PredictRequest
from dc.config import Settings
from dc.errors import DCError, EmbedderMismatch, NotReady
from dc.nlp.embeddings import Embedder, RemoteEmbedder
from dc.postprocessing import Prediction, PredictionCache, postprocess
from dc.predict import Head
from dc.serving import ModelStore
from persistence.inference_log import InferenceLog, InferenceRecord

log = logging.getLogger(__name__)


class EmbedderHolder:
    """The worker's embedder: remote (an HTTP client, ready at once) or local (loaded off-thread).

    In local mode the encoder (TensorFlow, ~0.8 GB) is loaded in a background thread after the
    worker has forked, so `/health` answers at once and `/ready` tells when it is warm.
    """

    def __init__(self, settings: Settings, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.embedder: Embedder | None = embedder
        self.error: str | None = None

    def start(self, on_ready=None) -> None:
        """Create or load the embedder; `on_ready()` is called once it can embed."""
        if self.embedder is not None:
            return
        if self.settings.embedder_mode == "remote":
            self.embedder = RemoteEmbedder.from_settings(self.settings)
            return
        threading.Thread(
            target=self._load, args=(on_ready,), name="api-embedder-loader", daemon=True
        ).start()

    def _load(self, on_ready) -> None:
        from dc.nlp.embeddings import LocalEmbedder

        started = time.perf_counter()
        try:
            self.embedder = LocalEmbedder.from_settings(self.settings)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the encoder from %s failed", self.settings.embedder_handle)
            return
        log.info("encoder loaded in process in %.1f s", time.perf_counter() - started)
        if on_ready is not None:
            on_ready()

    def require(self) -> Embedder:
        """The embedder, or NotReady (503) while it loads or after its load failed."""
        if self.embedder is None:
            # Why it failed (often a path) was logged when it happened; not for the caller.
            reason = "loading it failed (see the API log)" if self.error else "it is loading"
            raise NotReady(
                f"the embedder is not ready: {reason}", retry_after_s=self.settings.retry_after_s
            )
        return self.embedder

    def fingerprint(self) -> str | None:
        """The running embedder's fingerprint, or None while it cannot be known."""
        if self.embedder is None:
            return None
        try:
            return self.embedder.fingerprint
        except DCError as exc:
            log.debug("embedder fingerprint unknown: %s", exc)
            return None

    def close(self) -> None:
        if self.embedder is not None:
            self.embedder.close()


@dataclass
class Services:
    """Everything one API worker holds: settings, embedder, model store, inference log, metrics."""

    settings: Settings
    embedder: EmbedderHolder
    store: ModelStore
    inference_log: InferenceLog
    metrics: ApiMetrics
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


@dataclass(frozen=True)
class PredictionResult:
    """What `predict` computed for one request."""

    head: Head
    predictions: list[Prediction]
    cached: list[bool]
    timings: dict[str, float]


def predict(
    services: Services,
    model: str,
    request: PredictRequest,
    request_id: str,
    started: float,
    *,
    client_request_id: str | None = None,
) -> PredictionResult:
    """Classify `request.texts` with the served version of `model` and log every prediction.

    The log rows are in the worker's journal when this returns (before the answer is sent).

    Args:
        request_id: the server-made id, the inference log's key.
        started: `time.perf_counter()` when the HTTP request arrived (latency is measured
            from there, so the logged latency includes parsing).
        client_request_id: the caller's own id, logged beside the key for correlation.

    Raises:
        NotFound, EmbedderMismatch, NotReady: from the model store.
        EmbedderUnavailable, NotReady, Overloaded: from the embedder (texts not in the cache
            while the embedder is away or saturated).
    """
    head = services.store.get(model)
    texts, k = request.texts, request.k
    predictions: list[Prediction | None] = [
        services.predictions.get(head, text, k) for text in texts
    ]
    # A text answered before needed no encoder work: it counts as cached.
    cached = [prediction is not None for prediction in predictions]
    parsed = time.perf_counter()
    missing = [i for i, prediction in enumerate(predictions) if prediction is None]
    if missing:
        embedder = services.embedder.require()
        result = embedder.embed([texts[i] for i in missing])
        embedded = time.perf_counter()
        if result.fingerprint != head.embedder_fingerprint:
            # The embedder was redeployed with another model after the head was loaded.
            raise EmbedderMismatch(
                f"model {model!r} version {head.version} was trained on embedder "
                f"{head.embedder_fingerprint}, but the embedder now runs {result.fingerprint}"
            )
        probabilities = head.predict_proba(result.vectors)
        scored = postprocess(probabilities, head.labels, k, head.rule)
        for i, prediction, was_cached in zip(missing, scored, result.cached, strict=True):
            predictions[i] = prediction
            cached[i] = was_cached
            services.predictions.put(head, texts[i], prediction)
    else:
        embedded = parsed
    scored_at = time.perf_counter()

    now = datetime.now(UTC)
    latency_ms = (scored_at - started) * 1000
    fingerprint = head.embedder_fingerprint
    services.inference_log.enqueue(
        [
            InferenceRecord(
                request_id=request_id,
                item=i,
                created_at=now,
                model=head.name,
                region=head.region,
                version=head.version,
                model_type=head.model_type,
                input_text=text,
                predicted_label=prediction.label,
                probability=prediction.probability,
                top_k=prediction.top_k_dicts(),
                latency_ms=latency_ms,
                cache_hit=was_cached,
                embedder_fingerprint=fingerprint,
                client_request_id=client_request_id,
            )
            for i, (text, prediction, was_cached) in enumerate(
                zip(texts, predictions, cached, strict=True)
            )
        ]
    )
    logged = time.perf_counter()
    timings = {
        "parse": parsed - started,
        "embed": embedded - parsed,
        "score": scored_at - embedded,
        "log": logged - scored_at,
    }
    return PredictionResult(head, predictions, cached, timings)
