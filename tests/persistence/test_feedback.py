"""Ground truth (`dc.feedback`): the CSV reader, and the bulk loader on real PostgreSQL.

The API's POST /feedback is tested with the app in tests/api/test_api.py; here the same
`record` is reached through `scripts/load_feedback.py`, as an operator would load a CSV.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select

from dc import feedback
from dc.errors import DataError
from persistence.db import session_factory
from persistence.models import Feedback, Inference, TrainingExample
from tests.script_support import load_script


@pytest.fixture
def run_script(monkeypatch):
    """A script's main, in process, leaving the session's logging alone (a script configures
    the root logger for a command line; later tests count the records they capture)."""

    def run(name: str, argv: list[str]) -> int:
        module = load_script(name)
        monkeypatch.setattr(module, "configure_logging", lambda level: None)
        return module.main(argv)

    return run


def test_the_csv_reader_takes_the_documented_columns():
    items = feedback.read_csv(
        "request_id,item,label,time\nabc,0,card_arrival,2026-12-01T10:00:00+00:00\ndef,2,pin_blocked,\n",
        source="csv",
    )
    assert items == [
        feedback.FeedbackItem(
            "abc", 0, "card_arrival", "csv", datetime(2026, 12, 1, 10, tzinfo=UTC)
        ),
        feedback.FeedbackItem("def", 2, "pin_blocked", "csv", None),
    ]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("request_id,label\nabc,x\n", "missing: item"),
        ("request_id,item,label\nabc,-1,x\n", "line 2: item"),
        ("request_id,item,label\nabc,0,x\nabc,zero,x\n", "line 3: item"),
        ("request_id,item,label\n,0,x\n", "line 2: request_id and label"),
        ("request_id,item,label,time\nabc,0,x,yesterday\n", "line 2: time"),
    ],
)
def test_a_malformed_csv_names_its_line(text, match):
    with pytest.raises(DataError, match=match):
        feedback.read_csv(text, source="csv")


def served_rows(engine, request_id: str, count: int) -> None:
    rows = [
        {
            "request_id": request_id,
            "item": item,
            "created_at": datetime.now(UTC),
            "model": "m",
            "region": "global",
            "version": "v1",
            "model_type": "mlp",
            "input_text": f"text {item}",
            "predicted_label": "a",
            "probability": 0.9,
            "top_k": [{"label": "a", "probability": 0.9}],
            "latency_ms": 1.0,
            "cache_hit": False,
            "embedder_fingerprint": "f",
        }
        for item in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(insert(Inference), rows)


@pytest.mark.db
def test_the_bulk_loader_records_once_and_reports_what_it_refused(pg_engine, tmp_path, run_script):
    served_rows(pg_engine, "r1", 3)
    url = pg_engine.url.render_as_string(hide_password=False)
    good = tmp_path / "good.csv"
    good.write_text("request_id,item,label\nr1,0,a\nr1,1,b\nr1,2,a\n")
    assert (
        run_script(
            "load_feedback", ["--csv", str(good), "--database-url", url, "--batch-size", "2"]
        )
        == 0
    )
    assert (
        run_script("load_feedback", ["--csv", str(good), "--database-url", url]) == 0
    )  # again: unchanged
    with pg_engine.connect() as connection:
        rows = connection.execute(select(Feedback.item, Feedback.label, Feedback.source)).all()
    assert sorted(rows) == [(0, "a", "csv"), (1, "b", "csv"), (2, "a", "csv")]

    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,item,label,source\nr1,0,c,review\nnope,0,a,review\nr1,1,a,review\n")
    assert (
        run_script("load_feedback", ["--csv", str(bad), "--database-url", url, "--batch-size", "2"])
        == 1
    )
    with pg_engine.connect() as connection:
        sources = connection.execute(select(Feedback.source, Feedback.item)).all()
    # The first batch (lines 2-3) held an unknown prediction: refused whole; the second kept.
    assert sorted(s for s in sources if s[0] == "review") == [("review", 1)]


@pytest.mark.db
def test_labels_are_checked_against_the_version_manifest(pg_engine, tmp_path):
    served_rows(pg_engine, "r2", 1)
    version = tmp_path / "global" / "m" / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text('{"labels": ["a", "b"]}')
    classes_of = feedback.manifest_classes(str(tmp_path))
    sessions = session_factory(pg_engine)
    with pytest.raises(feedback.FeedbackRefused) as refused:
        feedback.record(sessions, [feedback.FeedbackItem("r2", 0, "zzz")], classes_of)
    assert refused.value.items[0]["code"] == "invalid_input"
    answers = feedback.record(sessions, [feedback.FeedbackItem("r2", 0, "b")], classes_of)
    assert answers[0]["status"] == "created" and answers[0]["version"] == "v1"


@pytest.mark.db
def test_feedback_becomes_training_examples_once_with_conflicts_reported(
    pg_engine, tmp_path, run_script
):
    served_rows(pg_engine, "r3", 4)  # texts "text 0" .. "text 3", model m, region global
    sessions = session_factory(pg_engine)
    with pg_engine.begin() as connection:
        connection.execute(
            insert(TrainingExample),
            [
                {
                    "model": "m",
                    "region": "global",
                    "text": "text 1",
                    "label": "a",
                    "example_time": datetime.now(UTC),
                    "source": "file.csv",
                },
                {
                    "model": "m",
                    "region": "global",
                    "text": "text 2",
                    "label": "a",
                    "example_time": datetime.now(UTC),
                    "source": "file.csv",
                },
            ],
        )
    feedback.record(
        sessions,
        [
            feedback.FeedbackItem("r3", 0, "b"),  # new: added
            feedback.FeedbackItem("r3", 1, "a"),  # the training data agrees: not doubled
            feedback.FeedbackItem("r3", 2, "b"),  # the training data says "a": a conflict
            feedback.FeedbackItem("r3", 3, "a"),
            feedback.FeedbackItem("r3", 3, "b", source="reviewer"),  # sources disagree
        ],
        lambda *_: None,
    )
    url = pg_engine.url.render_as_string(hide_password=False)
    out = tmp_path / "report.json"
    for _ in range(2):  # twice: the same result, nothing doubled
        argv = ["--model", "m", "--region", "global", "--database-url", url, "--report", str(out)]
        assert run_script("feedback_to_training", argv) == 0
        report = json.loads(out.read_text())
        assert (report["feedback_rows"], report["texts"], report["added"]) == (5, 4, 1)
        assert report["already_in_training"] == 1
        assert report["conflicts"] == [
            {"text": "text 2", "feedback_label": "b", "training_labels": ["a"]}
        ]
        assert report["disagreeing"] == [{"text": "text 3", "labels": ["a", "b"]}]
        with pg_engine.connect() as connection:
            rows = connection.execute(
                select(TrainingExample.text, TrainingExample.label, TrainingExample.source)
            ).all()
        assert sorted(rows) == [
            ("text 0", "b", "feedback"),
            ("text 1", "a", "file.csv"),
            ("text 2", "a", "file.csv"),
        ]
