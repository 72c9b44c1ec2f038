"""Bad input found by the adversarial test of issue 9, through the real apps: every case is a
4xx with the envelope (or a generic 503), never a 500, never an internal detail, never a row.

The prediction API runs on the real encoder, the real tiny heads and a real PostgreSQL
(fixtures of `tests/api/test_api.py`); the embedder service on the real encoder.
"""

from __future__ import annotations

import io
import json

import pytest

from api.app import close_app, create_app
from dc.errors import EmbedderUnavailable
from embedder.app import create_app as create_embedder_app
from tests.api import test_api as base
from tests.conftest import make_settings
from tests.heads_support import register_versions

pytestmark = [pytest.mark.db]

api_settings, api_app, checker, api = base.api_settings, base.api_app, base.checker, base.api
JSON = "application/json"
AUTH = {"Authorization": f"Bearer {base.TOKEN}"}
# Words that only an internal detail would bring into an answer.
LEAKS = ("psycopg2", "sqlalchemy", "OperationalError", "Traceback", "127.0.0.1", "/tmp", "var/")


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == JSON
    error = response.get_json()["error"]
    assert error["code"] == code and error["status"] == status, error
    assert error["message"] and error["request_id"] == response.headers["X-Request-ID"]
    text = response.get_data(as_text=True)
    assert not any(leak in text for leak in LEAKS), text
    return error


def nested(depth: int) -> bytes:
    return b'{"text": ' + b"[" * depth + b"]" * depth + b"}"


# --- defect 3: deeply nested JSON, a body that cannot be read ---------------------------------


@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_deeply_nested_json_is_400_in_predict_and_admin(api_app, pg_engine, depth):
    client = api_app.test_client()
    for path, headers in (
        ("/predict/tiny_banking", {}),
        ("/admin/models/tiny_banking/promote", AUTH),
    ):
        response = client.post(path, data=nested(depth), content_type=JSON, headers=headers)
        assert_envelope(response, 400, "malformed_request")
    base.flush(api_app)
    assert base.count_rows(pg_engine) == 0


@pytest.mark.parametrize("depth", [1_000, 50_000])
def test_deeply_nested_json_is_400_in_the_embedder(settings, engine, depth):
    client = create_embedder_app(settings, engine=engine).test_client()
    body = b'{"texts": ' + b"[" * depth + b"]" * depth + b"}"
    assert_envelope(client.post("/embed", data=body, content_type=JSON), 400, "malformed_request")


def test_javascript_constants_are_not_json(api):
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"text": "a card", "k": ' + constant + b"}"
        response = base.post(api, "/predict/tiny_banking", body)
        assert_envelope(response, 400, "malformed_request")


def test_a_chunked_body_over_the_limit_is_413_not_a_truncated_parse(api_app, pg_engine):
    limit = api_app.config["MAX_CONTENT_LENGTH"]
    body = b'{"text": "' + b"x" * limit + b'"}'
    response = api_app.test_client().post(
        "/predict/tiny_banking",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
    )
    assert_envelope(response, 413, "too_large")
    base.flush(api_app)
    assert base.count_rows(pg_engine) == 0


def test_a_chunked_body_within_the_limit_is_read_whole(api_app):
    body = json.dumps({"text": "my card has not arrived yet"}).encode()
    response = api_app.test_client().post(
        "/predict/tiny_banking",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
    )
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["label"] == "card_arrival"


class _BrokenStream:
    """What the server's chunk parser does with `Transfer-Encoding: chunked` and a bad size."""

    def read(self, size: int = -1) -> bytes:
        raise ValueError("Invalid chunk size: b'zz'")  # gunicorn raises its own InvalidChunkSize

    readline = read

    def tell(self) -> int:
        return 0

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0


def test_a_body_that_cannot_be_read_is_400(api_app):
    response = api_app.test_client().post(
        "/predict/tiny_banking",
        input_stream=_BrokenStream(),
        headers={"Content-Type": JSON, "Transfer-Encoding": "chunked"},
    )
    error = assert_envelope(response, 400, "malformed_request")
    assert "chunk size" not in error["message"]  # the parser's words stay in the log


# --- defect 6: no internal detail; bad input is not a 503 ---------------------------------------


@pytest.mark.parametrize(
    "path", ["/models/x%00y", "/models/" + "m" * 300, "/models/a%0Ab", "/models/..%2F..%2Fetc"]
)
def test_an_impossible_model_name_is_404_without_touching_the_database(api_app, path):
    # The raw client: "/models/../../etc" is no path of the spec, so the checker would refuse it.
    assert_envelope(api_app.test_client().get(path), 404, "not_found")


def test_impossible_names_are_404_everywhere(api_app, pg_engine):
    client = api_app.test_client()
    body = {"text": "a card"}
    assert_envelope(client.post("/predict/x%00y", json=body), 404, "not_found")
    for action in ("reload", "rollback"):
        response = client.post(f"/admin/models/x%00y/{action}", headers=AUTH)
        assert_envelope(response, 404, "not_found")
    promote = {"version": "v\x001"}
    response = client.post("/admin/models/tiny_banking/promote", json=promote, headers=AUTH)
    assert_envelope(response, 404, "not_found")
    base.flush(api_app)
    assert base.count_rows(pg_engine) == 0


def test_a_database_outage_is_a_generic_503(pg_cluster, tiny_versions, engine, tmp_path):
    from persistence.db import make_engine

    first = tiny_versions[0]
    database = make_engine(pg_cluster.url)
    register_versions(database, tiny_versions, promoted=first.version)
    database.dispose()
    settings = make_settings(
        database_url=pg_cluster.url,
        serving_region=first.region,
        artifacts_dir=str(first.version_dir.parent.parent.parent),
        spool_dir=str(tmp_path / "spool"),
        admin_token=base.TOKEN,
        model_refresh_s=0.2,
    )
    app = create_app(settings, embedder=engine)
    try:
        base.wait_for(lambda: app.extensions["dc.services"].store.ready, what="store ready")
        client = app.test_client()
        pg_cluster.stop()
        response = client.get("/models/tiny_banking")
        error = assert_envelope(response, 503, "database_unavailable")
        assert response.headers["Retry-After"] and "registry" in error["message"]
        response = client.post("/admin/models/tiny_banking/reload", headers=AUTH)
        assert_envelope(response, 503, "database_unavailable")
        # Predictions go on from what is loaded (their rows wait on disk).
        assert client.post("/predict/tiny_banking", json={"text": "a card"}).status_code == 200
    finally:
        close_app(app)


def test_an_unreachable_embedder_is_503_without_its_address(api_settings, tiny_versions):
    from dc.nlp.embeddings import RemoteEmbedder

    remote = RemoteEmbedder("http://127.0.0.1:9", cache_size=10, retries=0, timeout_s=1.0)
    app = create_app(api_settings, embedder=remote)
    try:
        response = app.test_client().post("/predict/tiny_banking", json={"text": "a new phrase"})
        # Unreachable from the start, its fingerprint is unknown: the model waits (not_ready).
        assert response.status_code == 503
        error = assert_envelope(response, 503, response.get_json()["error"]["code"])
        assert ":9" not in error["message"]
    finally:
        close_app(app)
    with pytest.raises(EmbedderUnavailable) as caught:
        remote.embed(["a new phrase"])
    assert "127.0.0.1" not in caught.value.message and ":9" in caught.value.detail


# --- defect 7: protocol details at the app ------------------------------------------------------


def test_405_says_which_methods_are_allowed(api_app, settings, engine):
    response = api_app.test_client().get("/predict/tiny_banking")
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert response.mimetype == JSON and response.get_json()["error"]["status"] == 405
    embedder = create_embedder_app(settings, engine=engine).test_client()
    response = embedder.get("/embed")
    assert response.status_code == 405 and "POST" in response.headers["Allow"]


@pytest.mark.parametrize("k", [3.0, 5.0, 1.0])
def test_an_integral_k_is_an_integer_as_the_spec_says(api, k):
    response = base.post(api, "/predict/tiny_banking", {"text": "my card has not arrived", "k": k})
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["top_k"]) == int(k)


@pytest.mark.parametrize("k", [14.0, 2.5, 0.0, -1.0, 1e300])
def test_a_k_out_of_range_or_fractional_is_422(api, k):
    response = base.post(api, "/predict/tiny_banking", {"text": "a card", "k": k})
    assert_envelope(response, 422, "invalid_input")


@pytest.mark.parametrize(
    "text",
    ["\u200b", "\u200b\u200c\u200d\ufeff", " \u2060 \t", "\u3164\u115f", "\u0301\u0301",
     "\u202e\u202d", "\U000e0041\U000e007f", "\u2800", "\u00ad", "\x01\x02\u200b"],
)  # fmt: skip
def test_invisible_only_text_is_refused_like_whitespace(api_app, pg_engine, text):
    response = api_app.test_client().post("/predict/tiny_banking", json={"text": text})
    error = assert_envelope(response, 422, "invalid_input")
    assert "invisible" in error["message"] or "whitespace" in error["message"]
    response = api_app.test_client().post("/predict/tiny_banking", json={"texts": ["a card", text]})
    assert_envelope(response, 422, "invalid_input")
    base.flush(api_app)
    assert base.count_rows(pg_engine) == 0


@pytest.mark.parametrize("text", ["a\u200bcard", "\u200bcard", "\u0301e card", "\u3164 card"])
def test_text_with_a_visible_character_is_classified(api, text):
    assert base.post(api, "/predict/tiny_banking", {"text": text}).status_code == 200
