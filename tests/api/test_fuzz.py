"""Property-based bodies (hypothesis) against the real apps, in process.

Whatever the body, the answer is never a 5xx: a 200 that follows `/openapi.json`, or a 4xx in
the one envelope. The prediction API runs on the real encoder, tiny heads and PostgreSQL (the
fixtures of `tests/api/test_api.py`); the embedder on the real encoder. Examples are bounded per
property; on CI (`CI` set) the generation is derandomized, so a failure reproduces exactly.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedder.app import create_app as create_embedder_app
from tests.api import test_api as base

pytestmark = [pytest.mark.db]

api_settings, api_app, checker, api = base.api_settings, base.api_app, base.checker, base.api
JSON = "application/json"

FUZZ = settings(
    max_examples=int(os.environ.get("DC_FUZZ_EXAMPLES", "120")),
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)

# Any JSON document: scalars, lists and objects nested a few levels.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)
# Mostly the fields the endpoint reads, with values of any type.
predict_bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "text": st.one_of(st.text(max_size=600), json_values),
            "texts": st.one_of(st.lists(st.text(max_size=60), max_size=40), json_values),
            "k": st.one_of(st.integers(-3, 30), st.floats(-2, 30), json_values),
        },
    ),
)


def assert_sane(response) -> None:
    """Never a 5xx; an error is the envelope with its own status."""
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400 and response.request.method != "HEAD":
        assert response.mimetype == "application/json"
        error = response.get_json()["error"]
        assert error["status"] == response.status_code
        assert error["code"] and error["message"] and error["request_id"]


@FUZZ
@given(body=predict_bodies)
def test_any_json_body_gets_a_200_or_a_4xx(api, body):
    response = api.post(
        "/predict/tiny_banking", data=json.dumps(body), content_type="application/json"
    )
    assert_sane(response)
    if response.status_code == 200:
        answer = response.get_json()
        predictions = answer.get("predictions", [answer])
        for prediction in predictions:
            assert 0.0 <= prediction["probability"] <= 1.0
            ranked = [entry["probability"] for entry in prediction["top_k"]]
            assert ranked == sorted(ranked, reverse=True)


# Feedback: the fields it reads with any values, single or in a batch.
feedback_items = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "request_id": st.one_of(st.text(max_size=70), json_values),
            "item": st.one_of(st.integers(-(2**40), 2**40), json_values),
            "label": st.one_of(st.sampled_from(["card_arrival", "other"]), st.text(max_size=30)),
            "source": st.one_of(st.text(max_size=110), json_values),
            "time": st.one_of(st.text(max_size=30), st.just("2026-12-01T10:00:00Z"), json_values),
        },
    ),
)
feedback_bodies = st.one_of(
    feedback_items, st.fixed_dictionaries({"items": st.lists(feedback_items, max_size=7)})
)


@FUZZ
@given(body=feedback_bodies)
def test_any_feedback_body_gets_a_200_or_a_4xx(api, body):
    response = api.post(
        "/feedback",
        data=json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {base.FEEDBACK_TOKEN}"},
    )
    assert_sane(response)


@FUZZ
@given(text=st.text(max_size=520))
def test_any_text_is_classified_or_refused_with_422(api, text):
    response = api.post("/predict/tiny_banking", json={"text": text})
    assert_sane(response)
    assert response.status_code in (200, 422), response.get_json()


@FUZZ
@given(data=st.binary(max_size=300))
def test_any_bytes_get_a_4xx_unless_they_are_a_valid_request(api_app, data):
    response = api_app.test_client().post(
        "/predict/tiny_banking", data=data, content_type="application/json"
    )
    assert_sane(response)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    path=st.sampled_from(["/predict/", "/models/", "/admin/models/", "/"]),
    tail=st.text(max_size=30),
    body=st.binary(max_size=50),
)
def test_any_method_and_path_is_never_a_5xx(api_app, method, path, tail, body):
    from urllib.parse import quote

    response = api_app.test_client().open(
        path + quote(tail, safe=""), method=method, data=body, content_type="application/json"
    )
    assert_sane(response)
    if response.status_code == 405:
        assert response.headers.get("Allow")


@pytest.fixture
def embedder_client(settings, engine):
    return create_embedder_app(settings, engine=engine).test_client()


@FUZZ
@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries({"texts": st.lists(st.text(max_size=80), min_size=1, max_size=8)}),
    )
)
def test_the_embedder_answers_any_body_with_vectors_or_a_4xx(embedder_client, body):
    response = embedder_client.post(
        "/embed", data=json.dumps(body), content_type="application/json"
    )
    assert_sane(response)
    if response.status_code == 200:
        answer = response.get_json()
        assert answer["count"] == len(body["texts"]) == len(answer["vectors"])
