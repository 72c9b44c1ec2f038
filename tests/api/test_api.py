"""The prediction API through its real app: real encoder, real heads, real PostgreSQL.

Every response a test here receives is validated against the app's own `/openapi.json`
(`ValidatingClient`). The heads are the session's two tiny trained versions of "tiny_banking"
(`tests/heads_support.py`), registered in the test's PostgreSQL database.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from openapi_core.exceptions import OpenAPIError
from sqlalchemy import func, select

from api.app import close_app, create_app
from api.openapi import described_rules
from persistence.models import Feedback, Inference
from tests.conftest import make_settings
from tests.heads_support import INTENTS, register_versions
from tests.openapi_support import SpecChecker, ValidatingClient

pytestmark = [pytest.mark.db]

JSON = "application/json"
TOKEN = "test-admin-token"
FEEDBACK_TOKEN = "test-feedback-token"


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def wait_for(condition, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.05)


def count_rows(engine, **where) -> int:
    query = select(func.count()).select_from(Inference)
    for column, value in where.items():
        query = query.where(getattr(Inference, column) == value)
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


@pytest.fixture
def api_settings(pg_engine, tiny_versions, tmp_path):
    first = tiny_versions[0]
    register_versions(pg_engine, tiny_versions, promoted=first.version)
    return make_settings(
        database_url=url_of(pg_engine),
        serving_region=first.region,
        artifacts_dir=str(first.version_dir.parent.parent.parent),
        spool_dir=str(tmp_path / "spool"),
        admin_token=TOKEN,
        feedback_token=FEEDBACK_TOKEN,
        max_feedback_items=5,
        model_refresh_s=0.2,
        log_flush_interval_ms=20,
        max_top_k=5,
    )


@pytest.fixture
def api_app(api_settings, engine):
    app = create_app(api_settings, embedder=engine)
    services = app.extensions["dc.services"]
    wait_for(lambda: services.store.ready, what="model store ready")
    yield app
    close_app(app)


@pytest.fixture
def checker(api_app) -> SpecChecker:
    spec = api_app.test_client().get("/openapi.json").get_json()
    return SpecChecker(spec)


@pytest.fixture
def api(api_app, checker) -> ValidatingClient:
    return ValidatingClient(api_app.test_client(), checker)


def flush(app) -> None:
    assert app.extensions["dc.services"].inference_log.flush(timeout_s=20)


def post(api, path, body, content_type=JSON, **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body)
    return api.post(path, data=data, content_type=content_type, **kwargs)


# --- predictions ----------------------------------------------------------------------------------


def test_a_text_is_classified_and_logged(api, api_app, pg_engine, tiny_versions):
    response = post(api, "/predict/tiny_banking", {"text": "my card has not arrived yet"})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    first = tiny_versions[0]
    assert body["label"] == "card_arrival"
    assert body["model"] == "tiny_banking" and body["version"] == first.version
    assert body["model_type"].startswith("mlp")
    assert 0 < body["probability"] <= 1
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert len(body["top_k"]) == 3  # the default k
    assert body["top_k"][0] == {"label": "card_arrival", "probability": body["probability"]}
    assert [s["probability"] for s in body["top_k"]] == sorted(
        (s["probability"] for s in body["top_k"]), reverse=True
    )
    assert body["cached"] is False
    assert "embed;dur=" in response.headers["Server-Timing"]

    flush(api_app)
    with pg_engine.connect() as connection:
        row = connection.execute(select(Inference)).one()
    assert row.request_id == body["request_id"] and row.item == 0
    assert row.input_text == "my card has not arrived yet"
    assert row.predicted_label == "card_arrival" and row.version == first.version
    assert row.probability == pytest.approx(body["probability"])
    assert row.top_k == body["top_k"]
    assert row.cache_hit is False and row.latency_ms > 0
    assert row.model_type == body["model_type"] and row.region == first.region

    again = post(api, "/predict/tiny_banking", {"text": "my card has not arrived yet", "k": 1})
    assert again.get_json()["cached"] is True
    assert len(again.get_json()["top_k"]) == 1


def test_a_batch_gives_one_prediction_and_one_row_per_text(api, api_app, pg_engine):
    texts = ["I lost my card", "what is the exchange rate", "my top up failed", "I lost my card"]
    response = post(api, "/predict/tiny_banking", {"texts": texts, "k": 5})
    assert response.status_code == 200
    predictions = response.get_json()["predictions"]
    assert len(predictions) == len(texts)
    assert all(len(p["top_k"]) == 5 for p in predictions)
    assert predictions[0] == predictions[3] | {"cached": predictions[0]["cached"]}
    flush(api_app)
    request_id = response.get_json()["request_id"]
    with pg_engine.connect() as connection:
        rows = connection.execute(
            select(Inference.item, Inference.input_text).order_by(Inference.item)
        ).all()
    assert [(i, t) for i, t in rows] == list(enumerate(texts))
    assert count_rows(pg_engine, request_id=request_id) == len(texts)


def test_a_repeated_client_request_id_gives_one_row_per_answer(api, api_app, pg_engine):
    """The caller's X-Request-ID is echoed and stored beside the key, never used as the key:
    three requests with the same one are three rows under three server-made ids."""
    headers = {"X-Request-ID": "client-chosen-id-42"}
    ids = []
    for _ in range(3):
        response = post(api, "/predict/tiny_banking", {"text": "I lost my card"}, headers=headers)
        body = response.get_json()
        assert body["request_id"] == response.headers["X-Request-ID"] != "client-chosen-id-42"
        assert body["client_request_id"] == "client-chosen-id-42"
        assert response.headers["X-Client-Request-ID"] == "client-chosen-id-42"
        ids.append(body["request_id"])
    flush(api_app)
    assert len(set(ids)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    with pg_engine.connect() as connection:
        rows = connection.execute(select(Inference.request_id, Inference.client_request_id)).all()
    assert sorted(rows) == sorted((i, "client-chosen-id-42") for i in ids)


def test_a_client_cannot_claim_the_key_of_another_request(api, api_app, pg_engine):
    """Sending a server id (seen in an answer, or guessed) as X-Request-ID takes nothing from
    anyone: every answer still gets its own row, and the row already stored is untouched."""
    first = post(api, "/predict/tiny_banking", {"text": "I lost my card"}).get_json()
    assert "client_request_id" not in first  # none sent: none echoed
    claimed = {"X-Request-ID": first["request_id"]}
    again = post(api, "/predict/tiny_banking", {"text": "my top up failed"}, headers=claimed)
    assert again.get_json()["request_id"] not in (first["request_id"], "")
    insane = post(
        api, "/predict/tiny_banking", {"text": "my top up failed"}, headers={"X-Request-ID": "a b"}
    )
    assert "X-Client-Request-ID" not in insane.headers
    assert "client_request_id" not in insane.get_json()
    flush(api_app)
    with pg_engine.connect() as connection:
        rows = dict(
            connection.execute(
                select(Inference.request_id, Inference.input_text).where(Inference.item == 0)
            ).all()
        )
        clients = dict(
            connection.execute(select(Inference.request_id, Inference.client_request_id)).all()
        )
    assert rows == {
        first["request_id"]: "I lost my card",
        again.get_json()["request_id"]: "my top up failed",
        insane.get_json()["request_id"]: "my top up failed",
    }
    assert clients[again.get_json()["request_id"]] == first["request_id"]
    assert clients[first["request_id"]] is None and clients[insane.get_json()["request_id"]] is None


@pytest.mark.parametrize(
    "text",
    ["Straße ﬁnance ｈｅｌｌｏ card", "こんにちは カード", "مرحبا بطاقة", "👩‍👩‍👧 card 🇫🇷",
     "bell\x07 zwsp\u200b card", "e\u0301 card", "x" * 500],
)  # fmt: skip
def test_odd_unicode_is_classified_and_logged_verbatim(api, api_app, pg_engine, text):
    response = post(api, "/predict/tiny_banking", {"text": text})
    assert response.status_code == 200
    flush(api_app)
    with pg_engine.connect() as connection:
        assert connection.execute(select(Inference.input_text)).scalar_one() == text


# --- bad input: always a 4xx with the envelope, never a 500, never a row --------------------------

TOO_MANY = {"texts": ["a card"] * 33}
BAD_REQUESTS = [
    ("no body", b"", JSON, 400, "malformed_request"),
    ("not json", b"{text: nope", JSON, 400, "malformed_request"),
    ("not utf-8", b'{"text": "\xff\xfe"}', JSON, 400, "malformed_request"),
    ("wrong content type", b'{"text": "a card"}', "text/plain", 415, "unsupported_media_type"),
    ("no content type", b'{"text": "a card"}', None, 415, "unsupported_media_type"),
    ("not an object", b'["a card"]', JSON, 422, "invalid_input"),
    ("empty object", b"{}", JSON, 422, "invalid_input"),
    ("empty text", {"text": ""}, JSON, 422, "invalid_input"),
    ("whitespace text", {"text": " \t\n "}, JSON, 422, "invalid_input"),
    ("ideographic space", {"text": "\u3000\u2003"}, JSON, 422, "invalid_input"),
    ("null text", {"text": None}, JSON, 422, "invalid_input"),
    ("number text", {"text": 42}, JSON, 422, "invalid_input"),
    ("list as text", {"text": ["a card"]}, JSON, 422, "invalid_input"),
    ("text and texts", {"text": "a card", "texts": ["a card"]}, JSON, 422, "invalid_input"),
    ("texts not a list", {"texts": "a card"}, JSON, 422, "invalid_input"),
    ("empty texts", {"texts": []}, JSON, 422, "invalid_input"),
    ("a blank in texts", {"texts": ["a card", "  "]}, JSON, 422, "invalid_input"),
    ("a number in texts", {"texts": ["a card", 7]}, JSON, 422, "invalid_input"),
    ("text over the limit", {"text": "x" * 501}, JSON, 422, "invalid_input"),
    ("too many texts", TOO_MANY, JSON, 413, "too_large"),
    ("huge body", b'{"text": "' + b"x" * 300_000 + b'"}', JSON, 413, "too_large"),
    ("unpaired surrogate", b'{"text": "card \\ud800"}', JSON, 422, "invalid_input"),
    ("NUL character", {"text": "card\x00 lost"}, JSON, 422, "invalid_input"),
    ("unknown field", {"text": "a card", "lang": "en"}, JSON, 422, "invalid_input"),
    ("k zero", {"text": "a card", "k": 0}, JSON, 422, "invalid_input"),
    ("k over max", {"text": "a card", "k": 6}, JSON, 422, "invalid_input"),
    ("k a string", {"text": "a card", "k": "3"}, JSON, 422, "invalid_input"),
    ("k a boolean", {"text": "a card", "k": True}, JSON, 422, "invalid_input"),
    ("k a float", {"text": "a card", "k": 2.5}, JSON, 422, "invalid_input"),
]


@pytest.mark.parametrize(
    "body, content_type, status, code", [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)  # fmt: skip
def test_bad_input_gets_a_clear_4xx(api, api_app, pg_engine, body, content_type, status, code):
    response = post(api, "/predict/tiny_banking", body, content_type=content_type)
    assert response.status_code == status, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == code and error["status"] == status
    assert error["message"] and error["request_id"] == response.headers["X-Request-ID"]
    flush(api_app)
    assert count_rows(pg_engine) == 0


def test_an_unknown_model_is_404_naming_the_served_ones(api):
    response = post(api, "/predict/no_such_model", {"text": "a card"})
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "not_found" and "tiny_banking" in error["message"]


def test_wrong_method_and_unknown_path_use_the_envelope(api_app):
    client = api_app.test_client()  # these paths and methods are not in the spec on purpose
    for response, status in ((client.get("/predict/tiny_banking"), 405), (client.get("/x"), 404)):
        assert response.status_code == status
        assert response.get_json()["error"]["status"] == status


# --- models, operations, OpenAPI ---------------------------------------------------------------


def test_models_describe_the_served_version(api, tiny_versions, engine):
    listing = api.get("/models").get_json()
    assert listing["embedder_fingerprint"] == engine.fingerprint
    (model,) = listing["models"]
    assert model["name"] == "tiny_banking" and model["status"] == "serving"
    assert model["version"] == tiny_versions[0].version
    detail = api.get("/models/tiny_banking").get_json()
    assert {v["version"] for v in detail["versions"]} == {v.version for v in tiny_versions}
    assert detail["embedder_fingerprint"] == engine.fingerprint
    assert "accuracy" in detail["metrics"]
    assert api.get("/models/nope").status_code == 404


def test_health_ready_and_metrics(api):
    assert api.get("/health").get_json() == {"status": "ok"}
    ready = api.get("/ready").get_json()
    assert ready["status"] == "ready" and ready["models"] == ["tiny_banking"]
    post(api, "/predict/tiny_banking", {"text": "I lost my card"})
    post(api, "/predict/nope", {"text": "I lost my card"})
    text = api.get("/metrics").get_data(as_text=True)
    assert (
        'api_requests_total{endpoint="/predict/<model>",model="tiny_banking",status="200"} 1.0'
        in text
    )
    assert 'model="unknown",status="404"' in text
    assert 'api_inference_log_rows_total{event="enqueued"} 1.0' in text
    assert 'api_stage_seconds_count{stage="embed"} 1.0' in text
    assert 'api_embedding_cache_total{result="miss"} 1.0' in text


def test_every_route_is_described_and_the_spec_is_valid(api_app, checker):
    from openapi_spec_validator import validate

    validate(checker.spec)
    rules = {
        (rule.rule, method)
        for rule in api_app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert rules == described_rules()


def test_the_checker_rejects_a_response_that_breaks_the_spec(api_app, checker):
    response = api_app.test_client().get("/health")
    response.set_data(b'{"status": "maybe"}')
    with pytest.raises(OpenAPIError):
        checker.check_werkzeug(response)


# --- admin ---------------------------------------------------------------------------------------


def admin(api, action, model="tiny_banking", token=TOKEN, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if body is None:
        return api.post(f"/admin/models/{model}/{action}", headers=headers)
    return post(api, f"/admin/models/{model}/{action}", body, headers=headers)


@pytest.mark.parametrize("token", [None, "wrong-token", ""])
def test_admin_calls_without_the_token_get_401(api, token):
    for action in ("reload", "rollback"):
        response = admin(api, action, token=token)
        assert response.status_code == 401
        assert response.get_json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert admin(api, "promote", token=token, body={"version": "x"}).status_code == 401


def test_admin_is_off_without_a_configured_token(api_settings, engine, checker):
    app = create_app(api_settings.model_copy(update={"admin_token": ""}), embedder=engine)
    try:
        response = ValidatingClient(app.test_client(), checker).post(
            "/admin/models/tiny_banking/reload", headers={"Authorization": "Bearer "}
        )
        assert response.status_code == 403
    finally:
        close_app(app)


def test_promote_rollback_and_reload_change_the_served_version(api, tiny_versions):
    first, second = tiny_versions[0].version, tiny_versions[1].version

    def served() -> str:
        return post(api, "/predict/tiny_banking", {"text": "I lost my card"}).get_json()["version"]

    assert served() == first
    promoted = admin(api, "promote", body={"version": second, "force": True})
    assert promoted.status_code == 200, promoted.get_json()
    assert promoted.get_json()["version"] == second
    assert served() == second
    rolled = admin(api, "rollback")
    assert rolled.status_code == 200 and rolled.get_json()["version"] == first
    assert served() == first
    reloaded = admin(api, "reload")
    assert reloaded.status_code == 200 and reloaded.get_json()["version"] == first
    assert admin(api, "promote", body={"version": "19990101T000000Z"}).status_code == 404
    assert admin(api, "promote", body={"version": 5}).status_code == 422
    assert admin(api, "rollback", model="nope").status_code == 404


def test_a_head_of_another_embedder_is_refused(
    pg_engine, tiny_versions, api_settings, engine, checker, tmp_path
):
    from tests.heads_support import copy_with_fingerprint

    foreign = copy_with_fingerprint(tiny_versions[0], "0" * 16, tmp_path / "foreign")
    register_versions(pg_engine, [foreign], promoted=foreign.version)
    app = create_app(api_settings, embedder=engine)
    try:
        services = app.extensions["dc.services"]
        wait_for(lambda: services.store.ready, what="model store ready")
        api = ValidatingClient(app.test_client(), checker)
        response = post(api, f"/predict/{foreign.name}", {"text": "I lost my card"})
        assert response.status_code == 409
        assert response.get_json()["error"]["code"] == "embedder_mismatch"
        statuses = {m["name"]: m["status"] for m in api.get("/models").get_json()["models"]}
        assert statuses[foreign.name] == "refused"
    finally:
        close_app(app)


# --- feedback ------------------------------------------------------------------------------------


def feedback(api, body, token=FEEDBACK_TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return post(api, "/feedback", body, headers=headers)


def served(api, api_app, texts) -> str:
    """Predict `texts` (one request) and wait for their rows: the request id."""
    response = post(api, "/predict/tiny_banking", {"texts": texts})
    assert response.status_code == 200, response.get_json()
    flush(api_app)
    return response.get_json()["request_id"]


def feedback_rows(engine) -> list[tuple]:
    with engine.connect() as connection:
        return sorted(
            connection.execute(
                select(
                    Feedback.request_id,
                    Feedback.item,
                    Feedback.source,
                    Feedback.label,
                    Feedback.model,
                    Feedback.version,
                )
            ).all()
        )


def test_feedback_is_stored_once_per_prediction_and_source(api, api_app, pg_engine, tiny_versions):
    rid = served(api, api_app, ["my card has not arrived yet"])
    version = tiny_versions[0].version
    one = {"request_id": rid, "item": 0, "label": "card_arrival"}

    first = feedback(api, one)
    assert first.status_code == 200, first.get_json()
    assert first.get_json() == {
        **one,
        "source": "api",
        "model": "tiny_banking",
        "version": version,
        "status": "created",
    }
    assert feedback(api, one).get_json()["status"] == "unchanged"  # idempotent
    assert feedback_rows(pg_engine) == [(rid, 0, "api", "card_arrival", "tiny_banking", version)]

    other_label = next(label for label in INTENTS if label != "card_arrival")
    changed = feedback(api, {**one, "label": other_label})
    assert changed.get_json()["status"] == "updated"  # the same source changed its mind
    reviewer = feedback(api, {**one, "source": "reviewer", "time": "2026-12-01T10:00:00+01:00"})
    assert reviewer.get_json()["status"] == "created"  # another source: kept beside it
    assert feedback_rows(pg_engine) == [
        (rid, 0, "api", other_label, "tiny_banking", version),
        (rid, 0, "reviewer", "card_arrival", "tiny_banking", version),
    ]


def test_feedback_refuses_unknown_predictions_and_foreign_labels(api, api_app, pg_engine):
    rid = served(api, api_app, ["my card has not arrived yet"])
    unknown = feedback(api, {"request_id": "0" * 32, "item": 0, "label": "card_arrival"})
    assert unknown.status_code == 404
    assert unknown.get_json()["error"]["items"][0]["code"] == "not_found"
    beyond = feedback(api, {"request_id": rid, "item": 1, "label": "card_arrival"})
    assert beyond.status_code == 404  # the request had one text
    foreign = feedback(api, {"request_id": rid, "item": 0, "label": "no_such_intent"})
    assert foreign.status_code == 422
    assert "not a class of tiny_banking" in foreign.get_json()["error"]["items"][0]["message"]
    assert feedback_rows(pg_engine) == []


def test_a_feedback_batch_is_all_or_nothing(api, api_app, pg_engine):
    rid = served(api, api_app, ["my card has not arrived yet", "how do I top up my account"])
    good = [
        {"request_id": rid, "item": 0, "label": "card_arrival"},
        {"request_id": rid, "item": 1, "label": "card_arrival", "source": "crm"},
    ]
    bad = [
        *good,
        {"request_id": rid, "item": 0, "label": "no_such_intent"},
        {"request_id": "f" * 32, "item": 0, "label": "card_arrival"},
        good[0],  # twice in one batch
    ]
    refused = feedback(api, {"items": bad})
    assert refused.status_code == 422
    problems = refused.get_json()["error"]["items"]
    assert [(p["index"], p["code"]) for p in problems] == [
        (2, "invalid_input"),
        (3, "not_found"),
        (4, "invalid_input"),
    ]
    assert feedback_rows(pg_engine) == []  # nothing of a refused batch

    accepted = feedback(api, {"items": good})
    assert accepted.status_code == 200, accepted.get_json()
    assert [item["status"] for item in accepted.get_json()["items"]] == ["created", "created"]
    assert len(feedback_rows(pg_engine)) == 2


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"request_id": "a", "item": -1, "label": "x"}, 422),
        ({"request_id": "a", "item": 0, "label": ""}, 422),
        ({"request_id": "a", "item": 0, "label": "x", "extra": 1}, 422),
        ({"request_id": "a", "item": 0, "label": "x", "time": "2026-12-01T10:00:00"}, 422),
        ({"request_id": "a", "item": True, "label": "x"}, 422),
        ({"items": []}, 422),
        ({"items": [{"request_id": "a", "item": 0, "label": "x"}] * 6}, 413),
        ([1, 2], 422),
    ],
)
def test_bad_feedback_gets_a_clear_4xx(api, pg_engine, body, status):
    response = feedback(api, body)
    assert response.status_code == status, response.get_json()
    assert set(response.get_json()["error"]) >= {"code", "message", "status", "request_id"}


def test_feedback_needs_its_own_token(api, api_settings, engine, checker):
    body = {"request_id": "a", "item": 0, "label": "x"}
    assert feedback(api, body, token=None).status_code == 401
    assert feedback(api, body, token=TOKEN).status_code == 401  # the admin token is not it
    app = create_app(api_settings.model_copy(update={"feedback_token": ""}), embedder=engine)
    try:
        off = feedback(ValidatingClient(app.test_client(), checker), body)
        assert off.status_code == 403
        assert "DC_FEEDBACK_TOKEN" in off.get_json()["error"]["message"]
    finally:
        close_app(app)


# --- reports and the dashboard --------------------------------------------------------------------


def test_a_report_reads_back_what_was_served_and_its_feedback(api, api_app, tiny_versions):
    texts = ["my card has not arrived yet", "I lost my card", "my card has not arrived yet"]
    rid = served(api, api_app, texts)
    served(api, api_app, ["what is the exchange rate"])
    assert feedback(api, {"request_id": rid, "item": 0, "label": "card_arrival"}).status_code == 200

    response = api.get("/reports/tiny_banking?days=1&granularity=hour")
    assert response.status_code == 200, response.get_json()
    report = response.get_json()
    version = tiny_versions[0].version
    assert (report["served_version"], report["reference_version"]) == (version, version)
    assert (report["traffic"]["requests"], report["traffic"]["texts"]) == (2, 4)
    assert len(report["window"]["buckets"]) == 24
    predictions = report["predictions"]
    assert sum(label["count"] for label in predictions["labels"]) == 4
    # The reference is the served version's own files: its training distribution is there.
    assert all(label["training_share"] is not None for label in predictions["labels"])
    assert predictions["psi"] is not None and 0 <= predictions["unseen_share"] <= 1
    assert report["feedback"]["items"] == 1
    assert report["feedback"]["coverage"] == pytest.approx(1 / 4)
    assert report["feedback"]["test"]["weighted_f1"] is not None


@pytest.mark.parametrize(
    ("query", "status", "fragment"),
    [
        ("?days=0", 422, "'days' must be an integer"),
        ("?days=7&start=2026-11-01", 422, "not both"),
        ("?start=yesterday", 422, "ISO 8601"),
        ("?start=2026-11-02&end=2026-11-01", 422, "window is empty"),
        ("?granularity=minute", 422, "granularity must be one of"),
        ("?days=60&granularity=hour", 422, "coarser granularity"),
        ("?end=0001-01-02", 422, "too early"),
        ("?window=7d", 422, "unknown parameter"),
        ("?days=1&days=2", 422, "more than once"),
        ("?version=" + "v" * 41, 422, "at most 40 characters"),
    ],
)
def test_a_bad_report_query_gets_a_clear_4xx(api, query, status, fragment):
    for path in ("/reports/tiny_banking", "/dashboard/tiny_banking"):
        response = api.get(path + query)
        assert response.status_code == status, (path, response.get_json())
        assert fragment in response.get_json()["error"]["message"]


def test_a_report_of_an_unknown_model_is_404(api):
    for path in ("/reports/no_such_model", "/dashboard/no_such_model"):
        response = api.get(path)
        assert response.status_code == 404
        assert response.get_json()["error"]["code"] == "not_found"


def test_the_dashboard_pages_are_self_contained_html(api, api_app):
    served(api, api_app, ["my card has not arrived yet"])
    index = api.get("/dashboard")
    assert index.status_code == 200
    assert index.mimetype == "text/html"
    page = index.get_data(as_text=True)
    assert 'href="/dashboard/tiny_banking"' in page
    model = api.get("/dashboard/tiny_banking?days=2")
    assert model.status_code == 200
    html = model.get_data(as_text=True)
    assert html.count("<svg") == 5
    assert "default-src 'none'" in model.headers["Content-Security-Policy"]
    # Nothing from another origin, no script: the page works where the API is all there is.
    assert "<script" not in html
    assert re.findall(r"(?:href|src)=\"(?!/|#)", html) == []  # no link to another origin
