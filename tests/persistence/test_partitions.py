"""The inference log partitioned by day on a real PostgreSQL (marked `db`): migration 0005 up
and down with rows in place, rows routed to their day (or the default partition), writes that
stay idempotent, and the maintenance of `persistence.partitions` (made ahead, moved out of the
default partition, dropped when expired) from the functions, the log writer and the script.
The naming and retention rules themselves are checked without a database.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from dc import feedback
from persistence import partitions
from persistence.db import alembic_config, make_engine, session_factory
from persistence.inference_log import InferenceLog, InferenceRecord, record_to_row
from persistence.inference_log.counters import Counters
from persistence.inference_log.database import Database
from persistence.inference_log.quarantine import Quarantine
from persistence.models import Inference, utcnow
from persistence.partitions import (
    DEFAULT_PARTITION,
    day_start,
    drop_expired,
    ensure_partitions,
    expired_partitions,
    maintain,
    missing_days,
    partition_day,
    partition_name,
    utc_day,
)
from tests.conftest import REPO
from tests.script_support import load_script

WAIT_S = 30.0  # only against hanging
CONFLICT = re.compile(r"conflicting row (\S+):")
AHEAD = 7  # what migration 0005 makes, and the settings' default


def record(request_id: str, created_at: datetime, item: int = 0, **overrides) -> InferenceRecord:
    """One prediction of `request_id` at `created_at`, with a realistic top 3."""
    values = dict(
        request_id=request_id,
        item=item,
        created_at=created_at,
        model="banking77",
        region="global",
        version="v0001",
        model_type="mlp-1x512",
        input_text=f"where is my new card, it was sent weeks ago? ({request_id} #{item})",
        predicted_label="card_arrival",
        probability=0.8125,
        top_k=[
            {"label": "card_arrival", "probability": 0.8125},
            {"label": "card_delivery_estimate", "probability": 0.125},
            {"label": "lost_or_stolen_card", "probability": 0.03125},
        ],
        latency_ms=3.5,
        cache_hit=False,
        embedder_fingerprint="f" * 64,
    )
    values.update(overrides)
    return InferenceRecord(**values)


def write(engine, records: list[InferenceRecord], tmp_path):
    """Insert `records` through the log's insert path (COPY for more than one row)."""
    database = Database(engine.url.render_as_string(False), Quarantine(tmp_path, Counters(None)))
    try:
        return database.insert(records)
    finally:
        database.engine.dispose()


def placed(engine) -> dict[tuple[str, int], str]:
    """(request_id, item) -> the partition that holds the row."""
    query = text("SELECT request_id, item, tableoid::regclass::text FROM inferences")
    with engine.connect() as connection:
        return {(r, i): where for r, i, where in connection.execute(query)}


def stored_rows(engine) -> dict[tuple[str, int], dict]:
    """Every stored row's values, by (request_id, item)."""
    query = select(Inference.__table__)
    with engine.connect() as connection:
        return {
            (row["request_id"], row["item"]): dict(row)
            for row in connection.execute(query).mappings()
        }


def partition_names(engine) -> list[str]:
    with engine.connect() as connection:
        return partitions.partitions(connection)


def relkind(engine, name: str) -> str | None:
    query = text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:name)")
    with engine.connect() as connection:
        return connection.execute(query, {"name": name}).scalar()


def reset_partitions(engine) -> None:
    """The layout a fresh upgrade gives: the default partition and today to today + AHEAD;
    every other daily partition (left by another test) dropped."""
    now = utcnow()
    keep = {partition_name(utc_day(now) + timedelta(days=n)) for n in range(AHEAD + 1)}
    with engine.begin() as connection:
        for name in partitions.partitions(connection):
            if partition_day(name) is not None and name not in keep:
                connection.exec_driver_sql(f"DROP TABLE {name}")
        ensure_partitions(connection, now, AHEAD)


@pytest.fixture
def pg(pg_engine):
    """`pg_engine` with the standard partition layout before and after the test."""
    reset_partitions(pg_engine)
    yield pg_engine
    command.upgrade(alembic_config(pg_engine.url.render_as_string(False)), "head")
    reset_partitions(pg_engine)


# --- without a database: names and the retention rule --------------------------------------------


def test_partition_names_round_trip_and_others_are_not_partitions():
    day = date(2026, 12, 1)
    assert partition_name(day) == "inferences_p20261201"
    assert partition_day("inferences_p20261201") == day
    for name in ("inferences", "inferences_p2026120", "inferences_p20261301", "feedback"):
        assert partition_day(name) is None and not partitions.is_partition(name)
    assert partitions.is_partition(DEFAULT_PARTITION)
    assert partitions.is_partition("inferences_p20261201")


def test_missing_days_run_from_today_to_days_ahead_in_utc():
    # 23:30 at UTC-5 is already the next day in UTC.
    now = datetime(2026, 12, 1, 23, 30, tzinfo=UTC) + timedelta(hours=5)
    existing = ["inferences_default", "inferences_p20261203"]
    assert missing_days(existing, now, 2) == [date(2026, 12, 2), date(2026, 12, 4)]
    assert missing_days(existing, now, 0) == [date(2026, 12, 2)]
    with pytest.raises(ValueError):
        missing_days(existing, now, -1)


def test_only_partitions_entirely_older_than_the_retention_expire():
    now = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
    existing = [
        DEFAULT_PARTITION,
        "inferences_p20261107",
        "inferences_p20261108",
        "inferences_p20261109",
        "inferences_p20261110",
        "inferences_manual",
    ]
    # 30 days before now is 2026-11-10 12:00: that day still holds rows younger than 30 days.
    assert expired_partitions(existing, now, 30) == [
        "inferences_p20261107",
        "inferences_p20261108",
        "inferences_p20261109",
    ]
    assert expired_partitions(existing, now, 31) == ["inferences_p20261107", "inferences_p20261108"]
    assert expired_partitions(existing, now, 0) == []  # keep everything
    with pytest.raises(ValueError):
        expired_partitions(existing, now, -1)


def test_maintenance_does_nothing_on_sqlite(tmp_path):
    from persistence.db import upgrade

    url = f"sqlite:///{tmp_path / 'dc.sqlite'}"
    upgrade(url)  # 0005 leaves SQLite's plain table alone
    engine = make_engine(url)
    try:
        assert inspect(engine).get_pk_constraint("inferences")["constrained_columns"] == [
            "request_id",
            "item",
        ]
        with engine.begin() as connection:
            assert maintain(connection, utcnow(), days_ahead=7, retention_days=1) == (
                partitions.Maintenance(partitioned=False)
            )
            assert ensure_partitions(connection, utcnow(), 7) == []
            assert drop_expired(connection, utcnow(), 1) == []
    finally:
        engine.dispose()


# --- migration 0005 ------------------------------------------------------------------------------


OLD_ROWS = [
    # 23:30 at UTC-2 on June 1st is June 2nd in UTC; 12:00 UTC on June 2nd is already June 3rd
    # in the session time zone set below (UTC+14): the days must be UTC days.
    record("old-a", datetime.fromisoformat("2026-06-01T23:30:00-02:00")),
    record("old-b", datetime.fromisoformat("2026-06-02T12:00:00+00:00"), client_request_id="c-1"),
    record("old-c", datetime.fromisoformat("2026-06-02T23:59:59.999999+00:00")),
    record("old-d", datetime.fromisoformat("2025-01-15T00:00:00+00:00"), item=3),
]


def insert_plain(engine, records: list[InferenceRecord]) -> None:
    with engine.begin() as connection:
        connection.execute(Inference.__table__.insert(), [record_to_row(r) for r in records])


def test_upgrade_keeps_every_row_in_the_partition_of_its_utc_day(pg, monkeypatch):
    url = pg.url.render_as_string(False)
    config = alembic_config(url)
    command.downgrade(config, "0004")
    assert relkind(pg, "inferences") == "r"
    insert_plain(pg, OLD_ROWS)
    before = stored_rows(pg)

    monkeypatch.setenv("PGTZ", "Pacific/Kiritimati")  # the migration's session: UTC+14
    command.upgrade(config, "0005")
    monkeypatch.delenv("PGTZ")

    assert relkind(pg, "inferences") == "p"
    assert stored_rows(pg) == before  # every row, every value
    assert placed(pg) == {
        ("old-a", 0): "inferences_p20260602",
        ("old-b", 0): "inferences_p20260602",
        ("old-c", 0): "inferences_p20260602",
        ("old-d", 3): "inferences_p20250115",
    }
    found = inspect(pg)
    key = found.get_pk_constraint("inferences")
    assert (key["name"], key["constrained_columns"]) == (
        "pk_inferences",
        ["request_id", "item", "created_at"],
    )
    assert {ix["name"] for ix in found.get_indexes("inferences")} == {
        "ix_inferences_model_region_created_at",
        "ix_inferences_client_request_id",
    }
    # Today and the next 7 days, named as persistence.partitions names them: nothing to add.
    names = partition_names(pg)
    assert DEFAULT_PARTITION in names
    with pg.begin() as connection:
        today = connection.execute(text("SELECT (now() AT TIME ZONE 'UTC')::date")).scalar_one()
        assert ensure_partitions(connection, day_start(today), AHEAD) == []
    assert set(names) == {
        DEFAULT_PARTITION,
        "inferences_p20250115",
        "inferences_p20260602",
        *(partition_name(today + timedelta(days=n)) for n in range(AHEAD + 1)),
    }
    command.upgrade(config, "head")
    command.check(config)  # the models describe the schema; partitions are left out


def test_downgrade_restores_the_plain_table_with_every_row(pg, tmp_path):
    now = utcnow()
    rows = [
        record("today", now, item=1),
        record("tomorrow", now + timedelta(days=1), client_request_id="c-2"),
        record("far", now + timedelta(days=400)),  # in the default partition
    ]
    assert write(pg, rows, tmp_path).committed == 3
    before = stored_rows(pg)
    config = alembic_config(pg.url.render_as_string(False))
    command.downgrade(config, "0004")

    assert relkind(pg, "inferences") == "r"
    assert stored_rows(pg) == before
    assert set(placed(pg).values()) == {"inferences"}
    found = inspect(pg)
    assert found.get_pk_constraint("inferences")["constrained_columns"] == ["request_id", "item"]
    assert {ix["name"] for ix in found.get_indexes("inferences")} == {
        "ix_inferences_model_region_created_at",
        "ix_inferences_client_request_id",
    }
    assert not [name for name in found.get_table_names() if name.startswith("inferences_")]
    command.upgrade(config, "head")
    assert stored_rows(pg) == before  # and up again


def test_downgrade_refuses_rows_the_plain_key_cannot_hold(pg, tmp_path):
    now = utcnow()
    twins = [record("twice", now), record("twice", now + timedelta(days=1))]
    for row in twins:  # one at a time: a batch would take the second for a conflict
        assert write(pg, [row], tmp_path).committed == 1
    config = alembic_config(pg.url.render_as_string(False))
    with pytest.raises(RuntimeError, match="share a \\(request_id, item\\)"):
        command.downgrade(config, "0004")
    assert relkind(pg, "inferences") == "p"  # nothing changed
    assert len(stored_rows(pg)) == 1 and len(placed(pg)) == 1
    with pg.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM inferences")).scalar_one() == 2


# --- writing -------------------------------------------------------------------------------------


def test_rows_go_to_their_day_and_rows_outside_every_day_to_the_default(pg, tmp_path):
    today = day_start(utc_day(utcnow()))
    rows = [
        record("first-instant", today),
        record("last-instant", today + timedelta(days=1, microseconds=-1)),
        record("next-day", today + timedelta(days=1)),
        record("last-made-day", today + timedelta(days=AHEAD, hours=23)),
        record("beyond", today + timedelta(days=AHEAD + 1)),
        record("weeks-ago", today - timedelta(days=40)),  # a spool replayed weeks later
    ]
    outcome = write(pg, rows, tmp_path)
    assert (outcome.committed, outcome.rejected, outcome.conflicts) == (6, 0, 0)
    day = utc_day(today)
    assert placed(pg) == {
        ("first-instant", 0): partition_name(day),
        ("last-instant", 0): partition_name(day),
        ("next-day", 0): partition_name(day + timedelta(days=1)),
        ("last-made-day", 0): partition_name(day + timedelta(days=AHEAD)),
        ("beyond", 0): DEFAULT_PARTITION,
        ("weeks-ago", 0): DEFAULT_PARTITION,
    }


def test_the_same_row_written_twice_is_stored_once_and_a_different_one_quarantined(
    pg, tmp_path, caplog
):
    now = utcnow()
    rows = [record("req", now, item=i) for i in range(4)] + [
        record("away", now - timedelta(days=40))
    ]
    assert write(pg, rows, tmp_path).committed == 5
    # Again by COPY (a retried batch), then one by one (a single row goes by INSERT).
    again = write(pg, rows, tmp_path)
    assert (again.committed, again.conflicts) == (5, 0)
    assert write(pg, rows[:1], tmp_path).committed == 1
    # A replayed spool: the journal line carries created_at, so it meets the stored row.
    log = InferenceLog(pg.url.render_as_string(False), tmp_path / "spool", flush_interval_s=0.05)
    log.start()
    try:
        log.enqueue(rows)
        assert log.flush(WAIT_S)
        with caplog.at_level(logging.ERROR, logger="persistence.inference_log"):
            log.enqueue(
                [replace(rows[1], predicted_label="other"), replace(rows[4], latency_ms=9.0)]
            )
            assert log.flush(WAIT_S)
        stats = log.stats()
    finally:
        log.close()
    assert (stats.written, stats.conflicts, stats.dropped) == (5, 2, 0)
    assert len(stored_rows(pg)) == 5
    assert stored_rows(pg)[("req", 1)]["predicted_label"] == "card_arrival"  # untouched
    messages = [r.getMessage() for r in caplog.records]
    conflicting = sorted(m[1] for m in map(CONFLICT.search, messages) if m)
    assert conflicting == ["away#0", "req#1"]


def test_feedback_finds_predictions_in_any_partition(pg, tmp_path):
    now = utcnow()
    rows = [record("fb-today", now), record("fb-default", now - timedelta(days=400))]
    assert write(pg, rows, tmp_path).committed == 2
    items = [feedback.FeedbackItem(r.request_id, 0, "card_arrival", "test") for r in rows]
    answers = feedback.record(session_factory(pg), items, lambda *version: None)
    assert [a["status"] for a in answers] == ["created", "created"]


# --- maintenance ---------------------------------------------------------------------------------


def test_a_new_day_takes_its_rows_out_of_the_default_partition(pg, tmp_path):
    now = utcnow()
    later = now + timedelta(days=30)
    rows = [record("skewed", later, item=i, client_request_id=f"c{i}") for i in range(3)] + [
        record("later-still", later + timedelta(days=1))
    ]
    assert write(pg, rows, tmp_path).committed == 4
    before = stored_rows(pg)
    assert set(placed(pg).values()) == {DEFAULT_PARTITION}

    with pg.begin() as connection:
        # Another session time zone: the bounds stay UTC midnights.
        connection.exec_driver_sql("SET LOCAL TIME ZONE 'America/New_York'")
        made = ensure_partitions(connection, later, 0)
    new = partition_name(utc_day(later))
    assert made == [new]
    assert stored_rows(pg) == before  # nothing lost, nothing changed
    assert placed(pg) == {
        **{("skewed", i): new for i in range(3)},
        ("later-still", 0): DEFAULT_PARTITION,
    }
    # The attached partition has the parent's key and indexes: a replay is still stored once.
    with pg.connect() as connection:
        indexes = connection.execute(
            text("SELECT count(*) FROM pg_indexes WHERE tablename = :t"), {"t": new}
        ).scalar_one()
    assert indexes == 3
    assert (write(pg, rows, tmp_path).committed, len(stored_rows(pg))) == (4, 4)
    with pg.begin() as connection:
        assert ensure_partitions(connection, later, 0) == []  # idempotent


def test_new_days_made_while_writers_write_refuse_no_row(pg, tmp_path, caplog):
    """Writers keep inserting rows of today and of days still in the default partition while
    those days get their partitions: no batch is refused (an INSERT routing with the partitions
    of before would put a row into the default partition and have it refused), none is lost."""
    url = pg.url.render_as_string(False)
    now = utcnow()
    days = 12
    stop = threading.Event()
    outcomes: list = []

    def write_until_stopped(writer: int) -> None:
        database = Database(url, Quarantine(tmp_path / f"q{writer}", Counters(None)))
        try:
            batch = 0
            while not stop.is_set():
                ahead = timedelta(days=10 + batch % days)
                rows = [
                    record(f"w{writer}-{batch}", now + (ahead if i % 2 else timedelta()), item=i)
                    for i in range(40)
                ]
                outcomes.append(database.insert(rows))
                batch += 1
        finally:
            database.engine.dispose()

    writers = [threading.Thread(target=write_until_stopped, args=(n,)) for n in range(3)]
    with caplog.at_level(logging.WARNING, logger="persistence.inference_log"):
        for thread in writers:
            thread.start()
        try:
            made = []
            for day in range(days):
                time.sleep(0.05)
                with pg.begin() as connection:
                    made += ensure_partitions(connection, now + timedelta(days=10 + day), 0)
        finally:
            stop.set()
            for thread in writers:
                thread.join(WAIT_S)
    assert len(made) == days
    assert not [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert all(not (o.unsent or o.rejected or o.conflicts) for o in outcomes)
    with pg.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM inferences")).scalar_one()
        waiting = connection.execute(text(f"SELECT count(*) FROM {DEFAULT_PARTITION}")).scalar()
    assert count == sum(o.committed for o in outcomes) == 40 * len(outcomes)
    assert waiting == 0  # every day written to has its partition now


def test_drop_expired_drops_old_days_only_and_never_the_default(pg, tmp_path):
    now = utcnow()
    with pg.begin() as connection:
        made = ensure_partitions(connection, now - timedelta(days=40), 2)
    assert len(made) == 3
    rows = [
        record("old", now - timedelta(days=39)),
        record("old-in-default", now - timedelta(days=100)),
        record("recent-in-default", now - timedelta(days=10)),
        record("today", now),
    ]
    assert write(pg, rows, tmp_path).committed == 4

    with pg.begin() as connection:
        assert drop_expired(connection, now, 0) == []  # 0 keeps everything
    assert len(stored_rows(pg)) == 4
    with pg.begin() as connection:
        dropped = drop_expired(connection, now, 30)
    assert dropped == made  # oldest first
    assert DEFAULT_PARTITION in partition_names(pg)
    assert partition_name(utc_day(now)) in partition_names(pg)
    assert set(stored_rows(pg)) == {("recent-in-default", 0), ("today", 0)}
    with pg.begin() as connection:
        assert drop_expired(connection, now, 30) == []  # idempotent


def test_maintain_is_idempotent_and_leaves_the_work_to_the_lock_holder(pg):
    now = utcnow()
    far = now + timedelta(days=20)
    with pg.begin() as connection:
        done = maintain(connection, far, days_ahead=1, retention_days=10)
    # Everything up to 10 days before `far` is gone: today's partitions among them.
    assert done.created == (
        partition_name(utc_day(far)),
        partition_name(utc_day(far) + timedelta(days=1)),
    )
    assert partition_name(utc_day(now)) in done.dropped
    with pg.begin() as connection:
        assert (
            maintain(connection, far, days_ahead=1, retention_days=10) == partitions.Maintenance()
        )

    holder = pg.connect()
    transaction = holder.begin()
    try:
        holder.execute(
            text("SELECT pg_advisory_xact_lock(:k)"), {"k": partitions.MAINTENANCE_LOCK_KEY}
        )
        with pg.begin() as connection:
            busy = maintain(connection, now, days_ahead=AHEAD, retention_days=0)
            assert ensure_partitions(connection, now, AHEAD) == []
        assert busy == partitions.Maintenance(busy=True)
        assert partition_name(utc_day(now)) not in partition_names(pg)  # left to the holder
    finally:
        transaction.rollback()
        holder.close()


def test_the_log_writer_keeps_the_partitions_and_survives_a_failure(
    pg, tmp_path, caplog, monkeypatch
):
    url = pg.url.render_as_string(False)
    now = utcnow()
    with pg.begin() as connection:
        old = ensure_partitions(connection, now - timedelta(days=60), 0)
        connection.exec_driver_sql(f"DROP TABLE {partition_name(utc_day(now) + timedelta(days=2))}")
    log = InferenceLog(url, tmp_path / "spool", retention_days=30, partitions_ahead_days=AHEAD)
    log.start()
    try:
        log.enqueue([record("while-maintaining", now)])
        assert log.flush(WAIT_S)
    finally:
        log.close()
    names = partition_names(pg)
    assert partition_name(utc_day(now) + timedelta(days=2)) in names  # made again
    assert old[0] not in names  # expired
    assert placed(pg) == {("while-maintaining", 0): partition_name(utc_day(now))}

    # A lock it cannot get in time: a WARNING, and the rows are written all the same.
    monkeypatch.setattr(partitions, "LOCK_TIMEOUT_MS", 200)
    with pg.begin() as connection:
        connection.exec_driver_sql(f"DROP TABLE {partition_name(utc_day(now) + timedelta(days=3))}")
    blocker = pg.connect()
    transaction = blocker.begin()
    blocker.exec_driver_sql(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE")
    log = InferenceLog(url, tmp_path / "spool")
    try:
        with caplog.at_level(logging.WARNING, logger="persistence.inference_log"):
            log.start()
            log.enqueue([record("despite-the-lock", now)])
            assert log.flush(WAIT_S)
        stats = log.stats()
    finally:
        transaction.rollback()
        blocker.close()
        log.close()
    assert stats.written == 1 and stats.database_available
    assert any("partition maintenance failed" in r.getMessage() for r in caplog.records)
    assert ("despite-the-lock", 0) in placed(pg)


# --- the script ----------------------------------------------------------------------------------


@pytest.fixture
def run_script(monkeypatch):
    """The script's main, in process, leaving the session's logging alone."""
    module = load_script("maintain_partitions")
    monkeypatch.setattr(module, "configure_logging", lambda level: None)
    return module.main


def test_script_help():
    shown = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "maintain_partitions.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shown.returncode == 0
    for option in ("--database-url", "--days-ahead", "--retention-days", "--now", "--dry-run"):
        assert option in shown.stdout
    assert "exit status" in shown.stdout


def test_script_plans_then_makes_and_drops(pg, tmp_path, run_script, capsys):
    url = pg.url.render_as_string(False)
    now = utcnow()
    far = now + timedelta(days=30)
    assert write(pg, [record("waiting", far)], tmp_path).committed == 1
    argv = ["--database-url", url, "--now", far.isoformat(), "--days-ahead", "1"]
    before = partition_names(pg)

    assert run_script([*argv, "--retention-days", "3", "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert partition_names(pg) == before  # nothing changed
    assert f"would make {partition_name(utc_day(far))}" in planned
    assert f"would drop {partition_name(utc_day(now))}" in planned
    assert "would move 1 row(s) out of inferences_default" in planned

    assert run_script([*argv, "--retention-days", "3"]) == 0
    done = capsys.readouterr().out
    made = planned.replace("would make", "made").replace("would drop", "dropped")
    assert done.splitlines()[:-1] == made.splitlines()[:-1]  # what was planned was done
    assert placed(pg) == {("waiting", 0): partition_name(utc_day(far))}

    assert run_script([*argv, "--retention-days", "3"]) == 0
    assert "made 0 partition(s), dropped 0" in capsys.readouterr().out


def test_script_on_sqlite_and_on_a_dead_database(tmp_path, run_script, capsys):
    from persistence.db import upgrade

    url = f"sqlite:///{tmp_path / 'dc.sqlite'}"
    upgrade(url)
    assert run_script(["--database-url", url]) == 0
    assert "not partitioned" in capsys.readouterr().out
    dead = "postgresql+psycopg2://postgres@127.0.0.1:9/postgres"
    assert run_script(["--database-url", dead]) == 1
