"""The Spark jobs (`dc.batch`) on a real local Spark session (local[2]), a real PostgreSQL over
JDBC, the real encoder and the tiny trained heads.

- a batch score equals the API's answer for the same texts (label, top-k; probabilities to
  1e-6), from files and from a JDBC query, to Parquet and to a PostgreSQL table;
- `embed`'s Parquet, read back by training, gives the same head as embedding in process;
- `replay` of the served version against its own log agrees 1.0, and scores the feedback;
- re-runs write the same output; a bad row (an empty text) is reported and left out, the job
  goes on; a head of another embedder is refused, as serving refuses it.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import text

from api.app import close_app, create_app
from dc.batch import jobs
from dc.batch.session import spark_session
from tests.conftest import make_settings
from tests.heads_support import (
    TINY_NAME,
    TINY_REGION,
    copy_with_fingerprint,
    register_versions,
    tiny_config,
    write_subset,
)

pytestmark = [pytest.mark.slow, pytest.mark.db]

PHRASES = [
    "my card has not arrived yet", "I lost my card", "what is the exchange rate",
    "my top up failed", "my pin is blocked", "why was I charged for a cash withdrawal",
    "where is my new card", "the exchange rate looks wrong", "I cannot top up my account",
    "someone stole my card",
]  # fmt: skip


@pytest.fixture(scope="module")
def spark():
    session = spark_session(make_settings(), "local[2]", app_name="dc-batch-tests")
    yield session
    session.stop()


@pytest.fixture
def batch_settings(pg_engine, tiny_versions, tmp_path):
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    return make_settings(
        database_url=pg_engine.url.render_as_string(hide_password=False),
        serving_region=TINY_REGION,
        artifacts_dir=str(tiny_versions[0].version_dir.parent.parent.parent),
        spool_dir=str(tmp_path / "spool"),
        batch_partitions=3,
        feedback_token="batch-test-feedback",
        log_flush_interval_ms=20,
    )


def served_answers(settings, engine, texts: list[str]) -> dict[str, dict]:
    """What the API answers for each text (one request each), by text."""
    app = create_app(settings, embedder=engine)
    try:
        client = app.test_client()
        deadline = time.monotonic() + 20
        while not app.extensions["dc.services"].store.ready:
            assert time.monotonic() < deadline, "model store not ready"
            time.sleep(0.05)
        answers = {}
        for phrase in texts:
            response = client.post(f"/predict/{TINY_NAME}", json={"text": phrase})
            assert response.status_code == 200, response.get_json()
            answers[phrase] = response.get_json()
        assert app.extensions["dc.services"].inference_log.flush(timeout_s=20)
        return answers
    finally:
        close_app(app)


def read_scores(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["model", "key"]).reset_index(drop=True)


def assert_same_as_api(row, answer) -> None:
    assert row["label"] == answer["label"]
    assert row["version"] == answer["version"]
    assert abs(row["probability"] - answer["probability"]) < 1e-6
    assert [entry["label"] for entry in row["top_k"]] == [e["label"] for e in answer["top_k"]]
    for entry, expected in zip(row["top_k"], answer["top_k"], strict=True):
        assert abs(entry["probability"] - expected["probability"]) < 1e-6


def test_a_batch_score_equals_the_apis_and_reruns_write_the_same(
    spark, batch_settings, engine, tiny_versions, tmp_path
):
    answers = served_answers(batch_settings, engine, PHRASES)
    source = tmp_path / "phrases.csv"
    rows = [*enumerate(PHRASES), (len(PHRASES), ""), (len(PHRASES) + 1, "   ")]
    pd.DataFrame(rows, columns=["id", "text"]).to_csv(source, index=False)
    head = jobs.resolve_head(batch_settings, TINY_NAME, region=TINY_REGION)
    assert head.version == tiny_versions[0].version  # the promoted one
    phrases = jobs.read_phrases(spark, batch_settings, path=str(source))
    output = str(tmp_path / "scores")

    report = jobs.score(spark, batch_settings, phrases, [head], output=output)
    # The empty and the blank text are reported and left out; the job went on.
    assert (report.rows_in, report.rows_out, report.rejected) == (12, 10, 2)
    assert {example["key"] for example in report.examples} == {"10", "11"}
    errors = {example["key"]: example["error"] for example in report.examples}
    assert errors["10"] == "the text is missing (NULL)"  # CSV reads an empty field as NULL
    assert "whitespace only; send the phrase to classify" in errors["11"]
    first = read_scores(output)
    assert len(first) == len(PHRASES)
    for _, row in first.iterrows():
        assert_same_as_api(row, answers[row["text"]])
    assert sorted(pd.read_parquet(output + "/_rejected")["key"]) == ["10", "11"]

    # Again with the same input: the same rows, the same number of files (overwritten).
    files = sorted(p.name for p in (tmp_path / "scores" / f"model={TINY_NAME}").iterdir())
    jobs.score(spark, batch_settings, phrases, [head], output=output)
    again = read_scores(output)
    pd.testing.assert_frame_equal(first.drop(columns="top_k"), again.drop(columns="top_k"))
    assert len(files) == len(list((tmp_path / "scores" / f"model={TINY_NAME}").iterdir()))


def test_scores_from_a_jdbc_query_into_a_postgresql_table(spark, batch_settings, pg_engine):
    with pg_engine.begin() as connection:
        connection.execute(text("CREATE TABLE tickets (ticket_id bigint, body text)"))
        connection.execute(
            text("INSERT INTO tickets VALUES (:i, :t)"),
            [{"i": i, "t": phrase} for i, phrase in enumerate(PHRASES)],
        )
    try:
        both = [
            jobs.resolve_head(batch_settings, TINY_NAME, version, region=TINY_REGION)
            for version in (None, _second_version(pg_engine))
        ]
        phrases = jobs.read_phrases(
            spark, batch_settings, sql="SELECT ticket_id, body FROM tickets", key="ticket_id",
            text="body",
        )  # fmt: skip
        report = jobs.score(spark, batch_settings, phrases, both, output_table="ticket_scores")
        assert (report.rows_in, report.rows_out) == (len(PHRASES), 2 * len(PHRASES))
        with pg_engine.connect() as connection:
            stored = connection.execute(
                text("SELECT key, version, label, top_k FROM ticket_scores")
            ).all()
        assert len(stored) == 2 * len(PHRASES)
        assert {row.version for row in stored} == {h.version for h in both}
        assert all(json.loads(row.top_k)[0]["label"] for row in stored)
    finally:
        with pg_engine.begin() as connection:
            connection.execute(text("DROP TABLE IF EXISTS tickets, ticket_scores"))


def _second_version(pg_engine) -> str:
    with pg_engine.connect() as connection:
        return connection.execute(
            text("SELECT version FROM model_versions WHERE status <> 'promoted'")
        ).scalar_one()


def test_replay_of_the_served_version_agrees_with_its_own_log(
    spark, batch_settings, engine, tiny_versions
):
    answers = served_answers(batch_settings, engine, PHRASES)
    served = tiny_versions[0]
    # Feedback for three predictions: the served label twice, another label once.
    labels = [answers[p]["label"] for p in PHRASES[:3]]
    other = next(label for label in ("card_arrival", "pin_blocked") if label != labels[2])
    truth = [labels[0], labels[1], other]
    from dc.feedback import FeedbackItem, record
    from persistence.db import make_engine, session_factory

    database = make_engine(batch_settings.database_url)
    try:
        record(
            session_factory(database),
            [
                FeedbackItem(answers[p]["request_id"], 0, label)
                for p, label in zip(PHRASES[:3], truth, strict=True)
            ],
            lambda *_: None,
        )
    finally:
        database.dispose()
    candidate = jobs.resolve_head(batch_settings, TINY_NAME, region=TINY_REGION)
    end = datetime.now(UTC) + timedelta(minutes=1)
    report = jobs.replay(
        spark, batch_settings, candidate, region=TINY_REGION, start=end - timedelta(hours=1),
        end=end,
    )  # fmt: skip
    figures = report.as_dict()
    assert figures["agreement"] == 1.0
    assert figures["rows_in"] == len(PHRASES)
    assert figures["served_versions"] == [served.version]
    assert figures["feedback_items"] == 3
    assert figures["candidate"]["accuracy"] == pytest.approx(2 / 3)
    assert figures["candidate"] == figures["served"]
    written = json.loads(Path(report.outputs[0]).read_text(encoding="utf-8"))
    assert written["agreement"] == 1.0 and "/replay/" in report.outputs[0]


def test_training_on_the_embed_cache_gives_the_same_head(
    spark, batch_settings, encoder, settings, tmp_path
):
    from dc.batch.vectors import cached_vectors
    from dc.data import load_csv
    from dc.model_config import ModelConfig
    from dc.nlp.embeddings import LocalEmbedder
    from dc.pipeline import train_model
    from dc.predict import load_head
    from persistence.db import make_engine, upgrade
    from tests.conftest import REPO

    train = write_subset(REPO / "data/banking77/train.csv", tmp_path / "train.csv", per_class=25)
    test = write_subset(REPO / "data/banking77/test.csv", tmp_path / "test.csv", per_class=10)
    cache = tmp_path / "cache"
    every = pd.concat([pd.read_csv(train), pd.read_csv(test)])
    phrases = spark.createDataFrame(every.assign(id=range(len(every)))[["id", "text"]])
    phrases = phrases.selectExpr("CAST(id AS string) AS key", "text")
    report = jobs.embed(spark, batch_settings, phrases, output=str(cache))
    assert report.rows_out == every["text"].nunique()

    texts = sorted(every["text"].unique())
    found = cached_vectors(cache, encoder.fingerprint, texts)
    assert len(found) == len(texts)
    direct = encoder.encode(texts)
    assert np.abs(np.stack([found[t] for t in texts]) - direct).max() < 1e-5
    assert cached_vectors(cache, "another-embedder", texts) == {}

    heads = []
    for name, cache_dir in (("in_process", ""), ("from_cache", str(cache))):
        url = f"sqlite:///{tmp_path / name}.sqlite"
        upgrade(url)
        database = make_engine(url)
        load_csv(database, train, model=TINY_NAME, region=TINY_REGION)
        load_csv(database, test, model=TINY_NAME, region=TINY_REGION, split="test")
        run = settings.model_copy(
            update={
                "artifacts_dir": str(tmp_path / name),
                "database_url": url,
                "s3_bucket": "",
                "embedding_cache_dir": cache_dir,
            }
        )
        embedder = LocalEmbedder.from_encoder(encoder, settings)
        try:
            result = train_model(
                ModelConfig.model_validate(tiny_config(seed=7, epochs=20)),
                run,
                embedder=embedder,
                engine=database,
                backup=False,
                force=True,
            )
        finally:
            embedder.close()
            database.dispose()
        heads.append((result, load_head(result.version_dir)))
    (plain, plain_head), (cached, cached_head) = heads
    assert cached.metrics["accuracy"] == pytest.approx(plain.metrics["accuracy"], abs=1e-9)
    probabilities = [head.predict_proba(direct) for head in (plain_head, cached_head)]
    assert np.abs(probabilities[0] - probabilities[1]).max() < 1e-4


def test_a_head_of_another_embedder_is_refused(spark, batch_settings, tiny_versions, tmp_path):
    foreign = copy_with_fingerprint(tiny_versions[0], "0" * 16, tmp_path / "foreign")
    ref = jobs.HeadRef(foreign.name, foreign.version, str(foreign.version_dir))
    phrases = spark.createDataFrame(
        [("1", "my card has not arrived yet")], "key string, text string"
    )
    with pytest.raises(Exception, match="was trained on embedder 0000000000000000"):
        jobs.score(spark, batch_settings, phrases, [ref], output=str(tmp_path / "out"))


def test_the_database_password_comes_from_the_secret_rds_keeps(s3_server, monkeypatch):
    import boto3

    from dc.batch.session import with_secret_password
    from dc.errors import DataError

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # Secrets Manager on moto too
    client = boto3.client("secretsmanager", region_name="eu-west-1")
    arn = client.create_secret(
        Name="rds-master", SecretString=json.dumps({"username": "dc", "password": "s3cr3t"})
    )["ARN"]
    settings = make_settings(database_secret_arn=arn, aws_region="eu-west-1")
    assert with_secret_password(settings).database_password == "s3cr3t"
    given = settings.model_copy(update={"database_password": "from-ecs"})
    assert with_secret_password(given).database_password == "from-ecs"  # injected wins
    assert with_secret_password(make_settings()).database_password == ""  # no secret named
    missing = settings.model_copy(update={"database_secret_arn": arn + "-gone"})
    with pytest.raises(DataError, match="cannot read the database password"):
        with_secret_password(missing)
