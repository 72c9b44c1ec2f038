"""Fuzzing the running stack: the embedder service and the prediction API under real gunicorn, a
real PostgreSQL, the real encoder and tiny heads.

- every string of `tests/corpus/naughty_strings.json` as a text to classify (200 or 422, and a
  200 is logged byte-identical), as a text to embed, as a model name in the path and as an
  `X-Request-ID`: never a 5xx;
- schemathesis generates requests from the live `/openapi.json` (bounded examples) and checks
  every answer against it: no server error, documented status codes, content types and bodies;
- raw HTTP the clients above cannot send: a chunked body over the limit (413, not a truncated
  parse), an invalid chunk size and deeply nested JSON (400), all in the JSON envelope.
"""

from __future__ import annotations

import json
import os
import socket
import time
from urllib.parse import quote

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis.errors import Unsatisfiable
from sqlalchemy import select, text

from dc.config import Settings
from dc.nlp.validation import blank_kind, max_body_bytes
from persistence.db import make_engine
from persistence.models import Base, Inference
from tests import heads_support
from tests.conftest import REPO
from tests.heads_support import register_versions
from tests.openapi_support import validating_session
from tests.service import test_api_service as stack

pytestmark = [pytest.mark.db, pytest.mark.slow]

tiny_versions = heads_support.tiny_versions
embedder_url = stack.embedder_url

CORPUS = json.loads((REPO / "tests" / "corpus" / "naughty_strings.json").read_text("ascii"))
NAUGHTY = CORPUS["blns"] + CORPUS["own"]


@pytest.fixture(scope="module")
def live(pg_migrated, tiny_versions, embedder_url, tmp_path_factory):
    """(API base URL, database URL): the API in remote mode on a freshly emptied database."""
    engine = make_engine(pg_migrated)
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    register_versions(engine, tiny_versions, promoted=tiny_versions[0].version)
    engine.dispose()
    env = stack.api_env(pg_migrated, embedder_url, tiny_versions, tmp_path_factory.mktemp("spool"))
    with stack.run_api(env) as (api, _):
        yield api, pg_migrated


def assert_envelope(response: requests.Response, status: int | None = None) -> dict:
    assert response.status_code < 500, response.text
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    error = response.json()["error"]
    assert error["status"] == response.status_code and error["code"] and error["message"]
    return error


def test_naughty_strings_are_classified_verbatim_or_refused(live, embedder_url):
    api, database = live
    session = validating_session(stack.checker_for(api))
    answered: dict[str, str] = {}
    statuses: dict[int, int] = {}
    for value in NAUGHTY:
        response = session.post(api + "/predict/tiny_banking", json={"text": value}, timeout=30)
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code == 200:
            answered[response.json()["request_id"]] = value
        else:
            assert response.status_code == 422, (value, response.text)
            assert_envelope(response, 422)
    assert len(answered) > len(NAUGHTY) / 2, statuses

    # Every answered text is stored exactly as it was sent (SQL, CSV, COPY and log shapes too).
    engine = make_engine(database)
    try:

        def stored() -> dict[str, str]:
            query = select(Inference.request_id, Inference.input_text).where(
                Inference.request_id.in_(list(answered))
            )
            with engine.connect() as connection:
                return dict(connection.execute(query).all())

        stack.wait_for(lambda: len(stored()) == len(answered), 60, "every row written")
        assert stored() == answered
    finally:
        engine.dispose()


def test_naughty_strings_never_break_the_embedder(embedder_url):
    session = requests.Session()
    for start in range(0, len(NAUGHTY), 16):
        chunk = NAUGHTY[start : start + 16]
        response = session.post(embedder_url + "/embed", json={"texts": chunk}, timeout=60)
        if response.status_code == 200:
            assert response.json()["count"] == len(chunk)
            continue
        assert_envelope(response, 422)  # a surrogate or an over-long text in the chunk
        for value in chunk:  # then each alone: the good ones embed
            alone = session.post(embedder_url + "/embed", json={"texts": [value]}, timeout=60)
            assert alone.status_code in (200, 422), (value, alone.text)


def test_naughty_model_names_and_request_ids_are_never_a_5xx(live):
    api, _ = live
    session = requests.Session()
    for value in NAUGHTY:
        path = quote(value.encode("utf-8", "surrogatepass"), safe="")
        response = session.post(api + f"/predict/{path}", json={"text": "a card"}, timeout=30)
        assert response.status_code in (404, 405), (value, response.text)
        assert_envelope(response)
        response = session.get(api + f"/models/{path}", timeout=30)
        assert response.status_code in (404, 405), (value, response.text)
        # What requests can put in a header at all: no line breaks, no leading whitespace.
        header = value.encode("utf-8", "surrogatepass").replace(b"\r", b"").replace(b"\n", b"")
        header = header.strip()
        response = session.post(
            api + "/predict/tiny_banking",
            json={"text": "my card has not arrived"},
            headers={"X-Request-ID": header},
            timeout=30,
        )
        if response.status_code != 200:
            # A header value HTTP does not allow (control characters): the server's own 400,
            # in the envelope too.
            assert response.status_code == 400, (value, response.text)
            assert_envelope(response, 400)


# --- schemathesis: requests generated from the live /openapi.json ---------------------------------


def _meaningful(case) -> bool:
    """Whether a schema-valid case also passes the rules JSON Schema cannot state: texts with a
    visible character, no NUL (it could not be logged), valid Unicode; a report's window that
    is not empty and not too long for its granularity, times the server reads. Such a case must
    be accepted; the others are answered 422, which the negative phase checks."""
    if case.path.startswith(("/reports/", "/dashboard/")) and not _window_ok(case.query or {}):
        return False
    body = case.body if isinstance(case.body, dict) else {}
    texts = [body.get("text"), *list(body.get("texts") or [])]
    for value in texts:
        if not isinstance(value, str):
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        if "\x00" in value or blank_kind(value) is not None:
            return False
    return True


def _distinguishable(case) -> bool:
    """Whether an invalid case is invalid on the wire too: a one-item list in a query string is
    `name=value`, the same bytes as the scalar it replaced, which the server rightly accepts."""
    return not any(isinstance(v, list) and len(v) == 1 for v in (case.query or {}).values())


def _window_ok(query: dict) -> bool:
    from datetime import UTC, datetime

    from werkzeug.datastructures import MultiDict

    from api.request_validation import parse_report_query
    from dc.errors import DCError
    from dc.reports import ReportRequest

    try:
        # As the query string carries them: every value a string, a list as repeated names.
        pairs = [
            (name, str(item))
            for name, value in query.items()
            for item in (value if isinstance(value, list) else [value])
        ]
        parsed = parse_report_query(MultiDict(pairs), Settings(), datetime.now(UTC))
        ReportRequest("m", parsed.region, parsed.start, parsed.end, parsed.granularity,
                      parsed.version, parsed.compare).checked()  # fmt: skip
    except DCError:
        return False
    return True


def test_every_operation_answers_as_its_spec_says(live):
    """Each operation of the live spec, with generated valid requests (which it must accept)
    and invalid ones (which it must refuse with a 4xx), bounded, checked by schemathesis: no
    5xx, documented status codes, content types and bodies. Its Python API is driven directly
    (its pytest plugin does not run under pytest 9)."""
    from hypothesis import given
    from schemathesis import GenerationMode
    from schemathesis.config import SchemathesisConfig

    api, _ = live
    # Refusing invalid data with 413 (too many texts, too big a body) is refusing it too.
    # So is 414 (a query string over the server's request-line limit).
    refusals = ["400", "401", "403", "404", "405", "409", "413", "414", "415", "422", "429"]
    config = SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": refusals}}}
    )
    schema = schemathesis.openapi.from_url(api + "/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    budget = settings(
        max_examples=int(os.environ.get("DC_FUZZ_EXAMPLES", "30")),
        deadline=None,
        derandomize=bool(os.environ.get("CI")),
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    for operation in operations:
        positive = operation.as_strategy(GenerationMode.POSITIVE).filter(_meaningful)
        negative = operation.as_strategy(GenerationMode.NEGATIVE).filter(_distinguishable)
        for strategy in (positive, negative):

            @budget
            @given(case=strategy)
            def check(case) -> None:
                case.call_and_validate(timeout=30)

            try:
                check()
            except Unsatisfiable:
                # An operation without inputs (GET /health) has no invalid request to make.
                assert strategy is negative, operation.label


# --- raw HTTP: what a well-behaved client library cannot send -------------------------------------


def raw_request(base: str, payload: bytes, timeout_s: float = 10.0) -> tuple[int, dict, bytes]:
    """Send `payload` as is on a new connection; returns (status, headers, body) of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(payload)
        data = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                headers = _headers(head)
                length = int(headers.get("content-length", -1))
                if length >= 0 and len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, _headers(head), body


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def chunked_post(path: str, chunks: list[bytes]) -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + body


def test_a_chunked_body_over_the_limit_is_413(live):
    api, _ = live
    limit = max_body_bytes(Settings().max_texts_per_request, Settings().max_text_chars)
    piece = b"x" * 65_536
    chunks = [b'{"text": "'] + [piece] * (limit // len(piece) + 2) + [b'"}']
    status, _, body = raw_request(api, chunked_post("/predict/tiny_banking", chunks))
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "too_large"


def test_a_chunked_body_within_the_limit_is_classified(live):
    api, _ = live
    chunks = [b'{"text": "my card ', b'has not arrived yet"}']
    status, _, body = raw_request(api, chunked_post("/predict/tiny_banking", chunks))
    assert status == 200, body
    assert json.loads(body)["label"] == "card_arrival"


def test_an_invalid_chunk_size_is_400_json(live):
    api, _ = live
    payload = (
        b"POST /predict/tiny_banking HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    )
    status, headers, body = raw_request(api, payload)
    assert status == 400, body
    assert headers["content-type"].startswith("application/json"), body
    assert json.loads(body)["error"]["status"] == 400


def test_deeply_nested_json_is_400_through_the_server(live, embedder_url):
    api, _ = live
    for base, path, field in (
        (api, "/predict/tiny_banking", "text"),
        (embedder_url, "/embed", "texts"),
    ):
        body = f'{{"{field}": '.encode() + b"[" * 5000 + b"]" * 5000 + b"}"
        response = requests.post(
            base + path, data=body, headers={"Content-Type": "application/json"}, timeout=30
        )
        assert_envelope(response, 400)
