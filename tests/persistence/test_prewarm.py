"""Pre-warm of the embedder's phrase cache from a real PostgreSQL inference log (marked `db`):
the most frequent valid texts of the last day, encoded through the engine into its cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from dc.queries.warm import fetch_frequent_texts
from persistence.models import Inference
from tests.warm_start_support import fake_engine, frequent_log, inference_rows


def test_frequent_texts_of_the_last_day_most_frequent_first(pg_engine):
    now = datetime.now(UTC)
    with pg_engine.begin() as connection:
        connection.execute(insert(Inference), inference_rows(frequent_log(now, nul=False)))
    texts = fetch_frequent_texts(pg_engine, 3, now=now)
    assert texts[0] in {"   ", "\t\n", "x" * 600}  # 6 uses each: the query keeps them
    assert "two days ago" not in fetch_frequent_texts(pg_engine, 100, now=now)
    assert fetch_frequent_texts(pg_engine, 100, now=now)[3:] == ["top", "second", "third"]
    # A window in the past sees the old rows only.
    assert fetch_frequent_texts(pg_engine, 100, now=now - timedelta(days=1, hours=12)) == [
        "two days ago"
    ]


def test_prewarm_from_postgresql_fills_the_cache_in_the_background(pg_engine, pg_migrated):
    with pg_engine.begin() as connection:
        connection.execute(
            insert(Inference), inference_rows(frequent_log(datetime.now(UTC), nul=False))
        )
    engine, settings = fake_engine(
        cache_snapshot="", database_url=pg_migrated, warm_start_phrases=100
    )
    try:
        warm = engine.start_warm_start(settings)
        assert warm.wait(60)
        prewarm = engine.info()["warm_start"]["prewarm"]
        assert prewarm["state"] == "done" and prewarm["encoded"] == 3, prewarm
        assert sorted(engine.encoder.encoded) == ["second", "third", "top"]
        assert engine.embed(["top", "third", "two days ago"]).cached == [True, True, False]
        assert engine.cache.stats().hits == 2  # the pre-warm's own work is not counted
    finally:
        engine.close()
