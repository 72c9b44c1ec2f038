"""The embedder service through its real Flask app and the real encoder (no server process)."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from dc.nlp.embeddings import BINARY_MEDIA_TYPE, vectors_from_bytes
from embedder.app import create_app
from tests.conftest import make_settings

PHRASES = ["my card has not arrived", "how do I top up by card?", "my card has not arrived"]


def post(client, body, content_type="application/json", **headers):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/embed", data=data, content_type=content_type, headers=headers)


def assert_envelope(response, status, code):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["status"] == status
    assert error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]
    return error


def test_embed_returns_the_encoders_vectors_in_input_order(client, encoder):
    response = post(client, {"texts": PHRASES})
    assert response.status_code == 200
    body = response.get_json()
    assert body["dimension"] == 384 and body["count"] == 3
    assert body["fingerprint"] == encoder.fingerprint
    vectors = np.array(body["vectors"], dtype=np.float32)
    np.testing.assert_allclose(vectors, encoder.encode(PHRASES), atol=1e-6)
    assert body["cached"] == [False, False, False]  # the repeat in one request is computed once
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_repeats_are_served_from_the_cache(client, engine):
    post(client, {"texts": PHRASES[:1]})
    response = post(client, {"texts": PHRASES})
    assert response.get_json()["cached"] == [True, False, True]
    assert response.headers["X-Embedding-Cached"] == "101"
    stats = engine.cache.stats()
    assert (stats.hits, stats.misses, stats.size) == (2, 2, 2)


def test_binary_response_matches_json(client):
    as_json = np.array(post(client, {"texts": PHRASES}).get_json()["vectors"], dtype=np.float32)
    response = post(client, {"texts": PHRASES}, Accept=BINARY_MEDIA_TYPE)
    assert response.status_code == 200 and response.mimetype == BINARY_MEDIA_TYPE
    count, dim = (
        int(response.headers["X-Embedding-Count"]),
        int(response.headers["X-Embedding-Dimension"]),
    )
    assert len(response.data) == count * dim * 4
    np.testing.assert_array_equal(vectors_from_bytes(response.data, count, dim), as_json)


def test_server_timing_reports_every_stage(client):
    timing = post(client, {"texts": PHRASES}).headers["Server-Timing"]
    assert [part.split(";")[0] for part in timing.split(", ")] == [
        "parse", "cache", "encode", "serialize", "total",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \t\n ",
        "Straße ﬁnance ｈｅｌｌｏ",
        "こんにちは 世界",
        "مرحبا",
        "👩‍👩‍👧 🇫🇷",
        "bell\x07 nul\x00 zwsp\u200b",
        "e\u0301",
    ],
)
def test_odd_unicode_is_embedded(client, encoder, text):
    response = post(client, {"texts": [text]})
    assert response.status_code == 200
    np.testing.assert_allclose(
        response.get_json()["vectors"][0], encoder.encode([text])[0], atol=1e-6
    )


JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
TOO_LONG = json.dumps({"texts": ["x" * 501]}).encode()
TOO_MANY = json.dumps({"texts": ["a"] * 33}).encode()
BAD_BODIES = [
    ("not json", b"{texts: nope", JSON, 400, "malformed_request"),
    ("not utf-8", b'{"texts": ["\xff\xfe"]}', JSON, 400, "malformed_request"),
    ("wrong content type", b'{"texts": ["a"]}', "text/plain", 415, "unsupported_media_type"),
    ("form content type", b"texts=a", FORM, 415, "unsupported_media_type"),
    ("no content type", b'{"texts": ["a"]}', None, 415, "unsupported_media_type"),
    ("not an object", b'["a"]', JSON, 422, "invalid_input"),
    ("missing field", b'{"text": "a"}', JSON, 422, "invalid_input"),
    ("not a list", b'{"texts": "a"}', JSON, 422, "invalid_input"),
    ("empty list", b'{"texts": []}', JSON, 422, "invalid_input"),
    ("non-string item", b'{"texts": ["a", 3]}', JSON, 422, "invalid_input"),
    ("null item", b'{"texts": [null]}', JSON, 422, "invalid_input"),
    ("unpaired surrogate", b'{"texts": ["\\ud800"]}', JSON, 422, "invalid_input"),
    ("text too long", TOO_LONG, JSON, 422, "invalid_input"),
    ("too many texts", TOO_MANY, JSON, 413, "too_large"),
]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [case[1:] for case in BAD_BODIES],
    ids=[case[0] for case in BAD_BODIES],
)
def test_bad_input_gets_a_4xx_envelope(client, body, content_type, status, code):
    response = client.post(
        "/embed", data=body, headers={"Content-Type": content_type} if content_type else {}
    )
    assert_envelope(response, status, code)


def test_a_huge_body_is_refused_before_parsing(client, app):
    huge = b'{"texts": ["' + b"x" * (app.config["MAX_CONTENT_LENGTH"] + 1) + b'"]}'
    assert_envelope(post(client, huge), 413, "too_large")


def test_unknown_route_and_wrong_method_use_the_envelope(client):
    assert_envelope(client.get("/nope"), 404, "not_found")
    assert_envelope(client.get("/embed"), 405, "method_not_allowed")


def test_request_id_is_the_servers_and_a_sane_client_id_is_echoed_beside_it(client):
    given = post(client, {"texts": ["a"]}, **{"X-Request-ID": "abc-123"})
    assert given.headers["X-Client-Request-ID"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", given.headers["X-Request-ID"])  # 128 random bits
    bad = post(client, {"texts": ["a"]}, **{"X-Request-ID": "bad id; drop table!"})
    assert "X-Client-Request-ID" not in bad.headers
    another = post(client, {"texts": ["a"]}).headers["X-Request-ID"]
    ids = {given.headers["X-Request-ID"], bad.headers["X-Request-ID"], another}
    assert len(ids) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


def test_health_ready_info(client, encoder, settings):
    assert client.get("/health").get_json() == {"status": "ok"}
    assert client.get("/ready").get_json()["fingerprint"] == encoder.fingerprint
    info = client.get("/info").get_json()
    assert info["model"] == encoder.name and info["dimension"] == 384
    assert info["fingerprint"] == encoder.fingerprint
    assert info["cache"]["maxsize"] == settings.cache_size
    assert info["batching"] == {
        "max_batch_size": settings.max_batch_size,
        "batch_wait_ms": settings.batch_wait_ms,
        "workers": settings.encoder_workers,
        "max_queue": settings.max_queue,
        "queue_depth": 0,
    }
    assert info["limits"]["max_texts_per_request"] == settings.max_texts_per_request


def test_metrics_count_requests_batches_and_cache(client):
    post(client, {"texts": PHRASES})
    post(client, {"texts": PHRASES})
    post(client, {"texts": []})
    text = client.get("/metrics").get_data(as_text=True)
    assert 'embedder_requests_total{endpoint="/embed",status="200"} 2.0' in text
    assert 'embedder_requests_total{endpoint="/embed",status="422"} 1.0' in text
    assert "embedder_cache_hits_total 3.0" in text
    assert "embedder_cache_misses_total 3.0" in text
    assert "embedder_cache_size 2.0" in text
    assert "embedder_batch_size_count 1.0" in text
    assert 'embedder_stage_seconds_count{stage="encode"} 2.0' in text
    assert "embedder_queue_depth 0.0" in text
    assert "embedder_ready 1.0" in text


@pytest.mark.slow  # the failing load imports TensorFlow
def test_not_ready_until_loaded_and_a_failed_load_says_so_and_logs_why(tmp_path, caplog):
    app = create_app(make_settings(embedder_handle=str(tmp_path / "missing-model")))
    client = app.test_client()
    assert client.get("/health").status_code == 200
    deadline = time.monotonic() + 60
    while app.extensions["dc.engine"].error is None and time.monotonic() < deadline:
        time.sleep(0.1)
    error = assert_envelope(client.get("/ready"), 503, "not_ready")
    # The caller learns that loading failed; the path (an internal detail) is in the log only.
    assert "failed" in error["message"] and "missing-model" not in error["message"]
    assert "missing-model" in caplog.text
    response = post(client, {"texts": ["a"]})
    assert_envelope(response, 503, "not_ready")
    assert response.headers["Retry-After"] == "1"
    assert "embedder_ready 0.0" in client.get("/metrics").get_data(as_text=True)
