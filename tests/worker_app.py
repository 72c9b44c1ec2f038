"""A tiny WSGI app for the worker tests (tests/service/test_worker.py), served by
tests/worker_gunicorn.conf.py.

- `GET /health`, `GET /ready`: 200 at once (paths of the worker's priority lane).
- `GET /sleep?s=0.5`: sleeps that long, then 200 (holds a request thread).
- `POST /echo`: answers the body it read; 413 for a body over the services' body limit
  (`dc.nlp.validation.max_body_bytes` of the settings), told by Content-Length before reading,
  or by reading one byte past the limit of a chunked body, as the services do.
- anything else: 200 `ok`.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

from dc.config import get_settings
from dc.nlp.validation import max_body_bytes


def app(environ, start_response):
    """The WSGI callable."""
    path = environ["PATH_INFO"]
    status = "200 OK"
    if path == "/sleep":
        time.sleep(float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["0.5"])[0]))
        body = b"slept"
    elif path == "/echo":
        settings = get_settings()
        limit = max_body_bytes(settings.max_texts_per_request, settings.max_text_chars)
        length = environ.get("CONTENT_LENGTH")
        if length and int(length) > limit:
            status, body = "413 Content Too Large", b"too large"
        else:
            body = environ["wsgi.input"].read(limit + 1)
            if len(body) > limit:
                status, body = "413 Content Too Large", b"too large"
    else:
        body = b"ok"
    start_response(
        status, [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))]
    )
    return [body]
