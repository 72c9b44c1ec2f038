"""The ids of a request, the same in both services: the server's own (the inference log's key,
echoed as X-Request-ID) and the caller's (kept beside it for correlation only).
"""

from __future__ import annotations

import os
import re
import time

from flask import g, request

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id() -> str:
    """A fresh request id, 32 hex digits: the time in milliseconds (48 bits), then 80 bits from
    the OS's CSPRNG (the layout of a UUIDv7, without its version bits; about 1 us).

    The inference log's key, so it must be unguessable: an id a client could predict (a
    per-process prefix plus a counter, say) would let it claim another request's key in
    advance and have that request's rows dropped as duplicates; 80 random bits cannot be
    guessed. The time first keeps the keys in the order they are made, so PostgreSQL adds
    each to the right-hand edge of the primary key's B-tree instead of all over it. Measured
    on this machine (local PostgreSQL 15, a (request_id, item) key as `inferences`'): 3 M
    rows into an empty table took 21.5 s with 32 random hex digits and 9.6 s with this
    layout; 1 M more on top, 12.7 s against 3.5 s; the index, 223 MB against 169 MB.
    """
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(10).hex()}"


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
