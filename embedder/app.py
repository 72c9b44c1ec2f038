"""The embedder service's Flask app: parse, call `dc`, serialise. Run it under gunicorn:

    gunicorn -c embedder/gunicorn.conf.py

The model is loaded in a background thread of each worker, after gunicorn forks
(`dc.serve.loader.BackgroundLoader`): `/health` answers at once, `/ready` and `/embed` answer 503
(with Retry-After) until the model is warm. Error envelope, request ids and the timing and
counting hooks are the web kit's (`web/`), shared with the prediction API.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dc.config import Settings, get_settings
from dc.errors import InvalidInput
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
from dc.nlp.warm_start import cache_snapshot, snapshot_bytes
from dc.serve.loader import BackgroundLoader
from dc.utilities.logging import configure_logging
from embedder.metrics import EmbedderMetrics
from web.body import JSON_MEDIA_TYPE, json_body
from web.errors import register_error_handlers
from web.hooks import register_request_hooks

ENGINE = "dc.engine"


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

    def load_engine() -> LocalEmbedder:  # on the loader thread, once `metrics` exists
        loaded = LocalEmbedder.from_settings(settings)
        loaded.add_batch_listener(metrics.observe_batch)  # before the engine is visible
        # The snapshot of the phrase cache (or a pre-warm from the inference log): ready once
        # it is read, or after DC_WARM_START_WAIT_S; `close_app` writes it on SIGTERM.
        loaded.start_warm_start(settings)
        return loaded

    holder = engine_loader(settings, load_engine, engine)
    metrics = EmbedderMetrics(lambda: holder.value)
    if engine is not None:
        engine.add_batch_listener(metrics.observe_batch)
    app.extensions[ENGINE] = holder
    app.extensions["dc.metrics"] = metrics
    register_error_handlers(app)
    holder.start()

    def count(endpoint: str, response: Response) -> None:
        metrics.requests.labels(endpoint, str(response.status_code)).inc()

    register_request_hooks(app, count)

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

    @app.get("/snapshot")
    def snapshot():
        """The phrase cache's most recent entries, at most `limit` (default and most: the
        cache's size), as a warm-start snapshot (the .npz of dc.nlp.warm_start): what an API
        worker in remote mode fills its own phrase cache with at start."""
        engine = holder.require()
        snapshot = cache_snapshot(engine, query_limit(request.args, engine.cache.maxsize))
        response = Response(snapshot_bytes(snapshot), mimetype=BINARY_MEDIA_TYPE)
        response.headers[HEADER_FINGERPRINT] = snapshot.fingerprint
        response.headers[HEADER_COUNT] = str(len(snapshot))
        return response

    @app.get("/metrics")
    def prometheus_metrics():
        """Prometheus metrics: requests, stage latency, batch sizes, cache and queue."""
        # content_type, not mimetype: Flask would add a second "; charset=utf-8"
        return Response(generate_latest(metrics.registry), content_type=CONTENT_TYPE_LATEST)

    return app


def query_limit(args, most: int) -> int:
    """`?limit=N` of /snapshot: a whole number from 0 to `most` (`most` when absent)."""
    values = args.getlist("limit")
    unknown = sorted(set(args) - {"limit"})
    if unknown or len(values) > 1:
        raise InvalidInput(f"/snapshot takes one parameter, limit; got {unknown or 'limit twice'}")
    if not values:
        return most
    if not re.fullmatch(r"[0-9]{1,9}", values[0]):
        raise InvalidInput("limit must be a whole number")
    limit = int(values[0])
    if not 0 <= limit <= most:
        raise InvalidInput(f"limit must be from 0 to {most} (the cache's size)")
    return limit


def close_app(app: Flask | None) -> None:
    """Release the engine of an app made by `create_app` (gunicorn's `worker_exit` on
    SIGTERM): stop its warm start, write its phrase-cache snapshot, stop its micro-batcher."""
    holder = app.extensions.get(ENGINE) if app is not None else None
    if holder is not None:
        holder.close()


def engine_loader(
    settings: Settings, load: Callable[[], LocalEmbedder], engine: LocalEmbedder | None = None
) -> BackgroundLoader[LocalEmbedder]:
    """The service's engine: `engine` if given (ready at once), else what `load` returns (the
    model of `settings.embedder_handle`), loaded on `start()`."""
    return BackgroundLoader(
        load,
        source=f"the encoder from {settings.embedder_handle}",
        describe=lambda e: f"encoder {e.name} ({e.fingerprint}) loaded and warmed",
        loading="the embedder is not ready: the model is loading",
        # The cause (often a path) is in the service log, not in the answer.
        failed="the embedder is not ready: loading the model failed (see the service log)",
        retry_after_s=settings.retry_after_s,
        thread_name="embedder-loader",
        value=engine,
    )
