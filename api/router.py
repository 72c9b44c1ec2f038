"""The routes, in blueprints by audience: predictions, models, operations, admin.

Thin on purpose: parse (`api.request_validation`), call the core (`dc.serve.pipeline.predict`,
the model store), serialise. A route's one-line docstring is its summary in `/openapi.json`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST

from api.openapi import build_spec
from api.request_validation import (
    check_admin_token,
    check_feedback_token,
    json_body,
    parse_feedback,
    parse_predict,
    parse_promote,
    parse_report_query,
)
from api.services import ApiServices
from dc import feedback as ground_truth
from dc.errors import NotReady
from dc.reports.build import ReportRequest
from dc.serve.pipeline import PredictionResult, predict
from web.request_ids import client_request_id, request_id

predictions = Blueprint("predictions", __name__)
models = Blueprint("models", __name__)
operations = Blueprint("operations", __name__)
admin = Blueprint("admin", __name__, url_prefix="/admin")
outcomes = Blueprint("outcomes", __name__)
insights = Blueprint("insights", __name__)


def services() -> ApiServices:
    return current_app.extensions["dc.services"]


# --- predictions --------------------------------------------------------------------------------


@predictions.post("/predict/<model>")
def predict_route(model: str):
    """Classify one text or a batch of texts with the served version of a model."""
    svc = services()
    parsed = parse_predict(json_body(request), svc.settings)
    rid, client = request_id(), client_request_id()
    result = predict(svc, model, parsed.texts, parsed.k, rid, g.started, client_request_id=client)
    done = time.perf_counter()
    timings = {**result.timings, "total": done - g.started}
    _observe(svc, result, timings)

    head = result.head
    body: dict = {
        "request_id": rid,
        "model": head.name,
        "version": head.version,
        "model_type": head.model_type,
    }
    if client is not None:
        body["client_request_id"] = client
    items = [
        {**p.as_dict(), "cached": cached}
        for p, cached in zip(result.predictions, result.cached, strict=True)
    ]
    if parsed.single:
        body.update(items[0])
    else:
        body["predictions"] = items
    response = jsonify(body)
    response.headers["Server-Timing"] = ", ".join(
        f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in timings.items()
    )
    return response


def _observe(svc: ApiServices, result: PredictionResult, timings: dict[str, float]) -> None:
    metrics = svc.metrics
    for stage, seconds in timings.items():
        metrics.stage[stage].observe(seconds)
    metrics.count_predictions(result.head.name, result.head.version, len(result.cached))
    hits = sum(result.cached)
    if hits:
        metrics.cache_hits.inc(hits)
    if hits < len(result.cached):
        metrics.cache_misses.inc(len(result.cached) - hits)


# --- outcomes -----------------------------------------------------------------------------------


@outcomes.post("/feedback")
def record_feedback():
    """Record the true labels of served predictions (a batch is all or nothing; feedback token)."""
    svc = services()
    check_feedback_token(request, svc.settings)
    items, single = parse_feedback(json_body(request), svc.settings)
    recorded = ground_truth.record(svc.store.sessions, items, svc.store.classes_of)
    return jsonify(recorded[0] if single else {"items": recorded})


# --- insights: reports and the dashboard ------------------------------------------------------


def _report_request(model: str) -> ReportRequest:
    query = parse_report_query(request.args, services().settings, datetime.now(UTC))
    return ReportRequest(
        model,
        query.region,
        query.start,
        query.end,
        query.granularity,
        query.version,
        query.compare,
    )


@insights.get("/reports/<model>")
def model_report(model: str):
    """A production report of a model: traffic, drift, confidence, live accuracy (JSON)."""
    from dc.reports.service import production_report

    svc = services()
    return jsonify(production_report(svc.store.sessions, svc.settings, _report_request(model)))


@insights.get("/dashboard")
def dashboard():
    """The dashboard's front page: every served model's figures over the last 7 days (HTML)."""
    from dc.reports import render
    from dc.reports.service import overview

    svc = services()
    reports = overview(svc.store.sessions, svc.settings, svc.store.names())
    entries = [
        {"report": r, "link": url_for(".model_dashboard", model=r["model"])} for r in reports
    ]
    return _html(render.render_index(entries, days=7))


@insights.get("/dashboard/<model>")
def model_dashboard(model: str):
    """One model's production report as a page with charts (HTML; the /reports parameters)."""
    from dc.reports import render
    from dc.reports.service import production_report

    svc = services()
    report = production_report(svc.store.sessions, svc.settings, _report_request(model))
    links = {
        "index": url_for(".dashboard"),
        "json": url_for(".model_report", model=model, **request.args),
    }
    return _html(render.render_html(report, links=links))


def _html(page: str) -> Response:
    response = Response(page, mimetype="text/html")
    # Everything the page shows is in it (inline SVG and CSS): no script, no other origin.
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"
    )
    return response


# --- models -------------------------------------------------------------------------------------


@models.get("/models")
def list_models():
    """Every model of the served region: status, served version, metrics, embedder."""
    svc = services()
    return jsonify(
        region=svc.settings.serving_region,
        embedder_fingerprint=svc.embedder_fingerprint(),
        models=svc.store.describe(),
    )


@models.get("/models/<model>")
def describe_model(model: str):
    """One model: its served version, metrics, embedder fingerprint and every recorded version."""
    return jsonify(services().store.describe(model))


# --- operations ---------------------------------------------------------------------------------


@operations.get("/health")
def health():
    """Liveness: the process answers."""
    return jsonify(status="ok")


@operations.get("/ready")
def ready():
    """Readiness: the embedder answers and every promoted model is loaded (or refused)."""
    svc = services()
    embedder = svc.embedder.require()
    embedder.ping(timeout_s=1.0)
    if not svc.store.ready:
        raise NotReady(
            "the models are not loaded yet (is the database reachable?)",
            retry_after_s=svc.settings.retry_after_s,
        )
    return jsonify(
        status="ready",
        embedder_fingerprint=svc.embedder_fingerprint(),
        models=svc.store.names(),
    )


@operations.get("/metrics")
def prometheus_metrics():
    """Prometheus metrics: requests, stage latency, cache, inference log (all workers)."""
    svc = services()
    svc.metrics.log_queue_depth.set(svc.inference_log.stats().queue_depth)
    svc.metrics.models_served.set(len(svc.store.names()))
    cache = getattr(svc.embedder.value, "cache", None)
    if cache is not None:
        svc.metrics.cache_size.set(cache.stats().size)
    return Response(svc.metrics.render(), content_type=CONTENT_TYPE_LATEST)


@operations.get("/openapi.json")
def openapi():
    """This API's OpenAPI 3.1 description: every endpoint, body and error."""
    return jsonify(build_spec(current_app, services().settings))


# --- admin --------------------------------------------------------------------------------------


@admin.before_request
def _require_token() -> None:
    check_admin_token(request, services().settings)


@admin.post("/models/<model>/reload")
def reload_model(model: str):
    """Reload the promoted version's files in every worker (admin token)."""
    return jsonify(services().store.reload(model))


@admin.post("/models/<model>/rollback")
def rollback_model(model: str):
    """Serve the previously promoted version again, in every worker (admin token)."""
    return jsonify(services().store.rollback(model))


@admin.post("/models/<model>/promote")
def promote_model(model: str):
    """Promote a recorded version (the promotion rule applies unless forced; admin token)."""
    version, force = parse_promote(json_body(request))
    return jsonify(services().store.promote(model, version, force=force))


def register_routes(app: Flask) -> None:
    """Attach every blueprint to `app`."""
    for blueprint in (predictions, outcomes, insights, models, operations, admin):
        app.register_blueprint(blueprint)
