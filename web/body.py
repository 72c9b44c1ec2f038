"""Reading a JSON request body, the one way both services do it.

Every failure is a client error with the envelope, never a 500: a body over the limit, sent
with Content-Length or chunked (413); a body that cannot be read, such as a broken chunked
encoding or a client that went away mid-body (400); a body that is not UTF-8 JSON, nested
deeper than the parser's recursion limit, or using JavaScript's NaN/Infinity, which JSON does
not have (400); a Content-Type other than application/json (415).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Request
from werkzeug.exceptions import HTTPException

from dc.errors import MalformedRequest, TooLarge, UnsupportedMediaType

JSON_MEDIA_TYPE = "application/json"


def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, at most `max_bytes` long.

    A body with Content-Length is checked before anything is read. A chunked body has no
    length up front: one byte more than the limit is read to tell "exactly at the limit" from
    "over it" (Werkzeug's own limit would silently truncate it at the limit instead).

    Raises:
        TooLarge: the body is longer than `max_bytes`.
        MalformedRequest: the body cannot be read (invalid chunked encoding, a client that
            disconnected before sending all of it).
    """
    length = request.content_length
    if length is not None and length > max_bytes:
        raise TooLarge(f"the body has {length} bytes; at most {max_bytes} are accepted")
    try:
        if length is not None:
            data = request.get_data(cache=True)
        else:
            stream = request.environ.get("wsgi.input")
            data = stream.read(max_bytes + 1) if stream is not None else b""
    except HTTPException:
        raise
    except Exception as exc:  # the server's chunk parser, a reset connection: never a 500
        raise MalformedRequest(
            "the body could not be read (invalid chunked encoding or an incomplete body)",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc
    if len(data) > max_bytes:
        raise TooLarge(f"the body is longer than {max_bytes} bytes, the most accepted")
    return data


def json_body(request: Request, max_bytes: int) -> Any:
    """The decoded JSON body of `request`.

    Raises:
        TooLarge, MalformedRequest: see `read_body`; also a body that is not UTF-8 JSON.
        UnsupportedMediaType: a body not declared as application/json.
    """
    data = read_body(request, max_bytes)
    if request.mimetype != JSON_MEDIA_TYPE:
        raise UnsupportedMediaType(
            f"send the body as {JSON_MEDIA_TYPE} (got {request.mimetype or 'no Content-Type'})"
        )
    return decode_json(data)


def decode_json(data: bytes) -> Any:
    """Decode a UTF-8 JSON document strictly.

    The standard library decoder is used (not orjson) because it accepts unpaired surrogate
    escapes, so that they reach the validators and get their own clear 422.

    Raises:
        MalformedRequest: not UTF-8, not JSON, NaN/Infinity, or nested too deeply to decode.
    """
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError as exc:
        raise MalformedRequest("the body is nested too deeply to be decoded") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequest(f"the body is not valid JSON: {exc}") from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")
