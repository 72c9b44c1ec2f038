"""One prediction end to end, without HTTP: embed (cache first) -> score the head -> postprocess
-> enqueue the inference-log rows.

The request path of `POST /predict/<model>`: the route parses and serialises around `predict`,
which does one snapshot look-up (`ModelStore.get`), one prediction-cache look-up per text, and
the embedder, head and postprocessing only for the texts not answered before.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from dc.errors import EmbedderMismatch
from dc.postprocessing import Prediction, postprocess
from dc.predict import Head
from dc.serve.services import Services
from persistence.inference_log import InferenceRecord


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
    texts: list[str],
    k: int,
    request_id: str,
    started: float,
    *,
    client_request_id: str | None = None,
) -> PredictionResult:
    """Classify `texts` with the served version of `model` and log every prediction.

    The log rows are in the worker's journal when this returns (before the answer is sent).

    Args:
        texts, k: the checked texts, and how many classes to return per text (best first).
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
