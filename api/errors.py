"""One table from error type to HTTP status, and one JSON envelope for every error.

Envelope: {"error": {"code": "...", "message": "...", "status": 4xx, "request_id": "..."}}.
Werkzeug's own errors (404, 405, 413 from the body limit) use the same envelope. Both services
(the prediction API and the embedder in `embedder/`) register these handlers, so a client meets
one error format whichever it talks to.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException

from dc import errors

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
    errors.BackupError: 502,
}

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class _IdSource:
    """Unique ids without a system call per request (os.urandom, under uuid4, costs more than
    the rest of a cached prediction's bookkeeping): 64 random bits drawn once per process, then
    a counter. The inference log is idempotent on these ids, so they must never repeat; a
    forked child draws its own bits (the pid is checked)."""

    def __init__(self) -> None:
        self._pid = -1
        self._prefix = ""
        self._counter = itertools.count()

    def next(self) -> str:
        if self._pid != os.getpid():
            self._pid, self._prefix = os.getpid(), secrets.token_hex(8)
            self._counter = itertools.count()
        return f"{self._prefix}{next(self._counter):08x}"


_ids = _IdSource()


def request_id() -> str:
    """The current request's id: the caller's X-Request-ID when sane, else a new one."""
    found = g.get("request_id")
    if found is None:
        given = request.headers.get("X-Request-ID", "")
        found = g.request_id = given if _REQUEST_ID.match(given) else _ids.next()
    return found


def error_response(code: str, message: str, status: int, retry_after_s: int | None = None):
    """Build the JSON envelope response for an error."""
    body = {
        "error": {"code": code, "message": message, "status": status, "request_id": request_id()}
    }
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
        retry_after = exc.retry_after_s
        if status in (429, 503) and retry_after is None:
            retry_after = 1
        response = error_response(exc.code, exc.message, status, retry_after)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="dc-admin"'
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        code = "too_large" if exc.code == 413 else re.sub(r"\W+", "_", (exc.name or "")).lower()
        return error_response(code, exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        message = f"{type(exc).__name__}: {exc}" if app.debug else "internal error"
        return error_response("internal_error", message, 500)
