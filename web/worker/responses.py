"""The answers the worker writes itself: the services' JSON error envelope, and the status and
message each of gunicorn's own errors gets."""

from __future__ import annotations

import json
import os

from gunicorn import util
from gunicorn.http import errors as herrors

REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    501: "Not Implemented",
}
_CODES = {
    400: "malformed_request",
    403: "forbidden",
    408: "request_timeout",
    413: "too_large",
    414: "uri_too_long",
    417: "expectation_failed",
    429: "overloaded",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}

# gunicorn's client errors (base.Worker.handle_error's classification): status and a message
# that does not echo the request. Checked in order, so subclasses come before their bases.
_CLIENT_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (herrors.InvalidRequestLine, 400, "malformed request line"),
    (herrors.InvalidRequestMethod, 400, "invalid request method"),
    (herrors.InvalidHTTPVersion, 400, "unsupported HTTP version"),
    (herrors.UnsupportedTransferCoding, 501, "unsupported transfer coding"),
    (herrors.ConfigurationProblem, 500, "internal error"),
    (herrors.ObsoleteFolding, 400, "obsolete header line folding is not accepted"),
    (herrors.InvalidHeaderName, 400, "invalid header field name"),
    (herrors.InvalidHeader, 400, "invalid header field"),
    (herrors.LimitRequestLine, 414, "request line too long"),
    (herrors.ExpectationFailed, 417, "unsupported expectation"),
    (herrors.LimitRequestHeaders, 431, "request header fields too large"),
    (herrors.InvalidProxyLine, 400, "invalid PROXY protocol line"),
    (herrors.ForbiddenProxyRequest, 403, "forbidden"),
    (herrors.InvalidSchemeHeaders, 400, "conflicting scheme headers"),
    (herrors.InvalidChunkSize, 400, "invalid chunked body: bad chunk size"),
    (herrors.ChunkMissingTerminator, 400, "invalid chunked body: missing chunk terminator"),
    (herrors.InvalidChunkExtension, 400, "invalid chunked body: bad chunk extension"),
    (herrors.InvalidH2CPreface, 400, "invalid HTTP/2 preface"),
)
_FRAMING_HEADERS = frozenset({"CONTENT-LENGTH", "TRANSFER-ENCODING"})


def envelope_response(
    status: int,
    message: str,
    *,
    code: str | None = None,
    retry_after_s: int | None = None,
    body: bool = True,
) -> bytes:
    """A complete HTTP/1.1 answer carrying the services' JSON error envelope, closing the
    connection.

    Args:
        status: the HTTP status.
        message: the envelope's message (shown to the client: no internal detail).
        code: the envelope's code; by default the services' code for `status`.
        retry_after_s: sent as `Retry-After` when given.
        body: False for an answer to HEAD (the headers only).
    """
    request_id = os.urandom(16).hex()
    error = {
        "code": code or _CODES.get(status, "error"),
        "message": message,
        "status": status,
        "request_id": request_id,
    }
    payload = json.dumps({"error": error}, separators=(",", ":")).encode()
    head = [
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}",
        f"Date: {util.http_date()}",
        "Connection: close",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        f"X-Request-ID: {request_id}",
    ]
    if retry_after_s is not None:
        head.append(f"Retry-After: {retry_after_s}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (payload if body else b"")


def classify_error(exc: BaseException) -> tuple[int, str]:
    """The status and the generic message that gunicorn's error `exc` is answered with.

    The status is base.Worker.handle_error's (500 for anything it does not know as the
    client's fault); the message never quotes the request.
    """
    status, message = 500, "internal error"
    if not isinstance(exc, (herrors.InvalidResponseHeader, herrors.InvalidResponseHeaderName)):
        for kind, kind_status, kind_message in _CLIENT_ERRORS:
            if isinstance(exc, kind):
                status, message = kind_status, kind_message
                break
    if status == 400 and isinstance(exc, herrors.InvalidHeader) and exc.hdr in _FRAMING_HEADERS:
        message = "invalid or conflicting Content-Length and Transfer-Encoding"
    return status, message
