"""The OpenAPI 3.1 description served at `/openapi.json`.

The schemas are written here (JSON Schema 2020-12, as OpenAPI 3.1 takes it); each operation's
summary is its route's docstring, and the limits (texts per request, characters, k) are the
running settings, so the description never drifts from what the service enforces. The tests
validate every response they receive against it, and check that every route is described.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from dc.config import Settings
from web.errors import STATUS

ERROR_CODES = sorted({kind.code for kind in STATUS} | {"internal_error"})

# (path in OpenAPI form, method) -> (endpoint name, success status, success schema, error statuses)
_OPERATIONS: dict[tuple[str, str], tuple[str, int, str, tuple[int, ...]]] = {
    ("/predict/{model}", "post"): (
        "predictions.predict_route",
        200,
        "PredictResponse",
        (400, 404, 409, 413, 415, 422, 429, 503),
    ),
    ("/feedback", "post"): (
        "outcomes.record_feedback",
        200,
        "FeedbackResponse",
        (400, 401, 403, 404, 413, 415, 422),
    ),
    ("/reports/{model}", "get"): ("insights.model_report", 200, "Report", (404, 414, 422, 503)),
    ("/dashboard", "get"): ("insights.dashboard", 200, "html", (503,)),
    ("/dashboard/{model}", "get"): (
        "insights.model_dashboard",
        200,
        "html",
        (404, 414, 422, 503),
    ),
    ("/models", "get"): ("models.list_models", 200, "ModelList", ()),
    ("/models/{model}", "get"): ("models.describe_model", 200, "ModelDetail", (404,)),
    ("/health", "get"): ("operations.health", 200, "Health", ()),
    ("/ready", "get"): ("operations.ready", 200, "Ready", (503,)),
    ("/metrics", "get"): ("operations.prometheus_metrics", 200, "", ()),
    ("/openapi.json", "get"): ("operations.openapi", 200, "OpenApiDocument", ()),
    ("/admin/models/{model}/reload", "post"): (
        "admin.reload_model",
        200,
        "ModelDetail",
        (401, 403, 404, 409, 503),
    ),
    ("/admin/models/{model}/rollback", "post"): (
        "admin.rollback_model",
        200,
        "ModelDetail",
        (401, 403, 404, 409, 503),
    ),
    ("/admin/models/{model}/promote", "post"): (
        "admin.promote_model",
        200,
        "ModelDetail",
        (400, 401, 403, 404, 409, 415, 422, 503),
    ),
}

_REASONS = {
    400: "The body is not valid JSON.",
    401: "The admin (or feedback) token is missing or wrong.",
    403: "The admin endpoints (or /feedback) are disabled (no DC_ADMIN_TOKEN, DC_FEEDBACK_TOKEN).",
    404: "Unknown model (or version; for feedback: no such served prediction; for a report: "
    "no version and no prediction of the model in the region).",
    409: "The model's head was trained on another embedder, or the promotion rule refused.",
    413: "Too many texts, or a body over the size limit.",
    414: "The request line (with its query string) is over the server's limit (gunicorn's "
    "limit_request_line, 4,094 bytes).",
    415: "The body is not declared as application/json.",
    422: "The body breaks a rule: missing, empty or whitespace-only text, wrong types, a text "
    "over the limit, unknown fields, k out of range; a feedback label outside its version's "
    "classes.",
    429: "The embedder's queue is full: retry after Retry-After seconds.",
    503: "The embedder or the models are not available (texts in the phrase cache still "
    "work), or the database cannot be read (reports): retry after Retry-After seconds.",
    500: "An unexpected error (a bug): the envelope carries the request id to report.",
}

_NUMBER_0_1 = {"type": "number", "minimum": 0, "maximum": 1}
_CLIENT_ID_PATTERN = "^[A-Za-z0-9._:-]{1,64}$"
# Headers of every answer (a success here; the error envelope repeats the id in its body).
_ID_HEADERS = {
    "X-Request-ID": {
        "description": "The server's id of this request, made by the server for every answer "
        "(128 random bits, hex); for a prediction, the inference log's key.",
        "required": True,
        "schema": {"type": "string"},
    },
    "X-Client-Request-ID": {
        "description": "The X-Request-ID the caller sent, echoed when it matches "
        f"{_CLIENT_ID_PATTERN} (otherwise ignored); stored in the inference log as "
        "client_request_id.",
        "schema": {"type": "string", "pattern": _CLIENT_ID_PATTERN},
    },
}
_NULLABLE_STRING = {"type": ["string", "null"]}


def _schemas(settings: Settings) -> dict[str, Any]:
    text = {"type": "string", "minLength": 1, "maxLength": settings.max_text_chars}
    k = {
        "type": "integer",
        "minimum": 1,
        "maximum": settings.max_top_k,
        "default": settings.default_top_k,
        "description": "How many classes to return per text, best first.",
    }
    ref = _ref
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "additionalProperties": False,
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message", "status", "request_id"],
                    "additionalProperties": False,
                    "properties": {
                        "code": {"type": "string", "description": ", ".join(ERROR_CODES)},
                        "message": {"type": "string"},
                        "status": {"type": "integer", "minimum": 400, "maximum": 599},
                        "request_id": {"type": "string"},
                        "items": {
                            "description": "A refused batch's per-item errors (nothing of it "
                            "was written).",
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["index", "code", "message"],
                                "additionalProperties": False,
                                "properties": {
                                    "index": {"type": "integer", "minimum": 0},
                                    "code": {"type": "string"},
                                    "message": {"type": "string"},
                                },
                            },
                        },
                    },
                }
            },
        },
        "FeedbackItem": {
            "type": "object",
            "required": ["request_id", "item", "label"],
            "additionalProperties": False,
            "properties": {
                "request_id": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "description": "The prediction's request_id (its answer's X-Request-ID).",
                },
                "item": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "The prediction's index in its request (0 for one text).",
                },
                "label": {"type": "string", "minLength": 1, "maxLength": 200},
                "source": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 100,
                    "default": "api",
                    "description": "Who says so; one label per prediction and source.",
                },
                "time": {
                    "type": "string",
                    "format": "date-time",
                    "description": "When the truth was known (default: now).",
                },
            },
        },
        "FeedbackRequest": {
            "description": 'One feedback item, or {"items": [...]} (all or nothing, at most '
            f"{settings.max_feedback_items}).",
            "oneOf": [
                ref("FeedbackItem"),
                {
                    "type": "object",
                    "required": ["items"],
                    "additionalProperties": False,
                    "properties": {
                        "items": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": settings.max_feedback_items,
                            "items": ref("FeedbackItem"),
                        }
                    },
                },
            ],
        },
        "FeedbackRecorded": {
            "type": "object",
            "required": ["request_id", "item", "source", "label", "model", "version", "status"],
            "additionalProperties": False,
            "properties": {
                "request_id": {"type": "string"},
                "item": {"type": "integer"},
                "source": {"type": "string"},
                "label": {"type": "string"},
                "model": {"type": "string"},
                "version": {"type": "string"},
                "status": {"enum": ["created", "updated", "unchanged"]},
            },
        },
        "FeedbackResponse": {
            "oneOf": [
                ref("FeedbackRecorded"),
                {
                    "type": "object",
                    "required": ["items"],
                    "additionalProperties": False,
                    "properties": {"items": {"type": "array", "items": ref("FeedbackRecorded")}},
                },
            ]
        },
        "PredictRequest": {
            "description": 'Either {"text": "..."} or {"texts": ["...", ...]}; texts must not '
            "be empty or whitespace only.",
            "oneOf": [
                {
                    "type": "object",
                    "required": ["text"],
                    "additionalProperties": False,
                    "properties": {"text": text, "k": k},
                },
                {
                    "type": "object",
                    "required": ["texts"],
                    "additionalProperties": False,
                    "properties": {
                        "texts": {
                            "type": "array",
                            "items": text,
                            "minItems": 1,
                            "maxItems": settings.max_texts_per_request,
                        },
                        "k": k,
                    },
                },
            ],
        },
        "ScoredLabel": {
            "type": "object",
            "required": ["label", "probability"],
            "additionalProperties": False,
            "properties": {"label": {"type": "string"}, "probability": _NUMBER_0_1},
        },
        "Prediction": {
            "type": "object",
            "required": ["label", "probability", "top_k", "fallback", "cached"],
            "properties": {
                "label": {"type": "string"},
                "probability": _NUMBER_0_1,
                "top_k": {"type": "array", "items": ref("ScoredLabel"), "minItems": 1},
                "fallback": {
                    "type": "boolean",
                    "description": "The top probability was below the model's threshold, so "
                    "the label is the model's fallback label.",
                },
                "cached": {
                    "type": "boolean",
                    "description": "The text's embedding came from the phrase cache.",
                },
            },
        },
        "PredictResponse": {
            "description": 'For {"text"}: the prediction\'s fields at the top level; for '
            '{"texts"}: a "predictions" list in input order.',
            "type": "object",
            "required": ["request_id", "model", "version", "model_type"],
            "properties": {
                "request_id": {
                    "type": "string",
                    "description": "The server's id of this request (as X-Request-ID): the "
                    "inference log's key.",
                },
                "client_request_id": {
                    "type": "string",
                    "pattern": _CLIENT_ID_PATTERN,
                    "description": "The X-Request-ID the caller sent, when it sent a valid one "
                    "(as X-Client-Request-ID): logged beside the key for correlation.",
                },
                "model": {"type": "string"},
                "version": {"type": "string"},
                "model_type": {"type": "string"},
                "label": {"type": "string"},
                "probability": _NUMBER_0_1,
                "top_k": {"type": "array", "items": ref("ScoredLabel")},
                "fallback": {"type": "boolean"},
                "cached": {"type": "boolean"},
                "predictions": {"type": "array", "items": ref("Prediction"), "minItems": 1},
            },
            "oneOf": [
                {"required": ["label", "probability", "top_k", "fallback", "cached"]},
                {"required": ["predictions"]},
            ],
        },
        "ModelSummary": {
            "type": "object",
            "required": ["name", "region", "status"],
            "properties": {
                "name": {"type": "string"},
                "region": {"type": "string"},
                "status": {"enum": ["serving", "refused", "failed", "pending"]},
                "reason": _NULLABLE_STRING,
                "version": _NULLABLE_STRING,
                "model_type": _NULLABLE_STRING,
                "embedder_fingerprint": _NULLABLE_STRING,
                "classes": {"type": ["integer", "null"]},
                "metrics": {"type": ["object", "null"]},
                "loaded_at": _NULLABLE_STRING,
            },
        },
        "ModelDetail": {
            "allOf": [
                ref("ModelSummary"),
                {
                    "type": "object",
                    "required": ["versions"],
                    "properties": {
                        "versions": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["version", "status"],
                                "properties": {
                                    "version": {"type": "string"},
                                    "status": {"enum": ["trained", "promoted", "archived"]},
                                    "created_at": _NULLABLE_STRING,
                                    "promoted_at": _NULLABLE_STRING,
                                    "metrics": {"type": ["object", "null"]},
                                },
                            },
                        }
                    },
                },
            ]
        },
        "ModelList": {
            "type": "object",
            "required": ["region", "embedder_fingerprint", "models"],
            "properties": {
                "region": {"type": "string"},
                "embedder_fingerprint": _NULLABLE_STRING,
                "models": {"type": "array", "items": ref("ModelSummary")},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "embedder_fingerprint", "models"],
            "properties": {
                "status": {"const": "ready"},
                "embedder_fingerprint": _NULLABLE_STRING,
                "models": {"type": "array", "items": {"type": "string"}},
            },
        },
        "PromoteRequest": {
            "type": "object",
            "required": ["version"],
            "additionalProperties": False,
            "properties": {
                "version": {"type": "string", "minLength": 1},
                "force": {"type": "boolean", "default": False},
            },
        },
        "Report": _report_schema(),
        "OpenApiDocument": {"type": "object", "required": ["openapi", "paths"]},
    }


_NUMBER = {"type": "number"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_RATIO = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}
_BUCKETS = {"type": "array", "items": {"type": "object", "required": ["start"]}}


def _report_schema() -> dict[str, Any]:
    """The report of `dc.reports.build_report` (its module docstring explains each figure)."""

    def section(required: dict[str, Any]) -> dict[str, Any]:
        return {"type": "object", "required": list(required), "properties": required}

    return {
        "type": "object",
        "required": [
            "model",
            "region",
            "window",
            "version",
            "served_version",
            "reference_version",
            "versions",
            "generated_at",
            "traffic",
            "predictions",
            "feedback",
            "comparison",
            "notes",
        ],
        "properties": {
            "model": {"type": "string"},
            "region": {"type": "string"},
            "window": section(
                {
                    "start": {"type": "string"},
                    "end": {"type": "string"},
                    "granularity": {"enum": ["hour", "day", "week"]},
                    "buckets": {"type": "array", "items": {"type": "string"}},
                }
            ),
            "version": _NULLABLE_STRING,
            "served_version": _NULLABLE_STRING,
            "reference_version": _NULLABLE_STRING,
            "versions": {"type": "array", "items": {"type": "string"}},
            "generated_at": {"type": "string"},
            "traffic": section(
                {
                    "requests": _COUNT,
                    "texts": _COUNT,
                    "cache_hit_rate": _NULLABLE_RATIO,
                    "latency_p50_ms": _NULLABLE_NUMBER,
                    "latency_p95_ms": _NULLABLE_NUMBER,
                    "latency_p99_ms": _NULLABLE_NUMBER,
                    "by_version": {"type": "array", "items": {"type": "object"}},
                    "buckets": _BUCKETS,
                }
            ),
            "predictions": section(
                {
                    "texts": _COUNT,
                    "labels": {"type": "array", "items": {"type": "object"}},
                    "psi": _NULLABLE_NUMBER,
                    "chi_square": {"type": ["object", "null"]},
                    "drift": {"type": "boolean"},
                    "drift_rule": {"type": "object"},
                    "buckets": _BUCKETS,
                    "mean_probability": _NULLABLE_RATIO,
                    "probability_histogram": section(
                        {
                            "edges": {"type": "array", "items": _NUMBER},
                            "counts": {"type": "array", "items": _COUNT},
                        }
                    ),
                    "fallback_rate": _NULLABLE_RATIO,
                    "unseen_share": _NULLABLE_RATIO,
                }
            ),
            "feedback": section(
                {
                    "items": _COUNT,
                    "coverage": _NULLABLE_RATIO,
                    "accuracy": _NULLABLE_RATIO,
                    "weighted_f1": _NULLABLE_RATIO,
                    "macro_f1": _NULLABLE_RATIO,
                    "ece": _NULLABLE_RATIO,
                    "test": {"type": ["object", "null"]},
                    "per_class": {"type": "array", "items": {"type": "object"}},
                    "confusions": {"type": "array", "items": {"type": "object"}},
                    "buckets": _BUCKETS,
                }
            ),
            "comparison": {
                "type": ["object", "null"],
                "required": ["versions", "figures"],
            },
            "notes": {"type": "array", "items": {"type": "string"}},
        },
    }


_REPORT_PARAMETERS = [
    (
        "region",
        "The region (default: the served region).",
        {"type": "string", "minLength": 1, "maxLength": 50},
    ),
    (
        "start",
        "Start of the window, ISO 8601 (a date, or a time without an offset: UTC); or use days.",
        {"type": "string", "format": "date-time"},
    ),
    (
        "end",
        "End of the window, excluded (default: the next full hour).",
        {"type": "string", "format": "date-time"},
    ),
    (
        "days",
        "The window as the last days before end (default 7).",
        {"type": "integer", "minimum": 1, "maximum": 400},
    ),
    ("granularity", "Bucket size (default day).", {"enum": ["hour", "day", "week"]}),
    (
        "version",
        "Only the predictions of this version.",
        {"type": "string", "minLength": 1, "maxLength": 40},
    ),
    (
        "compare",
        "A second version whose headline figures are set beside the first's.",
        {"type": "string", "minLength": 1, "maxLength": 40},
    ),
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _REASONS[status],
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if status in (429, 503):
        response["headers"] = {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}}
    return response


def build_spec(app: Flask, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document of `app`, with the limits of `settings`."""
    paths: dict[str, dict[str, Any]] = {}
    for (path, method), (endpoint, status, schema, errors) in _OPERATIONS.items():
        view = app.view_functions[endpoint]
        summary = (view.__doc__ or "").strip().splitlines()[0]
        success: dict[str, Any] = {"description": summary, "headers": _ID_HEADERS}
        if schema == "html":
            success["content"] = {"text/html": {"schema": {"type": "string"}}}
        elif schema:
            success["content"] = {"application/json": {"schema": _ref(schema)}}
        else:
            success["content"] = {"text/plain": {"schema": {"type": "string"}}}
        operation: dict[str, Any] = {
            "operationId": endpoint.split(".")[-1],
            "summary": summary,
            "tags": [endpoint.split(".")[0]],
            "responses": {
                str(status): success,
                **{str(code): _error_response(code) for code in errors},
                "500": _error_response(500),
            },
        }
        if "{model}" in path:
            operation["parameters"] = [
                {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
            ]
        if endpoint in ("insights.model_report", "insights.model_dashboard"):
            operation["parameters"] = operation.get("parameters", []) + [
                {"name": name, "in": "query", "description": text, "schema": schema}
                for name, text, schema in _REPORT_PARAMETERS
            ]
        if path.startswith("/admin"):
            operation["security"] = [{"adminToken": []}]
        if endpoint == "outcomes.record_feedback":
            operation["security"] = [{"feedbackToken": []}]
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref("FeedbackRequest")}},
            }
        if endpoint == "predictions.predict_route":
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref("PredictRequest")}},
            }
        if endpoint == "admin.promote_model":
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _ref("PromoteRequest")}},
            }
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "dc prediction API",
            "version": "1",
            "description": "Classify short phrases with the promoted version of each model. "
            'Every error answers {"error": {code, message, status, request_id}}; every answer '
            "carries X-Request-ID, the server's own id of the request (the inference-log key). "
            "Send your own X-Request-ID to correlate: it comes back as X-Client-Request-ID and "
            "is logged beside the key, never as the key.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(settings),
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer"},
                "feedbackToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def described_rules() -> set[tuple[str, str]]:
    """(Flask rule, METHOD) of every described operation, for the completeness test."""
    return {
        (path.replace("{", "<").replace("}", ">"), method.upper()) for path, method in _OPERATIONS
    }
