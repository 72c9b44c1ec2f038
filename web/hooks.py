"""The request hooks both services register: start the clock, count the answer, stamp its ids.

Before a request: `g.started` (`time.perf_counter()`), from which every stage timing and the
logged latency are measured. After it: the service's counter is called with the route (its
rule, or "unmatched") and the response; then the server's request id (X-Request-ID), the
caller's sane one if any (X-Client-Request-ID) and the service's fixed headers are set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from flask import Flask, Response, g, request

from web.request_ids import client_request_id, request_id

Count = Callable[[str, Response], None]


def register_request_hooks(
    app: Flask, count: Count, headers: Mapping[str, str] | None = None
) -> None:
    """Time, count and stamp every request of `app`.

    Args:
        count: called once per answered request with its endpoint and response (cheap: it
            runs on every request, on the request thread).
        headers: fixed headers added to every answer, after the ids (e.g. X-Served-By).
    """
    fixed = tuple((headers or {}).items())

    @app.before_request
    def _start_clock() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        count(request.url_rule.rule if request.url_rule else "unmatched", response)
        response.headers["X-Request-ID"] = request_id()
        client = client_request_id()
        if client is not None:
            response.headers["X-Client-Request-ID"] = client
        for name, value in fixed:
            response.headers[name] = value
        return response
