"""Production reports (`dc.reports`) on a real PostgreSQL: every figure against a value computed
by hand on a small fixture, drift on a shifted and an unshifted stream, version comparison, and
the same report from SQLite (the embedded default).

The fixture, one model `m` in region `eu`, version v1, window 2026-11-10 .. 2026-11-12 (days):

    request item day  label prob  latency hit  top_k[0]  text       feedback (latest wins)
    r1      0    10   a     0.90  10      yes  a         hello a    a
    r1      1    10   a     0.80  10      no   a         other 1    b
    r2      0    10   b     0.60  20      no   b         hello b    b
    r3      0    10   c     0.95  30      yes  c         other 3    c
    r4      0    11   a     0.55  40      no   a         other 4    a (x, earlier), c (y, later)
    r5      0    11   b     0.35  100     no   c         other 5    b          (fallback answer)

plus rows the window must leave out: the next day, another model, another region.
Training distribution of v1: a 50, b 30, c 20; training texts "hello a", "hello b"; its fallback
rule: "b" under 0.4.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import insert

from dc.errors import InvalidInput
from dc.reports import ReportRequest, VersionReference, build_report
from persistence.db import make_engine, upgrade
from persistence.models import Feedback, Inference

DAY1 = datetime(2026, 11, 10, 9, tzinfo=UTC)
DAY2 = datetime(2026, 11, 11, 15, tzinfo=UTC)
START, END = datetime(2026, 11, 10, tzinfo=UTC), datetime(2026, 11, 12, tzinfo=UTC)

REFERENCE = VersionReference(
    version="v1",
    training_counts={"a": 50, "b": 30, "c": 20},
    training_texts=frozenset({"hello a", "hello b"}),
    test={"accuracy": 0.9, "weighted_f1": 0.88, "macro_f1": 0.87, "ece": None, "n": 100},
    test_f1={"a": 0.9, "b": 0.85, "c": 0.8},
    fallback_label="b",
    min_probability=0.4,  # r5 (0.35) is the rule's answer
)


def _row(rid, item, when, label, prob, latency, hit, top, text, *, model="m", region="eu", v="v1"):
    return {
        "request_id": rid,
        "item": item,
        "created_at": when,
        "model": model,
        "region": region,
        "version": v,
        "model_type": "mlp",
        "input_text": text,
        "predicted_label": label,
        "probability": prob,
        "top_k": [{"label": top, "probability": max(prob, 0.4)}],
        "latency_ms": latency,
        "cache_hit": hit,
        "embedder_fingerprint": "f" * 16,
        "client_request_id": None,
    }


FIXTURE = [
    _row("r1", 0, DAY1, "a", 0.90, 10.0, True, "a", "hello a"),
    _row("r1", 1, DAY1, "a", 0.80, 10.0, False, "a", "other 1"),
    _row("r2", 0, DAY1, "b", 0.60, 20.0, False, "b", "hello b"),
    _row("r3", 0, DAY1, "c", 0.95, 30.0, True, "c", "other 3"),
    _row("r4", 0, DAY2, "a", 0.55, 40.0, False, "a", "other 4"),
    _row("r5", 0, DAY2, "b", 0.35, 100.0, False, "c", "other 5"),
    # outside the scope
    _row("late", 0, END + timedelta(hours=1), "c", 0.9, 500.0, True, "c", "x"),
    _row("other-model", 0, DAY1, "c", 0.9, 500.0, True, "c", "x", model="n"),
    _row("other-region", 0, DAY1, "c", 0.9, 500.0, True, "c", "x", region="us"),
]


def _feedback(rid, item, label, source="api", recorded=DAY2):
    """A feedback row as `dc.feedback.record` writes it: the prediction's facts copied."""
    served = next(row for row in FIXTURE if (row["request_id"], row["item"]) == (rid, item))
    return {
        "request_id": rid,
        "item": item,
        "source": source,
        "label": label,
        "model": served["model"],
        "region": served["region"],
        "version": served["version"],
        "feedback_time": recorded,
        "recorded_at": recorded,
        "prediction_time": served["created_at"],
        "predicted_label": served["predicted_label"],
        "probability": served["probability"],
    }


FEEDBACK = [
    _feedback("r1", 0, "a"),
    _feedback("r1", 1, "b"),
    _feedback("r2", 0, "b"),
    _feedback("r3", 0, "c"),
    _feedback("r4", 0, "a", source="x", recorded=DAY2),
    _feedback("r4", 0, "c", source="y", recorded=DAY2 + timedelta(hours=1)),
    _feedback("r5", 0, "b"),
    _feedback("other-model", 0, "a"),
]


def _load(engine, rows=FIXTURE, feedback=FEEDBACK):
    with engine.begin() as connection:
        connection.execute(insert(Inference), rows)
        if feedback:
            connection.execute(insert(Feedback), feedback)


def _report(engine, **overrides):
    request = ReportRequest(
        **{"model": "m", "region": "eu", "start": START, "end": END, "granularity": "day"}
        | overrides
    )
    references = {"v1": REFERENCE}
    with engine.connect() as connection:
        return build_report(connection, request, references.get, served="v1")


@pytest.fixture
def fixture_report(pg_engine):
    _load(pg_engine)
    return _report(pg_engine)


def test_traffic_figures_match_the_hand_computed_values(fixture_report):
    traffic = fixture_report["traffic"]
    assert (traffic["requests"], traffic["texts"]) == (5, 6)
    assert traffic["cache_hit_rate"] == pytest.approx(2 / 6)
    # One latency per request: 10, 20, 30, 40, 100; linear interpolation at (n - 1) * q.
    assert traffic["latency_p50_ms"] == pytest.approx(30.0)
    assert traffic["latency_p95_ms"] == pytest.approx(40 + 0.8 * 60)
    assert traffic["latency_p99_ms"] == pytest.approx(40 + 0.96 * 60)  # 97.6
    assert traffic["by_version"] == [{"version": "v1", "requests": 5, "texts": 6}]
    day1, day2 = traffic["buckets"]
    assert (day1["start"], day1["requests"], day1["texts"]) == ("2026-11-10T00:00:00Z", 3, 4)
    assert (day2["requests"], day2["texts"]) == (2, 2)
    assert day1["latency_p50_ms"] == pytest.approx(20.0)
    assert day2["latency_p99_ms"] == pytest.approx(40 + 0.99 * 60)


def test_prediction_figures_match_the_hand_computed_values(fixture_report):
    predictions = fixture_report["predictions"]
    shares = {row["label"]: (row["count"], row["training_share"]) for row in predictions["labels"]}
    assert shares == {"a": (3, 0.5), "b": (2, 0.3), "c": (1, 0.2)}
    # PSI over the window: p = 3/6, 2/6, 1/6 against q = .5, .3, .2.
    psi = (1 / 3 - 0.3) * math.log((1 / 3) / 0.3) + (1 / 6 - 0.2) * math.log((1 / 6) / 0.2)
    assert predictions["psi"] == pytest.approx(psi)
    assert predictions["psi"] == pytest.approx(0.0095894, abs=1e-6)
    # Chi-square: expected 3, 1.8, 1.2; with 2 degrees of freedom p = exp(-statistic / 2).
    statistic = 0.2**2 / 1.8 + 0.2**2 / 1.2
    test = predictions["chi_square"]
    assert test["statistic"] == pytest.approx(statistic)
    assert test["p_value"] == pytest.approx(math.exp(-statistic / 2))
    assert test["dof"] == 2
    assert predictions["drift"] is False
    # Per day: day 1 is a 2, b 1, c 1; day 2 is a 1, b 1 and no c (floored at 1e-4).
    day1, day2 = (bucket["psi"] for bucket in predictions["buckets"])
    assert day1 == pytest.approx(-0.05 * math.log(0.25 / 0.3) + 0.05 * math.log(0.25 / 0.2))
    assert day2 == pytest.approx(0.2 * math.log(0.5 / 0.3) + (1e-4 - 0.2) * math.log(1e-4 / 0.2))
    assert predictions["mean_probability"] == pytest.approx(4.15 / 6)
    histogram = predictions["probability_histogram"]["counts"]
    assert {k: n for k, n in enumerate(histogram) if n} == {7: 1, 11: 1, 12: 1, 16: 1, 18: 1, 19: 1}
    assert predictions["fallback_rate"] == pytest.approx(1 / 6)
    assert predictions["unseen_share"] == pytest.approx(4 / 6)


def test_feedback_figures_match_the_hand_computed_values(fixture_report):
    feedback = fixture_report["feedback"]
    # r4's later label (c, from source y) wins over its earlier one (a, from x).
    assert feedback["items"] == 6
    assert feedback["coverage"] == pytest.approx(1.0)
    assert feedback["accuracy"] == pytest.approx(4 / 6)
    per_class = {row["label"]: row for row in feedback["per_class"]}
    assert per_class["a"]["precision"] == pytest.approx(1 / 3)
    assert per_class["a"]["f1"] == pytest.approx(0.5)
    assert per_class["b"]["recall"] == pytest.approx(2 / 3)
    assert per_class["b"]["f1"] == pytest.approx(0.8)
    assert per_class["c"]["f1"] == pytest.approx(2 / 3)
    assert [per_class[k]["support"] for k in "abc"] == [1, 3, 2]
    assert per_class["b"]["test_f1"] == 0.85
    assert feedback["weighted_f1"] == pytest.approx((1 * 0.5 + 3 * 0.8 + 2 * (2 / 3)) / 6)
    assert feedback["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # ECE, bins of 0.1: {.9, .95} both right; .8 wrong; .6 right; .55 wrong; .35 right.
    assert feedback["ece"] == pytest.approx((2 * 0.075 + 0.8 + 0.4 + 0.55 + 0.65) / 6)
    assert feedback["confusions"] == [
        {"true": "b", "predicted": "a", "count": 1},
        {"true": "c", "predicted": "a", "count": 1},
    ]
    assert feedback["test"]["weighted_f1"] == 0.88
    day1, day2 = feedback["buckets"]
    assert day1["items"] == 4
    assert day1["weighted_f1"] == pytest.approx((2 / 3 + 2 * (2 / 3) + 1) / 4)
    assert day2["items"] == 2


def test_a_version_filter_and_a_comparison(pg_engine):
    v2 = [
        _row(f"v2-{k}", 0, DAY2, "c", 0.7, 5.0, False, "c", f"v2 text {k}", v="v2")
        for k in range(3)
    ]
    # v2's rule is unknown here (no reference): its answers are checked against the top-k.
    v2.append(_row("v2-3", 0, DAY2, "a", 0.2, 5.0, False, "c", "v2 text 3", v="v2"))
    _load(pg_engine, FIXTURE + v2)
    report = _report(pg_engine, version="v1", compare="v2")
    assert report["traffic"]["texts"] == 6  # only v1
    comparison = report["comparison"]
    assert comparison["versions"] == ["v1", "v2"]
    v1, v2_figures = comparison["figures"]["v1"], comparison["figures"]["v2"]
    assert (v1["traffic.texts"], v2_figures["traffic.texts"]) == (6, 4)
    assert v1["feedback.weighted_f1"] == pytest.approx(report["feedback"]["weighted_f1"])
    assert v2_figures["feedback.coverage"] == 0.0
    assert (v1["predictions.fallback_rate"], v2_figures["predictions.fallback_rate"]) == (
        1 / 6,
        1 / 4,
    )
    # v2 has no reference here: its drift figures are absent, not made up.
    assert v2_figures["predictions.psi"] is None
    everything = _report(pg_engine)
    assert everything["versions"] == ["v1", "v2"]
    assert everything["traffic"]["by_version"][1] == {"version": "v2", "requests": 4, "texts": 4}


def _stream(shares, n, seed, when=DAY1):
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(shares), size=n, p=shares)
    return [
        _row(
            f"s{seed}-{k}", 0, when, f"class{label:02d}", 0.8, 10.0, False, f"class{label:02d}", "t"
        )
        for k, label in enumerate(labels)
    ]


@pytest.mark.parametrize(("shift", "drift"), [(False, False), (True, True)])
def test_drift_is_found_on_a_shifted_stream_and_not_on_an_unshifted_one(pg_engine, shift, drift):
    classes = 20
    training = np.random.default_rng(1).dirichlet(np.full(classes, 5.0))
    reference = VersionReference(
        version="v1",
        training_counts={f"class{k:02d}": round(float(p) * 10_000) for k, p in enumerate(training)},
        training_texts=frozenset(),
        test={},
        test_f1={},
    )
    served = training.copy()
    if shift:  # a new kind of traffic: a third of it goes to two classes
        served = served * (2 / 3)
        served[[3, 7]] += 1 / 6
    served = served / served.sum()
    with pg_engine.begin() as connection:
        connection.execute(insert(Inference), _stream(served, 5_000, seed=7))
    request = ReportRequest("m", "eu", START, END, "day")
    with pg_engine.connect() as connection:
        report = build_report(connection, request, {"v1": reference}.get, served="v1")
    predictions = report["predictions"]
    assert predictions["drift"] is drift
    if drift:
        assert predictions["psi"] > 0.2 and predictions["chi_square"]["p_value"] < 1e-6
    else:
        assert predictions["psi"] < 0.02


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"end": START}, "window is empty"),
        ({"granularity": "minute"}, "granularity must be one of"),
        ({"end": START + timedelta(days=40), "granularity": "hour"}, "coarser granularity"),
        ({"end": START + timedelta(days=500), "granularity": "week"}, "longer than 400 days"),
        ({"version": "v1", "compare": "v1"}, "another version"),
    ],
)
def test_a_bad_window_is_refused_with_a_message(overrides, message):
    request = ReportRequest(
        **{"model": "m", "region": "eu", "start": START, "end": END} | overrides
    )
    with pytest.raises(InvalidInput, match=message):
        request.checked()


def test_an_empty_window_has_no_figures_rather_than_made_up_ones(pg_engine):
    report = _report(pg_engine)
    assert report["traffic"]["texts"] == 0
    assert report["traffic"]["latency_p99_ms"] is None
    assert report["predictions"]["psi"] is None
    assert report["feedback"]["weighted_f1"] is None
    assert [b["texts"] for b in report["predictions"]["buckets"]] == [0, 0]


def test_hours_and_weeks_bucket_in_utc(pg_engine):
    _load(pg_engine)
    hours = _report(pg_engine, granularity="hour")
    texts = {b["start"]: b["texts"] for b in hours["traffic"]["buckets"] if b["texts"]}
    assert texts == {"2026-11-10T09:00:00Z": 4, "2026-11-11T15:00:00Z": 2}
    weeks = _report(pg_engine, granularity="week")
    # 2026-11-10 is a Tuesday: both days are in the ISO week that starts on Monday the 9th.
    assert [(b["start"], b["texts"]) for b in weeks["traffic"]["buckets"]] == [
        ("2026-11-09T00:00:00Z", 6)
    ]


def test_sqlite_gives_the_same_report_as_postgresql(pg_engine, tmp_path):
    _load(pg_engine)
    url = f"sqlite:///{tmp_path / 'dc.sqlite'}"
    upgrade(url)
    lite = make_engine(url)
    _load(lite)
    for granularity in ("hour", "day", "week"):
        on_postgres = _report(pg_engine, granularity=granularity)
        on_sqlite = _report(lite, granularity=granularity)
        for report in (on_postgres, on_sqlite):
            report.pop("generated_at")
        assert _same(on_sqlite, on_postgres)
    lite.dispose()


def _same(a, b) -> bool:
    """Equal, floats to 1e-9 (pytest.approx does not compare nested dicts of lists)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        assert len(a) == len(b)
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12)
        return True
    assert a == b
    return True


# --- scripts/report.py ----------------------------------------------------------------------------


def _version_folder(root) -> str:
    """A version folder with what a reference reads: the manifest, the training split and the
    test report (the same distribution and texts as REFERENCE)."""
    import json

    folder = root / "eu" / "m" / "v1"
    (folder / "processed").mkdir(parents=True)
    manifest = {
        "version": "v1",
        "architecture": "mlp",
        "metrics": {"test": REFERENCE.test},
        "config": {"serving": {"fallback_label": None, "min_probability": 0.0}},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    texts = {"a": "hello a", "b": "hello b"}
    rows = [
        f"{texts.get(label, f'{label} {k}') if k == 0 else f'{label} {k}'},{label}"
        for label, n in REFERENCE.training_counts.items()
        for k in range(n)
    ]
    (folder / "processed" / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    reports = folder / "models" / "mlp" / "reports"
    reports.mkdir(parents=True)
    (reports / "test_report.csv").write_text(
        "label,precision,recall,f1,support\n"
        + "".join(f"{k},0,0,{v},1\n" for k, v in REFERENCE.test_f1.items())
    )
    return folder.as_uri()


def test_the_report_script_writes_the_files_and_backs_them_up(
    pg_engine, s3_settings, tmp_path, monkeypatch
):
    from dc.backup import s3_client
    from dc.config import get_settings
    from persistence.models import ModelVersion
    from tests.script_support import load_script

    _load(pg_engine)
    uri = _version_folder(tmp_path / "artifacts")
    with pg_engine.begin() as connection:
        connection.execute(
            insert(ModelVersion),
            [
                {
                    "name": "m",
                    "region": "eu",
                    "version": "v1",
                    "status": "promoted",
                    "metrics": {},
                    "embedder_fingerprint": "f" * 16,
                    "artifact_uri": uri,
                    "config": {},
                }
            ],
        )
    for name, value in {
        "DC_S3_BUCKET": s3_settings.s3_bucket,
        "DC_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url,
        "DC_S3_PREFIX": "dc-artifacts",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    script = load_script("report")
    monkeypatch.setattr(script, "configure_logging", lambda level: None)
    out = tmp_path / "artifacts"
    argv = ["--all", "--region", "eu", "--start", "2026-11-10", "--end", "2026-11-12"]
    argv += ["--out", str(out), "--database-url", pg_engine.url.render_as_string(False)]
    try:
        assert script.main(argv) == 0
    finally:
        get_settings.cache_clear()

    folder = out / "eu" / "m" / "reports" / "20261110T0000Z_20261112T0000Z_day"
    names = sorted(path.name for path in folder.iterdir())
    assert names == sorted(
        ["report.json", "report.html"]
        + [f"{chart}.png" for chart in ("traffic", "drift", "labels", "confidence", "live_f1")]
        + [f"{table}.csv" for table in ("buckets", "labels", "per_class", "confusions")]
    )
    import json

    report = json.loads((folder / "report.json").read_text())
    assert report["reference_version"] == "v1"
    assert report["predictions"]["psi"] == pytest.approx(0.0095894, abs=1e-6)
    assert report["feedback"]["weighted_f1"] == pytest.approx((0.5 + 2.4 + 4 / 3) / 6)
    assert (folder / "traffic.png").read_bytes()[:4] == b"\x89PNG"
    assert (folder / "per_class.csv").read_text().splitlines()[0].startswith("label,precision")
    listed = s3_client(s3_settings).list_objects_v2(
        Bucket=s3_settings.s3_bucket, Prefix="dc-artifacts/eu/m/reports/"
    )
    keys = sorted(obj["Key"].rsplit("/", 1)[-1] for obj in listed["Contents"])
    assert keys == sorted(names)


def test_an_unreachable_database_is_a_503_that_tells_no_detail():
    from dc.errors import DatabaseUnavailable
    from dc.reports.service import production_report
    from persistence.db import session_factory
    from tests.conftest import make_settings

    engine = make_engine("postgresql+psycopg2://nobody@127.0.0.1:1/none")
    request = ReportRequest("m", "eu", START, END)
    with pytest.raises(DatabaseUnavailable) as raised:
        production_report(session_factory(engine), make_settings(), request)
    assert "127.0.0.1" not in raised.value.message and raised.value.retry_after_s
    assert raised.value.detail  # logged by the transport, never sent
    engine.dispose()


def test_probability_bins_are_floors_on_both_databases(pg_engine, tmp_path):
    # 0.53 * 20 = 10.6: bin 10 (PostgreSQL's integer cast alone would round it to 11); 1.0 is
    # in the last bin; 0.029 in the first.
    rows = [
        _row(f"p{k}", 0, DAY1, "a", p, 10.0, False, "a", "t")
        for k, p in enumerate((0.53, 1.0, 0.029))
    ]
    url = f"sqlite:///{tmp_path / 'bins.sqlite'}"
    upgrade(url)
    lite = make_engine(url)
    for engine in (pg_engine, lite):
        _load(engine, rows, feedback=[])
        histogram = _report(engine)["predictions"]["probability_histogram"]["counts"]
        assert {k: n for k, n in enumerate(histogram) if n} == {0: 1, 10: 1, 19: 1}
    lite.dispose()
