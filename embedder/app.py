"""The embedder service's Flask app: parse, call `dc`, serialise. Run it under gunicorn:

    gunicorn -c embedder/gunicorn.conf.py

The model is loaded in a background thread of each worker, after gunicorn forks: `/health`
answers at once, `/ready` and `/embed` answer 503 (with Retry-After) until the model is warm.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.errors import client_request_id, register_error_handlers, request_id
from dc.config import Settings, get_settings
from dc.errors import NotReady
from dc.nlp.embeddings import (
    BINARY_MEDIA_TYPE,
    HEADER_CACHED,
    HEADER_COUNT,
    HEADER_DIMENSION,
    HEADER_FINGERPRINT,
    LocalEmbedder,
    vectors_to_bytes,
)
from dc.nlp.validation import max_body_bytes, validate_texts
from dc.utilities.logging import configure_logging
from embedder.metrics import EmbedderMetrics
from web.body import JSON_MEDIA_TYPE, json_body

log = logging.getLogger(__name__)


class EngineHolder:
    """The engine of one app: absent while loading, with the load error if loading failed."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: LocalEmbedder | None = None
        self.error: str | None = None
        self.loaded_in_s: float | None = None

    def load(self, on_batch) -> None:
        started = time.perf_counter()
        try:
            engine = LocalEmbedder.from_settings(self.settings)
            engine.add_batch_listener(on_batch)
            self.engine = engine
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.exception("loading the encoder from %s failed", self.settings.embedder_handle)
            return
        self.loaded_in_s = time.perf_counter() - started
        log.info(
            "encoder %s (%s) loaded and warmed in %.1f s",
            self.engine.name,
            self.engine.fingerprint,
            self.loaded_in_s,
        )

    def require(self) -> LocalEmbedder:
        if self.engine is None:
            # The cause (often a path) is in the service log, not in the answer.
            reason = (
                "loading the model failed (see the service log)"
                if self.error
                else "the model is loading"
            )
            raise NotReady(
                f"the embedder is not ready: {reason}", retry_after_s=self.settings.retry_after_s
            )
        return self.engine


def create_app(settings: Settings | None = None, engine: LocalEmbedder | None = None) -> Flask:
    """Build the embedder service.

    Args:
        settings: configuration; read from the environment when omitted.
        engine: an already loaded engine (tests share one); when omitted the model named by the
            settings is loaded in a background thread.
    """
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes(
        settings.max_texts_per_request, settings.max_text_chars
    )

    holder = EngineHolder(settings)
    metrics = EmbedderMetrics(lambda: holder.engine)
    app.extensions["dc.engine"] = holder
    app.extensions["dc.metrics"] = metrics
    register_error_handlers(app)

    if engine is not None:
        engine.add_batch_listener(metrics.observe_batch)
        holder.engine = engine
    else:
        threading.Thread(
            target=holder.load, args=(metrics.observe_batch,), name="embedder-loader", daemon=True
        ).start()

    @app.before_request
    def _start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        response.headers["X-Request-ID"] = request_id()
        client = client_request_id()
        if client is not None:
            response.headers["X-Client-Request-ID"] = client
        return response

    @app.post("/embed")
    def embed():
        """Embed texts: JSON, or float32 binary with Accept: application/octet-stream."""
        payload = json_body(request, request.max_content_length)
        texts = validate_texts(
            payload, max_texts=settings.max_texts_per_request, max_chars=settings.max_text_chars
        )
        engine = holder.require()
        parsed = time.perf_counter()
        result = engine.embed(texts)
        embedded = time.perf_counter()

        binary = (
            request.accept_mimetypes.best_match([JSON_MEDIA_TYPE, BINARY_MEDIA_TYPE])
            == BINARY_MEDIA_TYPE
        )
        if binary:
            response = Response(vectors_to_bytes(result.vectors), mimetype=BINARY_MEDIA_TYPE)
        else:
            response = jsonify(
                model=engine.name,
                fingerprint=result.fingerprint,
                dimension=engine.dimension,
                count=len(texts),
                cached=result.cached,
                vectors=result.vectors.tolist(),
            )
        response.headers[HEADER_FINGERPRINT] = result.fingerprint
        response.headers[HEADER_DIMENSION] = str(engine.dimension)
        response.headers[HEADER_COUNT] = str(len(texts))
        response.headers[HEADER_CACHED] = "".join("1" if c else "0" for c in result.cached)

        done = time.perf_counter()
        stages = {
            "parse": parsed - g.started,
            "cache": result.timings["cache"],
            "encode": result.timings["encode"],
            "serialize": done - embedded,
            "total": done - g.started,
        }
        for stage, seconds in stages.items():
            metrics.latency.labels(stage).observe(seconds)
        response.headers["Server-Timing"] = ", ".join(
            f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in stages.items()
        )
        return response

    @app.get("/health")
    def health():
        """Liveness: the process answers."""
        return jsonify(status="ok")

    @app.get("/ready")
    def ready():
        """Readiness: the model is loaded and warmed."""
        engine = holder.require()
        return jsonify(status="ready", model=engine.name, fingerprint=engine.fingerprint)

    @app.get("/info")
    def info():
        """Model, dimension, fingerprint, cache statistics, batching and request limits."""
        body = holder.require().info()
        body["limits"] = {
            "max_texts_per_request": settings.max_texts_per_request,
            "max_text_chars": settings.max_text_chars,
        }
        body["loaded_in_s"] = holder.loaded_in_s
        return jsonify(body)

    @app.get("/metrics")
    def prometheus_metrics():
        """Prometheus metrics: requests, stage latency, batch sizes, cache and queue."""
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app
