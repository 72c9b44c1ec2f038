"""The non-blocking inference log on real databases: PostgreSQL (marked `db`) and SQLite files.

Outages are real: `pg_cluster` is a PostgreSQL server of the test's own that is stopped and
started again; a "dead" database is a port nobody listens on; a killed worker is a real process
killed with SIGKILL while it holds its spool file. Waits use generous timeouts only so that a
broken build fails instead of hanging; nothing asserts how long anything took.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select

from persistence.db import make_engine, upgrade
from persistence.inference_log import (
    InferenceLog,
    InferenceRecord,
    LogStats,
    record_from_json,
    record_to_json,
    record_to_line,
)
from persistence.inference_log.journal import Journal
from persistence.models import Inference
from tests.conftest import REPO, free_port

WAIT_S = 30.0  # only against hanging; every wait ends as soon as its condition holds
T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def make_records(request_id: str, n: int = 3, **overrides) -> list[InferenceRecord]:
    """One request of `n` texts; values vary per item so round trips are checked for real."""
    # Created in UTC+2: stored and read back as the same instant in UTC.
    created = (T0 + timedelta(seconds=n)).astimezone(timezone(timedelta(hours=2)))
    records = []
    for item in range(n):
        values = dict(
            request_id=request_id,
            item=item,
            created_at=created,
            model="banking77",
            region="eu",
            version="v0003",
            model_type="keras-mlp",
            input_text=f'where is my card {item}? Ünïcödé ✓ "quoted"\nsecond line',
            predicted_label=f"card_arrival_{item % 3}",
            probability=0.5 + item / (4 * n),
            top_k=[
                {"label": f"card_arrival_{item % 3}", "probability": 0.75},
                {"label": "lost_or_stolen_card", "probability": 0.125},
            ],
            latency_ms=1.25 + item,
            cache_hit=item % 2 == 0,
            embedder_fingerprint="f" * 64,
        )
        values.update(overrides)
        records.append(InferenceRecord(**values))
    return records


def new_log(url: str, spool_dir: Path, **kwargs) -> InferenceLog:
    """A log with short intervals, so that tests do not wait on production defaults."""
    options = dict(flush_interval_s=0.05, retry_interval_s=0.2, batch_size=50)
    options.update(kwargs)
    return InferenceLog(url, spool_dir, **options)


def dead_url() -> str:
    """A PostgreSQL URL on a loopback port nobody listens on: every connect is refused."""
    return f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/postgres"


def row_count(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(select(func.count()).select_from(Inference)).scalar_one()


def distinct_keys(engine) -> int:
    query = select(func.count()).select_from(
        select(Inference.request_id, Inference.item).distinct().subquery()
    )
    with engine.connect() as connection:
        return connection.execute(query).scalar_one()


def stored(engine, request_id: str) -> list:
    query = select(Inference).where(Inference.request_id == request_id).order_by(Inference.item)
    with engine.connect() as connection:
        return list(connection.execute(query).all())


def spool_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("spool-*.jsonl")) if folder.exists() else []


def wait_for(condition, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {timeout_s} s: {what}")
        time.sleep(0.05)


def assert_round_trip(engine, records: list[InferenceRecord]) -> None:
    """The stored rows of one request equal the records, field by field."""
    rows = stored(engine, records[0].request_id)
    assert len(rows) == len(records)
    for row, record in zip(rows, records, strict=True):
        assert row.item == record.item
        assert row.created_at == record.created_at  # the same instant...
        assert row.created_at.utcoffset() == timedelta(0)  # ...handed back in UTC
        for name in ("model", "region", "version", "model_type", "input_text"):
            assert getattr(row, name) == getattr(record, name)
        assert row.predicted_label == record.predicted_label
        assert row.probability == pytest.approx(record.probability)
        assert row.top_k == record.top_k
        assert row.latency_ms == pytest.approx(record.latency_ms)
        assert row.cache_hit is record.cache_hit
        assert row.embedder_fingerprint == record.embedder_fingerprint


def write_spool_while_down(spool_dir: Path, records: list[InferenceRecord]) -> None:
    """Spool `records` the way a worker does when its database is unreachable."""
    log = new_log(dead_url(), spool_dir).start()
    log.enqueue(records)
    assert log.flush()
    log.close()
    stats = log.stats()
    assert (stats.spooled, stats.written, stats.database_available) == (len(records), 0, False)


# --- unit level: the record format ---------------------------------------------------------------


def test_spool_line_round_trips_a_record():
    record = make_records("r-json", 2)[1]
    line = record_to_json(record)
    assert "\n" not in line and line.isascii()
    again = record_from_json(line.encode())
    assert again == record  # created_at: the same instant, now in UTC
    assert again.created_at.utcoffset() == timedelta(0)
    with pytest.raises(ValueError):
        record_from_json(line[: len(line) // 2])  # a torn line


def test_journal_lines_round_trip_every_record():
    """The fast journal line (UTF-8, orjson) reads back as the same record, and the cases it
    cannot write exactly (a non-finite float, an unpaired surrogate) take the ASCII form."""
    plain = make_records("line", 2, client_request_id="client-7")[1]
    cases = [
        plain,
        make_records("no-client", 1)[0],
        make_records("null", 1, input_text="null and void")[0],
        make_records("surrogate", 1, input_text="bad \ud800 text")[0],
        make_records("nan", 1, probability=float("nan"), latency_ms=float("inf"))[0],
    ]
    for record in cases:
        line = record_to_line(record)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        again = record_from_json(line)
        if record.request_id == "nan":
            assert math.isnan(again.probability) and again.latency_ms == math.inf
            assert replace(again, probability=0.0, latency_ms=0.0) == replace(
                record, probability=0.0, latency_ms=0.0
            )
        else:
            assert again == record
    assert "\u00dc".encode() in record_to_line(plain)  # UTF-8, not escaped: the fast path
    assert record_to_line(cases[3]).isascii()  # the surrogate: the ASCII form
    # A line written before client_request_id existed still reads, as None.
    old = json.loads(record_to_json(plain))
    del old["client_request_id"]
    assert record_from_json(json.dumps(old)) == replace(plain, client_request_id=None)


def _locked(path: Path) -> bool:
    """Whether some open file (this process's journal included) holds a lock on `path`."""
    with open(path, "rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


def test_journal_deletes_settled_segments_and_releases_kept_ones(tmp_path):
    """The accounting of the journal on its own: a sealed segment whose rows are all settled is
    deleted, one that keeps rows is unlocked and left for replay, the live one is emptied when
    all its rows are settled, and every segment is locked while this process owns it."""
    journal = Journal(tmp_path, segment_bytes=100)
    line = b"x" * 60 + b"\n"
    first = journal.append(line, 1)
    assert journal.append(line, 1) is first  # 122 bytes: now sealed
    second = journal.append(line, 1)  # a new live segment
    assert second is not first and _locked(first.path) and _locked(second.path)
    assert journal.private_paths() == {str(first.path), str(second.path)}

    journal.account(settled={first: 2})
    assert not first.path.exists()  # every row committed: deleted

    assert not journal.account(kept={second: 1}, sync=True)  # the database is away
    assert str(second.path) not in journal.private_paths() and journal.has_kept()
    journal.seal_kept()  # the database is back: replay it
    assert second.path.exists() and not _locked(second.path)  # released, for any replayer
    assert not journal.has_kept()

    third = journal.append(line, 1)
    journal.account(settled={third: 1})
    assert third.path.stat().st_size == 0 and _locked(third.path)  # emptied, still live
    spill = journal.append(line, 1, spill=True)  # kept from the start
    assert spill is not third and str(spill.path) not in journal.private_paths()
    journal.close()
    assert not third.path.exists()  # nothing left in it
    assert spill.path.exists() and not _locked(spill.path)  # left for replay
    assert sorted(tmp_path.glob("spool-*.jsonl")) == sorted([second.path, spill.path])


def test_rows_are_in_the_journal_when_enqueue_returns(tmp_path):
    """Before the caller can answer, its rows are on disk: nothing else has run (the writer is
    not even started), yet the segment holds exactly the records, one line each."""
    log = new_log(dead_url(), tmp_path)
    records = make_records("journaled", 3, client_request_id="client-7")
    log.enqueue(records)
    (segment,) = spool_files(tmp_path)
    assert f"spool-{os.getpid()}-" in segment.name
    assert [record_from_json(line) for line in segment.read_bytes().splitlines()] == records
    more = make_records("journaled-2", 1)
    log.enqueue(more)
    lines = segment.read_bytes().splitlines()
    assert [record_from_json(line) for line in lines] == records + more
    stats = log.stats()
    # Rows in flight are the journal, not the spool: nothing waits for replay yet.
    assert (stats.queue_depth, stats.spooled, stats.spool_files) == (4, 0, 0)
    log.close()  # the database is dead: the segment is kept, unlocked, for a replay
    assert log.stats().spooled == 4 and log.stats().spool_files == 1


def test_nothing_happens_before_start(tmp_path):
    spool = tmp_path / "spool"
    before = threading.active_count()
    log = InferenceLog(dead_url(), spool)
    stats = log.stats()
    assert isinstance(stats, LogStats)
    assert threading.active_count() == before
    assert not spool.exists()
    assert stats.as_dict()["enqueued"] == 0
    log.close()
    assert not spool.exists()


# --- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.db
def test_concurrent_requests_are_all_written_once(pg_engine, tmp_path):
    events: list[tuple[str, float]] = []
    lock = threading.Lock()

    def listener(kind: str, value: float) -> None:
        with lock:
            events.append((kind, value))

    log = new_log(pg_engine.url.render_as_string(False), tmp_path, listener=listener).start()
    requests = {t: [make_records(f"req-{t}-{i}", 1 + i % 4) for i in range(40)] for t in range(6)}

    def serve(thread: int) -> None:
        for records in requests[thread]:
            log.enqueue(records)

    threads = [threading.Thread(target=serve, args=(t,)) for t in requests]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert log.flush(WAIT_S)
    total = sum(len(r) for per_thread in requests.values() for r in per_thread)
    try:
        assert row_count(pg_engine) == distinct_keys(pg_engine) == total
        assert_round_trip(pg_engine, requests[3][7])
        stats = log.stats()
        assert (stats.enqueued, stats.written, stats.spooled, stats.dropped) == (total, total, 0, 0)
        assert stats.database_available and stats.queue_depth == 0 and stats.lag_s >= 0
        assert sum(v for k, v in events if k == "written") == total
        assert sum(v for k, v in events if k == "enqueued") == total
        assert any(k == "lag" for k, _ in events)
    finally:
        log.close()
    assert spool_files(tmp_path) == []


@pytest.mark.db
def test_rows_enqueued_twice_or_replayed_are_stored_once(pg_engine, tmp_path):
    url = pg_engine.url.render_as_string(False)
    records = make_records("dup-1", 5)
    write_spool_while_down(tmp_path, records)  # the same rows, also in the spool
    log = new_log(url, tmp_path / "other-spool").start()
    try:
        log.enqueue(records)
        log.enqueue(records)
        log.enqueue(records[2:4])
        assert log.flush(WAIT_S)
        assert row_count(pg_engine) == 5
        # The spool of the (closed, hence unlocked) first log, replayed into stored rows.
        replayer = new_log(url, tmp_path)
        assert replayer.replay_spool() == 5
        replayer.close()
    finally:
        log.close()
    assert row_count(pg_engine) == 5
    assert spool_files(tmp_path) == []
    assert_round_trip(pg_engine, records)


@pytest.mark.db
def test_database_outage_spools_without_blocking_then_replays(pg_cluster, tmp_path):
    engine = make_engine(pg_cluster.url)
    log = new_log(pg_cluster.url, tmp_path, max_queue=20, batch_size=10).start()
    try:
        before = [make_records(f"before-{i}", 3) for i in range(10)]
        for records in before:
            log.enqueue(records)
        assert log.flush(WAIT_S)
        wait_for(
            lambda: row_count(engine) == 30 and not log.stats().spool_files,
            "the first rows are stored, spilled ones replayed",
        )
        # Some of them may have spilled from the small queue (and been replayed already).
        base = log.stats()
        assert base.written + base.spooled == 30 and base.replayed == base.spooled

        pg_cluster.stop()
        during = [make_records(f"during-{i}", 4) for i in range(25)]  # 100 rows > max_queue

        def serve() -> None:
            for records in during:
                log.enqueue(records)

        # enqueue must return even though the database is gone: in a thread, so that a
        # blocking enqueue fails the test instead of hanging it.
        request_thread = threading.Thread(target=serve, daemon=True)
        request_thread.start()
        request_thread.join(WAIT_S)
        assert not request_thread.is_alive(), "enqueue blocked while the database was down"
        assert log.flush(WAIT_S)
        stats = log.stats()
        assert not stats.database_available
        assert stats.spooled - base.spooled == 100 and stats.dropped == 0
        assert stats.spool_files >= 1 and stats.spool_bytes > 0

        pg_cluster.start()
        wait_for(lambda: log.stats().spool_files == 0, "the spool is replayed")
        assert row_count(engine) == distinct_keys(engine) == 130
        stats = log.stats()
        assert stats.database_available
        assert stats.replayed == stats.spooled
        assert_round_trip(engine, during[17])

        after = make_records("after", 2)  # and the writer is back to the database
        log.enqueue(after)
        assert log.flush(WAIT_S)
        assert row_count(engine) == 132
        assert log.stats().written == base.written + 2
    finally:
        log.close()
        engine.dispose()
    assert spool_files(tmp_path) == []


@pytest.mark.db
def test_full_queue_spills_to_the_spool_and_nothing_is_lost(pg_engine, tmp_path):
    log = new_log(pg_engine.url.render_as_string(False), tmp_path, max_queue=3)
    try:
        # Not started: nothing takes rows off the queue, so it fills up after three rows.
        log.enqueue(make_records("full-1", 2))
        log.enqueue(make_records("full-2", 4))
        log.enqueue(make_records("full-3", 4))
        stats = log.stats()
        assert (stats.enqueued, stats.queue_depth, stats.spooled) == (10, 3, 7)
        assert stats.spool_files == 1
        log.start()
        wait_for(lambda: row_count(pg_engine) == 10, "all rows in the database")
        wait_for(lambda: log.stats().spool_files == 0, "the spool is replayed")
        stats = log.stats()
        assert (stats.written, stats.replayed, stats.dropped) == (3, 7, 0)
    finally:
        log.close()
    assert distinct_keys(pg_engine) == 10


@pytest.mark.db
def test_close_writes_the_queue_to_the_database(pg_engine, tmp_path):
    # A long flush interval: close() must not wait for batches to fill.
    log = new_log(pg_engine.url.render_as_string(False), tmp_path, flush_interval_s=30).start()
    for i in range(20):
        log.enqueue(make_records(f"close-{i}", 3))
    log.close()
    log.close()  # twice: gunicorn's worker_exit may race another shutdown path
    assert row_count(pg_engine) == 60
    assert log.stats().written == 60
    assert spool_files(tmp_path) == []
    # After close, rows go straight to the spool (still never raising).
    log.enqueue(make_records("late", 2))
    stats = log.stats()
    assert stats.spooled == 2 and stats.spool_files == 1


@pytest.mark.db
def test_close_with_database_down_spools_and_the_next_log_replays(pg_cluster, tmp_path):
    engine = make_engine(pg_cluster.url)
    log = new_log(pg_cluster.url, tmp_path).start()
    records = [make_records(f"shutdown-{i}", 5) for i in range(8)]
    try:
        pg_cluster.stop()
        for request in records:
            log.enqueue(request)
        log.close()
        stats = log.stats()
        assert (stats.spooled, stats.written, stats.dropped) == (40, 0, 0)
        assert len(spool_files(tmp_path)) == 1

        pg_cluster.start()
        successor = new_log(pg_cluster.url, tmp_path).start()  # as the restarted worker
        try:
            wait_for(lambda: row_count(engine) == 40, "the successor replays the spool")
            wait_for(lambda: not spool_files(tmp_path), "the replayed file is deleted")
            assert successor.stats().replayed == 40
        finally:
            successor.close()
        assert distinct_keys(engine) == 40
        assert_round_trip(engine, records[4])
    finally:
        engine.dispose()


CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.persistence.test_inference_log import make_records, new_log, dead_url
from pathlib import Path
log = new_log(dead_url(), Path({spool!r})).start()
log.enqueue(make_records("killed", 7))
assert log.flush()
print("spooled", flush=True)
time.sleep(600)
"""


@pytest.mark.db
def test_spool_of_a_killed_worker_is_replayed_and_a_live_one_is_not(pg_engine, tmp_path):
    code = CHILD.format(repo=str(REPO), spool=str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    log = new_log(pg_engine.url.render_as_string(False), tmp_path)
    try:
        assert child.stdout.readline().strip() == "spooled"
        (live_file,) = spool_files(tmp_path)
        assert f"spool-{child.pid}-" in live_file.name
        assert log.replay_spool() == 0  # locked by a live writer: left alone
        assert live_file.exists()

        os.kill(child.pid, signal.SIGKILL)  # no close(), no clean-up: the lock dies with it
        child.wait(WAIT_S)
        assert log.replay_spool() == 7
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        log.close()
    assert row_count(pg_engine) == 7
    assert spool_files(tmp_path) == []


CHILD_KILLED_WITH_ROWS_QUEUED = """
import sys, time
sys.path.insert(0, {repo!r})
from tests.persistence.test_inference_log import make_records, new_log
from pathlib import Path
# A batch that never fills and a long wait: rows stay on the queue until the process dies.
log = new_log({url!r}, Path({spool!r}), flush_interval_s=600, batch_size=10_000).start()
log.enqueue(make_records("written-before", 4))
assert log.flush()
for i in range(30):
    log.enqueue(make_records(f"queued-{{i}}", 2))
print("enqueued", flush=True)
time.sleep(600)
"""


@pytest.mark.db
def test_rows_queued_by_a_sigkilled_worker_are_replayed_from_its_journal(pg_engine, tmp_path):
    """SIGKILL gives no chance to flush: the rows still in the dead process's memory queue
    reach the database from its journal, replayed by the next log to start; the rows it had
    already written are not doubled, and nothing is taken for a conflict."""
    url = pg_engine.url.render_as_string(False)
    code = CHILD_KILLED_WITH_ROWS_QUEUED.format(repo=str(REPO), url=url, spool=str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        assert child.stdout.readline().strip() == "enqueued"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(WAIT_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert row_count(pg_engine) == 4  # the 60 queued rows died with the process's memory
    (journal,) = spool_files(tmp_path)
    assert f"spool-{child.pid}-" in journal.name
    successor = new_log(url, tmp_path).start()  # as the worker gunicorn starts in its place
    try:
        wait_for(lambda: row_count(pg_engine) == 64, "the dead worker's journal is replayed")
        wait_for(lambda: not spool_files(tmp_path), "the replayed journal is deleted")
        stats = successor.stats()
        assert stats.replayed >= 60 and (stats.conflicts, stats.dropped) == (0, 0)
    finally:
        successor.close()
    assert distinct_keys(pg_engine) == 64
    assert not list(tmp_path.glob("rejected-*.jsonl"))


@pytest.mark.db
def test_committed_segments_are_deleted_and_the_live_one_kept_small(pg_engine, tmp_path):
    """Segments rotate by size; once their rows are committed they are deleted, and the live
    one is emptied, so the disk holds only rows not yet in the database."""
    url = pg_engine.url.render_as_string(False)
    log = new_log(url, tmp_path, segment_bytes=4096, batch_size=25)  # not started yet
    requests = [make_records(f"seg-{i}", 2) for i in range(100)]
    for records in requests:
        log.enqueue(records)
    files = spool_files(tmp_path)
    lines = [line for path in files for line in path.read_bytes().splitlines()]
    assert len(files) > 5 and len(lines) == 200  # rotated, every row on disk exactly once
    assert log.stats().spool_files == 0  # all of it is the journal of rows in flight
    log.start()
    try:
        assert log.flush(WAIT_S)
        wait_for(
            lambda: sum(path.stat().st_size for path in spool_files(tmp_path)) == 0,
            "every committed segment deleted, the live one emptied",
        )
        assert len(spool_files(tmp_path)) <= 1
        assert row_count(pg_engine) == 200 and log.stats().written == 200
        # And it keeps doing so under a steady trickle.
        for i in range(40):
            log.enqueue(make_records(f"trickle-{i}", 3))
            if i % 10 == 9:
                assert log.flush(WAIT_S)
        assert log.flush(WAIT_S)
        assert sum(path.stat().st_size for path in spool_files(tmp_path)) == 0
    finally:
        log.close()
    assert spool_files(tmp_path) == []
    assert row_count(pg_engine) == 320


def _log_url(backend: str, request, tmp_path: Path) -> str:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'dc.sqlite'}"
        upgrade(url)
        return url
    return request.getfixturevalue("pg_engine").url.render_as_string(False)


@pytest.mark.parametrize("backend", [pytest.param("postgresql", marks=pytest.mark.db), "sqlite"])
def test_a_different_row_under_a_stored_key_is_quarantined_never_dropped(
    backend, request, tmp_path, caplog
):
    """An identical row under a stored key is a replay: silent. A different one is a conflict,
    on every path (a COPY/executemany batch, a single row, two rows of one batch, a replayed
    spool): logged at ERROR, kept in the rejected file, counted; the stored row is untouched."""
    url = _log_url(backend, request, tmp_path)
    engine = make_engine(url)
    spool = tmp_path / "spool"
    log = new_log(url, spool).start()
    original = make_records("taken", 3)
    try:
        log.enqueue(original)
        assert log.flush(WAIT_S)
        with caplog.at_level(logging.ERROR, logger="persistence.inference_log"):
            log.enqueue(original)  # a replay of the same rows
            assert log.flush(WAIT_S)
            assert log.stats().conflicts == 0 and not caplog.records
            twin = make_records("twin", 1)[0]
            log.enqueue(  # one batch: two conflicts, a twin pair, a fresh row
                [
                    replace(original[1], predicted_label="something_else"),
                    replace(original[2], client_request_id="someone-else"),
                    twin,
                    replace(twin, probability=0.01),
                    *make_records("fresh", 1),
                ]
            )
            assert log.flush(WAIT_S)
            log.enqueue([replace(original[0], latency_ms=99.0)])  # a single row
            assert log.flush(WAIT_S)
            stats = log.stats()
            assert (stats.conflicts, stats.dropped, stats.written) == (4, 0, 8)
        write_spool_while_down(spool / "other", [replace(original[0], top_k=[])])
        replayer = new_log(url, spool / "other")
        with caplog.at_level(logging.ERROR, logger="persistence.inference_log"):
            assert replayer.replay_spool() == 0
        replayer.close()
        assert replayer.stats().conflicts == 1 and spool_files(spool / "other") == []
    finally:
        log.close()
    try:
        assert_round_trip(engine, original)  # the stored rows are what was first written
        assert len(stored(engine, "twin")) == 1 and stored(engine, "twin")[0].probability != 0.01
        assert row_count(engine) == 5
    finally:
        engine.dispose()
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sorted(re.search(r"conflicting row (\S+):", m)[1] for m in messages) == [
        "taken#0",
        "taken#0",
        "taken#1",
        "taken#2",
        "twin#0",
    ]
    entries = [
        json.loads(line)
        for path in spool.rglob("rejected-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(entries) == 5 and all(entry["error"].startswith("conflict") for entry in entries)
    assert {entry["record"]["predicted_label"] for entry in entries} >= {"something_else"}


@pytest.mark.db
def test_a_bad_row_is_quarantined_and_the_rest_of_its_batch_written(pg_engine, tmp_path, caplog):
    records = make_records("bad", 10)
    records[3] = InferenceRecord(**{**records[3].__dict__, "predicted_label": "x" * 300})
    records[6] = InferenceRecord(**{**records[6].__dict__, "probability": "not a number"})

    def broken_listener(kind: str, value: float) -> None:
        raise RuntimeError("a metrics bug")

    log = new_log(pg_engine.url.render_as_string(False), tmp_path, listener=broken_listener)
    log.start()
    try:
        with caplog.at_level(logging.ERROR, logger="persistence.inference_log"):
            log.enqueue(records)
            assert log.flush(WAIT_S)
        assert sorted(row.item for row in stored(pg_engine, "bad")) == [0, 1, 2, 4, 5, 7, 8, 9]
        stats = log.stats()
        assert (stats.written, stats.dropped, stats.spooled) == (8, 2, 0)
        assert stats.database_available  # a bad value is not an outage
        (rejected,) = tmp_path.glob("rejected-*.jsonl")
        lines = [json.loads(line) for line in rejected.read_text().splitlines()]
        refused = [entry["record"] for entry in lines if isinstance(entry["record"], dict)]
        assert [record["item"] for record in refused] == [3]  # too long for the column
        assert any("not a number" in str(entry["record"]) for entry in lines)  # not a float
        assert sum("rejected row bad#" in r.getMessage() for r in caplog.records) == 2
    finally:
        log.close()


# --- spool files and SQLite ----------------------------------------------------------------------


def test_torn_and_corrupt_lines_are_skipped_and_the_rest_replayed(tmp_path, caplog):
    spool = tmp_path / "spool"
    records = make_records("torn", 6)
    write_spool_while_down(spool, records[:3])
    (path,) = spool_files(spool)
    with open(path, "ab") as handle:
        handle.write(b"this is not json\n")
        handle.write(record_to_json(records[3]).encode() + b"\n")
    write_spool_while_down(spool, records[4:])
    (last,) = [other for other in spool_files(spool) if other != path]
    with open(last, "ab") as handle:  # a worker killed in the middle of a write
        handle.write(record_to_json(make_records("torn-x", 1)[0]).encode()[:40])

    url = f"sqlite:///{tmp_path / 'dc.sqlite'}"
    upgrade(url)
    log = new_log(url, spool)
    with caplog.at_level(logging.WARNING, logger="persistence.inference_log"):
        assert log.replay_spool() == 6
    log.close()
    engine = make_engine(url)
    try:
        assert row_count(engine) == 6
        assert_round_trip(engine, records)
    finally:
        engine.dispose()
    assert spool_files(spool) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("torn line" in message for message in warnings)
    assert any("unreadable line" in message for message in warnings)
    (rejected,) = spool.glob("rejected-*.jsonl")
    kept = [json.loads(line)["line"] for line in rejected.read_text().splitlines()]
    assert "this is not json\n" in kept and any("torn-x" in line for line in kept)


def test_sqlite_file_with_two_workers(tmp_path):
    url = f"sqlite:///{tmp_path / 'db' / 'dc.sqlite'}"
    upgrade(url)
    spool = tmp_path / "spool"
    workers = [new_log(url, spool, batch_size=20).start() for _ in range(2)]
    requests = [make_records(f"lite-{i}", 1 + i % 5) for i in range(120)]

    def serve(offset: int) -> None:
        for i in range(offset, len(requests), 4):
            workers[i % 2].enqueue(requests[i])
            workers[i % 2].enqueue(requests[i])  # a retried request: stored once

    threads = [threading.Thread(target=serve, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    for worker in workers:
        assert worker.flush(WAIT_S)
    for worker in workers:
        worker.close()
    # Rows that met a busy file went to the spool: replay whatever is left (usually nothing).
    replayer = new_log(url, spool)
    replayer.replay_spool()
    replayer.close()
    assert spool_files(spool) == []
    total = sum(len(r) for r in requests)
    engine = make_engine(url)
    try:
        assert row_count(engine) == distinct_keys(engine) == total
        assert_round_trip(engine, requests[42])
    finally:
        engine.dispose()
    assert sum(w.stats().dropped for w in workers) == 0
    assert sum(w.stats().enqueued for w in workers) == 2 * total


def test_unwritable_spool_counts_rows_as_dropped(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    log = new_log(dead_url(), blocker / "spool", max_queue=1)  # the spool cannot be created
    with caplog.at_level(logging.ERROR, logger="persistence.inference_log"):
        log.enqueue(make_records("lost", 3))  # one row queued, two spill and fail: no raise
    stats = log.stats()
    assert (stats.enqueued, stats.spooled, stats.dropped, stats.queue_depth) == (3, 0, 2, 1)
    assert any("DROPPED 2 rows" in r.getMessage() for r in caplog.records)
    log.close()


def test_replay_script_help_and_replay(tmp_path):
    script = [sys.executable, str(REPO / "scripts" / "replay_spool.py")]
    shown = subprocess.run([*script, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0
    assert "--spool-dir" in shown.stdout and "--database-url" in shown.stdout

    spool = tmp_path / "spool"
    records = make_records("script", 9)
    write_spool_while_down(spool, records)
    url = f"sqlite:///{tmp_path / 'fresh.sqlite'}"  # not even migrated: the script does it
    env = {**os.environ, "DC_LOG_LEVEL": "WARNING"}
    done = subprocess.run(
        [*script, "--spool-dir", str(spool), "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 9 rows" in done.stdout
    assert spool_files(spool) == []
    engine = make_engine(url)
    try:
        assert_round_trip(engine, records)
    finally:
        engine.dispose()


@pytest.mark.db
def test_close_does_not_hang_on_a_hanging_database(pg_engine, tmp_path, caplog):
    url = pg_engine.url.render_as_string(False)
    log = new_log(url, tmp_path, batch_size=10).start()
    blocker = pg_engine.connect()
    transaction = blocker.begin()
    try:
        # Every INSERT now waits for this lock: the database "hangs" without refusing anything.
        blocker.exec_driver_sql("LOCK TABLE inferences IN ACCESS EXCLUSIVE MODE")
        records = [make_records(f"hang-{i}", 5) for i in range(6)]
        for request in records:
            log.enqueue(request)
        with caplog.at_level(logging.ERROR, logger="persistence.inference_log"):
            log.close(timeout_s=1.0)  # returns although the writer is stuck in an INSERT
        assert any("still busy" in r.getMessage() for r in caplog.records)
        assert log.stats().spooled == 30  # the batch it held and the rest of the queue
    finally:
        transaction.rollback()
        blocker.close()
    # The stuck INSERT may now complete as well: the spool replays onto it without doubles.
    replayer = new_log(url, tmp_path)
    wait_for(lambda: replayer.replay_spool() >= 0 and not spool_files(tmp_path), "replayed")
    replayer.close()
    assert row_count(pg_engine) == distinct_keys(pg_engine) == 30
