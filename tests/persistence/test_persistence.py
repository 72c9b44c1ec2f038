"""Persistence on a real PostgreSQL (marked `db`), plus the embedded SQLite default.

Migrations, CSV loading, the history-window query, the model registry and its promotion rule,
retries of transient database errors, and the loading script run as a subprocess.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import create_engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError, OperationalError

from dc.data import load_csv
from dc.errors import DataError, NotFound, PromotionRefused
from dc.promotion import check_promotion, promote
from dc.queries.training import fetch_training_rows, select_training_rows
from dc.utilities.decorators import db_retry, is_transient_db_error, logged, timed
from persistence.db import alembic_config, make_engine, session_factory, upgrade
from persistence.models import ModelVersion, TrainingExample
from persistence.registry import (
    list_versions,
    next_version,
    promoted_version,
    record_version,
)
from tests.conftest import REPO

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
TABLES = {"training_examples", "model_versions", "inferences", "feedback"}


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def count_rows(engine, **where) -> int:
    query = select(func.count()).select_from(TrainingExample)
    for column, value in where.items():
        query = query.where(getattr(TrainingExample, column) == value)
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def url_of(engine) -> str:
    return engine.url.render_as_string(hide_password=False)


# --- migrations ----------------------------------------------------------------------------------


@pytest.mark.db
def test_alembic_creates_and_drops_both_tables_on_postgresql(pg_migrated):
    engine = make_engine(pg_migrated)
    try:
        command.downgrade(alembic_config(pg_migrated), "base")
        assert not TABLES & set(inspect(engine).get_table_names())
        upgrade(pg_migrated)
        upgrade(pg_migrated)  # at head already: nothing to do
        assert set(inspect(engine).get_table_names()) >= TABLES
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).all() == [
                ("0006",)
            ]
        # The committed revision and the models describe the same schema.
        command.check(alembic_config(pg_migrated))
    finally:
        engine.dispose()


@pytest.mark.db
def test_api_tasks_starting_together_migrate_a_new_database_once(pg_url):
    # Every API task runs `alembic upgrade head` at start (deployment/docker/boot.sh), and a
    # first deployment starts several at once: they must queue on the migration lock, not
    # fail on each other's CREATE TABLE.
    import secrets

    from sqlalchemy.engine import make_url

    server = make_url(pg_url).set(database="postgres")
    name = f"dc_concurrent_{secrets.token_hex(4)}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        # Processes, as tasks are (Alembic's context is process-global).
        code = "import sys; from persistence.db import upgrade; upgrade(sys.argv[1])"
        tasks = [
            subprocess.Popen([sys.executable, "-c", code, url], cwd=REPO, stderr=subprocess.PIPE)
            for _ in range(4)
        ]
        failures = [task.stderr.read().decode()[-400:] for task in tasks if task.wait(120)]
        assert not failures
        engine = create_engine(url)
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        engine.dispose()
        assert len(versions) == 1
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_alembic_creates_both_tables_on_a_new_sqlite_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'not' / 'yet' / 'dc.sqlite'}"
    upgrade(url)  # the folder is created
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) >= TABLES
        command.check(alembic_config(url))
    finally:
        engine.dispose()


INFERENCE_0002 = {
    "request_id": "kept-across-0003",
    "item": 0,
    "created_at": NOW,
    "model": "m",
    "region": "eu",
    "version": "v1",
    "model_type": "mlp",
    "input_text": "where is my card",
    "predicted_label": "card_arrival",
    "probability": 0.5,
    "top_k": '[{"label": "card_arrival", "probability": 0.5}]',
    "latency_ms": 1.0,
    "cache_hit": False,
    "embedder_fingerprint": "f" * 64,
}


def client_id_schema(engine) -> tuple[bool, set[str]]:
    """Whether `inferences` has client_request_id, and the names of its indexes."""
    found = inspect(engine)
    columns = {column["name"] for column in found.get_columns("inferences")}
    return "client_request_id" in columns, {ix["name"] for ix in found.get_indexes("inferences")}


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.db), "sqlite"])
def test_migration_0003_adds_and_drops_the_client_request_id(backend, request, tmp_path):
    """0003 up keeps the rows of 0002 (their client id NULL) and indexes the new column; down
    drops both and keeps the rows."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'dc.sqlite'}"
    else:  # the session's database, at head and emptied
        url = request.getfixturevalue("pg_engine").url.render_as_string(hide_password=False)
    config = alembic_config(url)
    command.upgrade(config, "0002")
    command.downgrade(config, "0002")  # from head, on PostgreSQL
    engine = make_engine(url)
    try:
        columns = ", ".join(INFERENCE_0002)
        values = ", ".join(f":{name}" for name in INFERENCE_0002)
        with engine.begin() as connection:
            connection.execute(
                text(f"INSERT INTO inferences ({columns}) VALUES ({values})"), INFERENCE_0002
            )
        assert client_id_schema(engine)[0] is False

        command.upgrade(config, "0003")
        has_column, indexes = client_id_schema(engine)
        assert has_column and "ix_inferences_client_request_id" in indexes
        with engine.begin() as connection:
            assert connection.execute(
                text("SELECT request_id, client_request_id FROM inferences")
            ).all() == [("kept-across-0003", None)]
            connection.execute(
                text("UPDATE inferences SET client_request_id = 'client-1'")
            )  # the column takes a caller's id
        command.upgrade(config, "head")
        command.check(config)  # the models describe head

        command.downgrade(config, "0002")  # through every later revision's downgrade
        has_column, indexes = client_id_schema(engine)
        assert not has_column and "ix_inferences_client_request_id" not in indexes
        assert "ix_inferences_model_region_created_at" in indexes  # 0002's index survives
        with engine.connect() as connection:
            assert connection.execute(text("SELECT request_id FROM inferences")).all() == [
                ("kept-across-0003",)
            ]
    finally:
        engine.dispose()
        upgrade(url)


def test_sqlite_default_stores_and_filters_times_in_utc(tmp_path):
    """SQLite keeps no offset: the loader and the query must agree on UTC."""
    url = f"sqlite:///{tmp_path / 'dc.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    path = write_csv(
        tmp_path / "a.csv",
        ["text", "label", "timestamp"],
        [
            ("inside", "a", "2026-06-01T13:30:00+02:00"),  # 11:30 UTC
            ("outside", "a", "2026-06-01T15:00:00+02:00"),  # 13:00 UTC, after NOW
        ],
    )
    try:
        load_csv(engine, path, model="m", region="eu")
        frame = fetch_training_rows(engine, "m", "eu", 1, now=NOW)
        assert list(frame["text"]) == ["inside"]
        assert frame["example_time"][0] == datetime(2026, 6, 1, 11, 30, tzinfo=UTC)
    finally:
        engine.dispose()


# --- loading CSV files --------------------------------------------------------------------------


@pytest.mark.db
def test_load_csv_reads_timestamps_and_splits(pg_engine, tmp_path):
    path = write_csv(
        tmp_path / "data.csv",
        ["text", "label", "split", "timestamp"],
        [
            ("my card has not arrived", "card_arrival", "train", "2026-05-01T10:00:00Z"),
            ("NA", "none", "val", "2026-05-02 10:00:00"),  # "NA" is a phrase, not a missing value
            ("how do I top up", "top_up", "", "2026-05-03T12:00:00+02:00"),
        ],
    )
    assert load_csv(pg_engine, path, model="banking", region="eu") == 3
    with pg_engine.connect() as connection:
        rows = connection.execute(
            select(
                TrainingExample.text,
                TrainingExample.label,
                TrainingExample.split,
                TrainingExample.example_time,
                TrainingExample.source,
            ).order_by(TrainingExample.id)
        ).all()
    assert [(r.text, r.label, r.split) for r in rows] == [
        ("my card has not arrived", "card_arrival", "train"),
        ("NA", "none", "validation"),
        ("how do I top up", "top_up", None),
    ]
    assert [r.example_time for r in rows] == [
        datetime(2026, 5, 1, 10, tzinfo=UTC),
        datetime(2026, 5, 2, 10, tzinfo=UTC),
        datetime(2026, 5, 3, 10, tzinfo=UTC),
    ]
    assert {r.source for r in rows} == {str(path.resolve())}


@pytest.mark.db
def test_load_csv_without_a_time_column_stamps_the_load_time(pg_engine, tmp_path):
    path = write_csv(tmp_path / "plain.csv", ["text", "label"], [("a b", "x"), ("c d", "y")])
    before = datetime.now(UTC)
    assert load_csv(pg_engine, path, model="m", region="eu", split="test") == 2
    after = datetime.now(UTC)
    with pg_engine.connect() as connection:
        rows = connection.execute(
            select(TrainingExample.split, TrainingExample.example_time, TrainingExample.loaded_at)
        ).all()
    for split, example_time, loaded_at in rows:
        assert split == "test"
        assert before <= example_time == loaded_at <= after


@pytest.mark.db
def test_load_csv_uses_a_named_time_column(pg_engine, tmp_path):
    path = write_csv(
        tmp_path / "events.csv",
        ["created_at", "text", "label"],
        [("2026-01-02T03:04:05Z", "hello there", "greeting")],
    )
    load_csv(pg_engine, path, model="m", region="eu", time_column="created_at")
    with pg_engine.connect() as connection:
        stamp = connection.execute(select(TrainingExample.example_time)).scalar_one()
    assert stamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.db
def test_replace_makes_a_reload_idempotent(pg_engine, tmp_path):
    first = write_csv(tmp_path / "one.csv", ["text", "label"], [("a", "x"), ("b", "y")])
    other = write_csv(tmp_path / "two.csv", ["text", "label"], [("c", "x")])
    load_csv(pg_engine, first, model="m", region="eu")
    load_csv(pg_engine, other, model="m", region="eu")
    load_csv(pg_engine, first, model="m", region="us")

    load_csv(pg_engine, first, model="m", region="eu", replace=True)
    load_csv(pg_engine, first, model="m", region="eu", replace=True)
    assert count_rows(pg_engine, model="m", region="eu") == 3  # 2 from one.csv, 1 from two.csv
    assert count_rows(pg_engine, region="us") == 2  # another region's copy is untouched

    load_csv(pg_engine, first, model="m", region="eu")  # without --replace: doubled
    assert count_rows(pg_engine, model="m", region="eu") == 5


@pytest.mark.db
@pytest.mark.parametrize(
    ("header", "rows", "match"),
    [
        (["text"], [("a",)], r"lacks the column\(s\) \['label'\]"),
        (["text", "label"], [("a", "x"), ("b", " "), ("c", "y")], "blank label on line.* 3"),
        (["text", "label", "split"], [("a", "x", "dev")], "split not one of"),
        (["text", "label", "timestamp"], [("a", "x", "yesterday")], "not ISO 8601 on line.* 2"),
    ],
)
def test_a_bad_file_writes_nothing(pg_engine, tmp_path, header, rows, match):
    path = write_csv(tmp_path / "bad.csv", header, rows)
    with pytest.raises(DataError, match=match):
        load_csv(pg_engine, path, model="m", region="eu")
    assert count_rows(pg_engine) == 0


# --- the history window ---------------------------------------------------------------------------


@pytest.mark.db
def test_fetch_training_rows_keeps_the_window_and_the_model(pg_engine, tmp_path):
    start = NOW - timedelta(days=30)
    second = timedelta(seconds=1)
    rows = [
        ("too old", "x", "m", "eu", start - second),
        ("first day", "x", "m", "eu", start),
        ("inside", "y", "m", "eu", start + second),
        ("now", "y", "m", "eu", NOW),
        ("future", "y", "m", "eu", NOW + second),
        ("other model", "x", "other", "eu", NOW - second),
        ("other region", "x", "m", "us", NOW - second),
    ]
    for i, (text_, label, model, region, when) in enumerate(rows):
        path = write_csv(
            tmp_path / f"{i}.csv",
            ["text", "label", "timestamp"],
            [(text_, label, when.isoformat())],
        )
        load_csv(pg_engine, path, model=model, region=region)

    frame = fetch_training_rows(pg_engine, "m", "eu", 30, now=NOW)

    assert list(frame.columns) == ["text", "label", "split", "example_time"]
    assert list(frame["text"]) == ["first day", "inside", "now"]  # load order
    assert str(frame["example_time"].dtype) == "datetime64[ns, UTC]"
    assert frame["split"].isna().all()
    assert fetch_training_rows(pg_engine, "nobody", "eu", 30, now=NOW).empty


def test_select_training_rows_binds_its_parameters():
    query = select_training_rows("m'; DROP TABLE x; --", "eu", NOW)
    compiled = query.compile()
    assert "DROP TABLE" not in str(compiled)
    assert "m'; DROP TABLE x; --" in compiled.params.values()


# --- the registry and the promotion rule -----------------------------------------------------


def record(session, version, f1, name="banking", region="eu"):
    return record_version(
        session,
        name=name,
        region=region,
        version=version,
        metrics={"weighted_f1": f1, "accuracy": f1},
        embedder_fingerprint="f" * 64,
        artifact_uri=f"var/artifacts/{region}/{name}/{version}",
        config={"epochs": 3},
    )


@pytest.mark.db
def test_record_list_and_next_version(pg_engine):
    Session = session_factory(pg_engine)
    with Session() as session:
        first = next_version(session, "banking", "eu", now=NOW)
        assert first == "20260601T120000Z"
        row = record(session, first, 0.9)
        assert (row.status, row.id) == ("trained", 1)
        assert next_version(session, "banking", "eu", now=NOW) == "20260601T120000Z-2"
        record(session, "20260601T120000Z-2", 0.9)
        assert next_version(session, "banking", "eu", now=NOW) == "20260601T120000Z-3"
        assert next_version(session, "banking", "us", now=NOW) == first  # per region
        record(session, first, 0.9, region="us")

        assert [v.version for v in list_versions(session, "banking", "eu")] == [
            first,
            f"{first}-2",
        ]
        assert len(list_versions(session)) == 3
        assert len(list_versions(session, region="us")) == 1
        assert promoted_version(session, "banking", "eu") is None
        with pytest.raises(IntegrityError):
            record(session, first, 0.5)  # a version is recorded once


@pytest.mark.db
def test_promotion_archives_the_previous_version(pg_engine):
    Session = session_factory(pg_engine)
    with Session() as session:
        record(session, "v1", 0.90)
        record(session, "v2", 0.92)
        first = promote(session, "banking", "eu", "v1", tolerance=0.005)
        assert first.status == "promoted" and first.promoted_at is not None

        promote(session, "banking", "eu", "v2", tolerance=0.005)
        statuses = {v.version: v.status for v in list_versions(session, "banking", "eu")}
        assert statuses == {"v1": "archived", "v2": "promoted"}
        assert promoted_version(session, "banking", "eu").version == "v2"

        # Promoting the promoted version again changes nothing.
        again = promote(session, "banking", "eu", "v2", tolerance=0.005)
        assert again.promoted_at == promoted_version(session, "banking", "eu").promoted_at

        # Rolling back to the archived (older, lower id) version within the tolerance works.
        record(session, "v3", 0.5)
        promote(session, "banking", "eu", "v1", tolerance=0.05)
        statuses = {v.version: v.status for v in list_versions(session, "banking", "eu")}
        assert statuses == {"v1": "promoted", "v2": "archived", "v3": "trained"}

        with pytest.raises(NotFound):
            promote(session, "banking", "eu", "v9", tolerance=0.005)


@pytest.mark.db
def test_promotion_refused_when_worse_than_the_tolerance_unless_forced(pg_engine, caplog):
    Session = session_factory(pg_engine)
    with Session() as session:
        record(session, "good", 0.90)
        record(session, "edge", 0.895)  # exactly at the tolerance: allowed
        record(session, "worse", 0.88)
        promote(session, "banking", "eu", "good", tolerance=0.005)

        with pytest.raises(PromotionRefused) as refused:
            promote(session, "banking", "eu", "worse", tolerance=0.005)
        assert all(value in refused.value.message for value in ("0.8800", "0.9000", "0.0050"))
        assert refused.value.code == "promotion_refused"
        assert promoted_version(session, "banking", "eu").version == "good"  # rolled back

        promote(session, "banking", "eu", "edge", tolerance=0.005)
        assert promoted_version(session, "banking", "eu").version == "edge"

        with caplog.at_level(logging.WARNING, logger="persistence.registry"):
            promote(session, "banking", "eu", "worse", tolerance=0.005, force=True)
        assert "forced promotion" in caplog.text
        statuses = {v.version: v.status for v in list_versions(session, "banking", "eu")}
        assert statuses == {"good": "archived", "edge": "archived", "worse": "promoted"}


@pytest.mark.db
def test_the_database_allows_one_promoted_version_per_model(pg_engine):
    Session = session_factory(pg_engine)
    with Session() as session:
        record(session, "v1", 0.9)
        record(session, "v2", 0.9)
        with pytest.raises(IntegrityError), session.begin():
            for row in session.scalars(select(ModelVersion)):
                row.status = "promoted"


def test_check_promotion_rule():
    check_promotion(0.5, None, 0.005)  # nothing promoted yet
    check_promotion(0.91, 0.90, 0.0)
    check_promotion(0.895, 0.90, 0.005)  # the limit itself is accepted
    with pytest.raises(PromotionRefused, match=r"0\.8940.*0\.9000.*0\.0050"):
        check_promotion(0.894, 0.90, 0.005)
    with pytest.raises(PromotionRefused):
        check_promotion(float("nan"), 0.90, 0.005)
    with pytest.raises(ValueError):
        check_promotion(0.9, 0.9, -0.1)


# --- decorators ----------------------------------------------------------------------------------


def operational_error() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("connection refused"))


def integrity_error() -> IntegrityError:
    return IntegrityError("INSERT ...", {}, Exception("duplicate key value"))


def test_db_retry_retries_transient_errors_then_succeeds(caplog):
    calls = []

    @db_retry(retries=3, backoff_s=0.001)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise operational_error()
        return "ok"

    with caplog.at_level(logging.WARNING):
        assert flaky() == "ok"
    assert len(calls) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "attempt 1 of 4" in warnings[0].getMessage()


def test_db_retry_gives_up_after_its_retries():
    calls = []

    @db_retry(retries=2, backoff_s=0.001)
    def down():
        calls.append(1)
        raise operational_error()

    with pytest.raises(OperationalError):
        down()
    assert len(calls) == 3


def test_db_retry_never_retries_integrity_errors():
    calls = []

    @db_retry(retries=3, backoff_s=0.001)
    def duplicate():
        calls.append(1)
        raise integrity_error()

    with pytest.raises(IntegrityError):
        duplicate()
    assert calls == [1]


def test_sqlite_missing_table_is_not_transient(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")
    with pytest.raises(OperationalError) as error, engine.connect() as connection:
        connection.execute(text("SELECT * FROM nowhere"))
    assert not is_transient_db_error(error.value)
    assert is_transient_db_error(operational_error())
    engine.dispose()


@pytest.mark.db
def test_fetch_survives_a_connection_killed_by_the_server(pg_engine, caplog):
    """A real lost connection: the server ends the pooled connection between two queries."""
    engine = create_engine(url_of(pg_engine))  # no pre-ping, so the query meets the dead socket
    try:
        with engine.connect() as connection:
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with pg_engine.connect() as admin:
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            for _ in range(100):
                admin.commit()  # pg_stat_activity is a snapshot taken once per transaction
                gone = not admin.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"), {"pid": pid}
                ).scalar_one()
                if gone:
                    break
                time.sleep(0.05)
        with caplog.at_level(logging.WARNING, logger="dc.queries"):
            frame = fetch_training_rows(engine, "m", "eu", 30, now=NOW, retries=2)
        assert frame.empty
        assert "transient database error" in caplog.text
    finally:
        engine.dispose()


def test_timed_and_logged_bare_and_called(caplog):
    log = logging.getLogger("tests.decorators")

    @timed
    def quick(x):
        return x * 2

    @timed(logger=log)
    @logged(logger=log)
    def named(rows, *, label):
        return len(rows)

    @logged
    def broken():
        raise KeyError("boom")

    caplog.set_level(logging.INFO)
    assert quick(2) == 4
    assert named(list(range(1000)), label="x") == 1000
    with pytest.raises(KeyError):
        broken()

    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("test_timed_and_logged_bare_and_called.<locals>.quick took") for m in messages
    )
    assert any("named(list(len=1000), label='x') started" in m for m in messages)
    assert any(
        m.startswith("test_timed_and_logged_bare_and_called.<locals>.named took") for m in messages
    )
    failed = [r for r in caplog.records if "failed" in r.getMessage()]
    assert failed and failed[0].levelno == logging.ERROR and failed[0].exc_info
    assert quick.__name__ == "quick" and named.__wrapped__.__wrapped__.__name__ == "named"


# --- the loading script -------------------------------------------------------------------------


SCRIPT = str(REPO / "scripts" / "load_training_data.py")
ENV = {**os.environ, "DC_LOG_LEVEL": "INFO"}


def test_loading_script_help():
    result = subprocess.run(
        [sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert "--replace" in result.stdout and "examples:" in result.stdout


@pytest.mark.db
def test_loading_script_loads_into_postgresql(pg_engine, tmp_path):
    path = write_csv(
        tmp_path / "intents.csv",
        ["text", "label", "created_at"],
        [("hi", "greet", "2026-01-01T00:00:00Z"), ("bye", "leave", "2026-01-02T00:00:00Z")],
    )
    args = [sys.executable, SCRIPT, str(path), "--model", "intents", "--region", "us"]
    args += ["--time-column", "created_at", "--split", "train", "--replace"]
    args += ["--database-url", url_of(pg_engine)]
    for _ in range(2):  # the second run replaces the first
        result = subprocess.run(args, capture_output=True, text=True, timeout=60, env=ENV)
        assert result.returncode == 0, result.stderr
        assert "loaded 2 rows for intents/us" in result.stderr
    assert count_rows(pg_engine, model="intents", region="us", split="train") == 2

    bad = write_csv(tmp_path / "bad.csv", ["text"], [("no label",)])
    result = subprocess.run(
        [*args[:2], str(bad), *args[3:]], capture_output=True, text=True, timeout=60, env=ENV
    )
    assert result.returncode == 1 and "lacks the column(s) ['label'" in result.stderr
