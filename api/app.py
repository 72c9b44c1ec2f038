"""The prediction API's app factory. Run it under gunicorn (`scripts/serve.sh` does, after
`alembic upgrade head`):

    gunicorn -c api/gunicorn.conf.py

Each worker builds its own services after the fork: the embedder client (or, in local mode, the
encoder, loaded in a background thread), the model store (the promoted head of every model,
refreshed from the registry every `DC_MODEL_REFRESH_S`) and the inference log (a background
writer). `close_app` flushes the log; gunicorn's `worker_exit` hook calls it on SIGTERM.
"""

from __future__ import annotations

import os
import socket

import orjson
from flask import Flask, Response, request
from flask.json.provider import DefaultJSONProvider

from api.metrics import ApiMetrics
from api.router import register_routes
from api.services import ApiServices
from dc.config import Settings, get_settings
from dc.nlp.embeddings import Embedder
from dc.nlp.validation import max_body_bytes
from dc.postprocessing import PredictionCache
from dc.serve.services import embedder_fingerprint, embedder_loader
from dc.serve.store import ModelStore
from dc.utilities.logging import configure_logging
from persistence.db import make_engine, session_factory
from persistence.inference_log import InferenceLog
from web.errors import register_error_handlers
from web.hooks import register_request_hooks

SERVICES = "dc.services"


class OrjsonProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson doing the encoding: a prediction's answer (top-k
    included) serialises in a few microseconds instead of tens. Request bodies are still
    decoded by the standard library (`api.request_validation.json_body`), which, unlike orjson,
    accepts unpaired surrogates so that they get their own clear 422."""

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, default=self.default).decode()

    def response(self, *args, **kwargs) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(
            orjson.dumps(obj, default=self.default), mimetype=self.mimetype
        )


def create_app(settings: Settings | None = None, *, embedder: Embedder | None = None) -> Flask:
    """Build the prediction API and start its background work.

    Args:
        settings: configuration; read from the environment when omitted.
        embedder: an embedder to use instead of the one the settings describe (tests share the
            session's encoder this way).
    """
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = Flask(__name__)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes(
        settings.max_texts_per_request, settings.max_text_chars
    )

    url = settings.database_url_or_default
    # Short timeouts: the model store polls the registry from a background thread and must
    # notice an unreachable or hung database quickly (it keeps serving what it has meanwhile).
    connect_args = (
        {"timeout": 15}
        if url.startswith("sqlite")
        else {"connect_timeout": 3, "options": "-c statement_timeout=5000"}
    )
    database = make_engine(url, connect_args=connect_args)
    loader = embedder_loader(settings, embedder)
    metrics = ApiMetrics()
    store = ModelStore(settings, session_factory(database), lambda: embedder_fingerprint(loader))
    services = ApiServices(
        settings=settings,
        embedder=loader,
        store=store,
        inference_log=InferenceLog(
            url,
            settings.spool_dir,
            max_queue=settings.log_queue_size,
            batch_size=settings.log_batch_size,
            flush_interval_s=settings.log_flush_interval_ms / 1000,
            retry_interval_s=settings.log_retry_s,
            partitions_ahead_days=settings.partitions_ahead_days,
            retention_days=settings.inference_retention_days,
            listener=metrics.on_log_event,
        ),
        metrics=metrics,
        predictions=PredictionCache(settings.prediction_cache_size),
    )
    app.extensions[SERVICES] = services
    register_error_handlers(app)
    register_routes(app)

    def count(endpoint: str, response: Response) -> None:
        model = (request.view_args or {}).get("model", "")
        if model and not store.serves(model):
            model = "unknown"  # a label per made-up name would grow the series without bound
        metrics.count_request(endpoint, model, str(response.status_code))

    # X-Served-By, which process answered: tells workers (and ECS tasks) apart when debugging,
    # and lets the tests see that a change reached every worker.
    served_by = f"{socket.gethostname()}:{os.getpid()}"
    register_request_hooks(app, count, {"X-Served-By": served_by})

    services.start()
    return app


def close_app(app: Flask | None) -> None:
    """Flush the inference log and stop the background work of an app made by `create_app`."""
    services = app.extensions.get(SERVICES) if app is not None else None
    if services is not None:
        services.close()
