"""The ids of a request, the same in both services: the server's own (the inference log's key,
echoed as X-Request-ID) and the caller's (kept beside it for correlation only).
"""

from __future__ import annotations

import os
import re

from flask import g, request

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id() -> str:
    """A fresh request id: 128 bits from the OS's CSPRNG, as 32 hex digits (about 0.6 us).

    The inference log's key, so it must be unguessable: an id a client could predict (a
    per-process prefix plus a counter, say) would let it claim another request's key in
    advance and have that request's rows dropped as duplicates.
    """
    return os.urandom(16).hex()


def request_id() -> str:
    """The current request's id: always made by the server (`new_request_id`), never taken
    from the caller, whose own id is `client_request_id()`."""
    found = g.get("request_id")
    if found is None:
        found = g.request_id = new_request_id()
    return found


def client_request_id() -> str | None:
    """The caller's X-Request-ID when sane (1-64 of A-Z a-z 0-9 . _ : -), else None.

    Kept beside the server's id for correlation only (echoed as X-Client-Request-ID, stored
    in the inference log's `client_request_id`); it is never a key.
    """
    found = g.get("client_request_id", "")
    if found == "":
        given = request.headers.get("X-Request-ID", "")
        found = g.client_request_id = given if _REQUEST_ID.match(given) else None
    return found
