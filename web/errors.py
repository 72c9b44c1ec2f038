"""One table from error type to HTTP status, and one JSON envelope for every error.

Envelope: {"error": {"code": "...", "message": "...", "status": 4xx, "request_id": "..."}}, plus
`items` (one {"index", "code", "message"} per refused item) when a batch is refused whole.
Werkzeug's own errors (404, 405, 413 from the body limit) use the same envelope. Both services
(the prediction API in `api/` and the embedder service in `embedder/`) register these handlers,
so a client meets one error format whichever it talks to; the request id is
`web.request_ids.request_id()`.
"""

from __future__ import annotations

import logging
import re
import time

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from dc import errors
from web.request_ids import request_id

log = logging.getLogger(__name__)

STATUS: dict[type[errors.DCError], int] = {
    errors.MalformedRequest: 400,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.EmbedderMismatch: 409,
    errors.PromotionRefused: 409,
    errors.TooLarge: 413,
    errors.UnsupportedMediaType: 415,
    errors.InvalidInput: 422,
    errors.DataError: 422,
    errors.Overloaded: 429,
    errors.NotReady: 503,
    errors.EmbedderUnavailable: 503,
    errors.DatabaseUnavailable: 503,
    errors.BackupError: 502,
}

# An error's `detail` (driver messages, hosts, paths) is logged, never sent; during an outage
# every request fails the same way, so each code logs its detail at most this often.
_DETAIL_LOG_EVERY_S = 10.0
_detail_logged_at: dict[str, float] = {}


def error_response(
    code: str,
    message: str,
    status: int,
    retry_after_s: int | None = None,
    items: list[dict] | None = None,
):
    """Build the JSON envelope of an error (`items`: a refused batch's per-item errors)."""
    body = {
        "error": {"code": code, "message": message, "status": status, "request_id": request_id()}
    }
    if items:
        body["error"]["items"] = items
    response = jsonify(body)
    response.status_code = status
    if retry_after_s is not None:
        response.headers["Retry-After"] = str(retry_after_s)
    return response


def _status_of(exc: errors.DCError) -> int:
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def register_error_handlers(app: Flask) -> None:
    """Route every error raised in a request to the envelope."""

    @app.errorhandler(errors.DCError)
    def _dc_error(exc: errors.DCError):
        status = _status_of(exc)
        if exc.detail:
            _log_detail(exc, status)
        retry_after = exc.retry_after_s
        if status in (429, 503) and retry_after is None:
            retry_after = 1
        response = error_response(exc.code, exc.message, status, retry_after, exc.items)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="dc-admin"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = "too_large" if exc.code == 413 else re.sub(r"\W+", "_", (exc.name or "")).lower()
        response = error_response(code, exc.description or exc.name, exc.code or 500)
        # Werkzeug's own headers carry protocol facts the envelope must keep: `Allow` on a 405
        # (RFC 9110 requires it), `WWW-Authenticate` on a 401. Its HTML Content-Type does not.
        for name, value in exc.get_headers():
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        message = f"{type(exc).__name__}: {exc}" if app.debug else "internal error"
        return error_response("internal_error", message, 500)


def _log_detail(exc: errors.DCError, status: int) -> None:
    now = time.monotonic()
    if now - _detail_logged_at.get(exc.code, -_DETAIL_LOG_EVERY_S) < _DETAIL_LOG_EVERY_S:
        return
    _detail_logged_at[exc.code] = now
    log.warning(
        "%s %s answered %d %s: %s (details: %s)",
        request.method,
        request.path,
        status,
        exc.code,
        exc.message,
        exc.detail,
    )
