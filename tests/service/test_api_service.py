"""The whole stack as it runs in production: the embedder service and the prediction API under
real gunicorn (several workers), a real PostgreSQL, the real encoder and trained heads.

Every response is validated against the API's `/openapi.json` (`validating_session`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import func, select

from persistence.db import make_engine
from persistence.models import Inference
from tests.conftest import run_gunicorn
from tests.heads_support import register_versions
from tests.openapi_support import SpecChecker, validating_session

pytestmark = [pytest.mark.db, pytest.mark.slow]

TOKEN = "service-test-token"
PHRASES = [
    "I lost my card", "my card has not arrived yet", "what is the exchange rate",
    "my top up failed", "my pin is blocked", "why was I charged for a cash withdrawal",
]  # fmt: skip


@pytest.fixture(scope="module")
def embedder_url():
    env = {"DC_LOG_LEVEL": "WARNING", "DC_EMBEDDER_THREADS": "16"}
    with run_gunicorn("embedder/gunicorn.conf.py", env) as (url, _):
        yield url


def api_env(database_url: str, embedder_url: str, versions, spool_dir, **extra) -> dict:
    return {
        "DC_DATABASE_URL": database_url,
        "DC_EMBEDDER_MODE": "remote",
        "DC_EMBEDDER_URL": embedder_url,
        "DC_SERVING_REGION": versions[0].region,
        "DC_ARTIFACTS_DIR": str(versions[0].version_dir.parent.parent.parent),
        "DC_SPOOL_DIR": str(spool_dir),
        "DC_ADMIN_TOKEN": TOKEN,
        "DC_MODEL_REFRESH_S": "0.5",
        "DC_LOG_FLUSH_INTERVAL_MS": "50",
        "DC_LOG_RETRY_S": "0.5",
        "DC_API_WORKERS": "2",
        "DC_API_THREADS": "8",
        "DC_LOG_LEVEL": "INFO",
        **{key: str(value) for key, value in extra.items()},
    }


def run_api(env: dict):
    return run_gunicorn("api/gunicorn.conf.py", env, port_env="DC_API_PORT")


def count_rows(url: str) -> int:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(select(func.count()).select_from(Inference)).scalar_one()
    finally:
        engine.dispose()


def distinct_keys(url: str) -> set[tuple[str, int]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(connection.execute(select(Inference.request_id, Inference.item)).all())
    finally:
        engine.dispose()


def logged_ids(url: str) -> list[tuple[str, str | None]]:
    """(request_id, client_request_id) of every row."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            query = select(Inference.request_id, Inference.client_request_id)
            return [tuple(row) for row in connection.execute(query).all()]
    finally:
        engine.dispose()


def spool_left(folder) -> list:
    """Spool or journal files that still hold rows."""
    return [p for p in folder.glob("spool-*.jsonl") if p.stat().st_size] if folder.exists() else []


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        time.sleep(0.2)
    return value


def checker_for(url: str) -> SpecChecker:
    return SpecChecker(requests.get(url + "/openapi.json", timeout=10).json())


def predict_many(url: str, checker: SpecChecker, count: int, threads: int = 8) -> list[str]:
    """`count` single-text predictions from `threads` clients; returns the server's request ids
    (each request sends an X-Request-ID of its own, which must come back beside it)."""
    local = threading.local()

    def one(i: int) -> str:
        if not hasattr(local, "session"):
            local.session = validating_session(checker)
        client_id = f"req-{uuid.uuid4().hex}"
        response = local.session.post(
            url + "/predict/tiny_banking",
            json={"text": PHRASES[i % len(PHRASES)]},
            headers={"X-Request-ID": client_id},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["client_request_id"] == client_id
        assert response.headers["X-Client-Request-ID"] == client_id
        return response.json()["request_id"]

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


def test_n_predictions_give_exactly_n_rows(pg_engine, tiny_versions, embedder_url, tmp_path):
    url = pg_engine.url.render_as_string(hide_password=False)
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    with run_api(api_env(url, embedder_url, tiny_versions, tmp_path / "spool")) as (api, _):
        checker = checker_for(api)
        ids = predict_many(api, checker, 150)
        batch = validating_session(checker).post(
            api + "/predict/tiny_banking", json={"texts": PHRASES}, timeout=30
        )
        assert batch.status_code == 200
        expected = {(i, 0) for i in ids} | {
            (batch.json()["request_id"], n) for n in range(len(PHRASES))
        }
        wait_for(lambda: count_rows(url) >= len(expected), 30, "all rows written")
        time.sleep(0.5)  # nothing more may arrive
        assert count_rows(url) == len(expected)
        assert distinct_keys(url) == expected
        assert checker.checked >= 151


def test_database_outage_loses_nothing(pg_cluster, tiny_versions, embedder_url, tmp_path):
    """With PostgreSQL stopped mid-run every prediction still answers 200; after it restarts,
    every row is there exactly once (spooled on disk meanwhile, then replayed)."""
    engine = make_engine(pg_cluster.url)
    register_versions(engine, tiny_versions, promoted=tiny_versions[0].version)
    engine.dispose()
    env = api_env(pg_cluster.url, embedder_url, tiny_versions, tmp_path / "spool")
    with run_api(env) as (api, _):
        checker = checker_for(api)
        ids = predict_many(api, checker, 40)
        pg_cluster.stop()
        ids += predict_many(api, checker, 60)  # every one answers 200 while the database is down
        assert list((tmp_path / "spool").glob("*.jsonl")), "rows should wait in the spool"
        pg_cluster.start()
        expected = {(i, 0) for i in ids}
        wait_for(lambda: count_rows(pg_cluster.url) >= len(expected), 60, "rows replayed")
        time.sleep(1.0)
        assert count_rows(pg_cluster.url) == len(expected)
        assert distinct_keys(pg_cluster.url) == expected


def test_sigterm_under_load_loses_no_row(pg_engine, tiny_versions, embedder_url, tmp_path):
    url = pg_engine.url.render_as_string(hide_password=False)
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int, base: str) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            client_id = f"term-{n}-{i}"
            i += 1
            try:
                response = session.post(
                    base + "/predict/tiny_banking",
                    json={"text": f"{PHRASES[i % len(PHRASES)]} {i % 50}"},
                    headers={"X-Request-ID": client_id},
                    timeout=30,
                )
            except requests.RequestException:
                continue  # the server is going away: refused, not answered
            if response.status_code == 200:
                with lock:
                    answered.append((response.json()["request_id"], client_id))

    env = api_env(url, embedder_url, tiny_versions, tmp_path / "spool")
    with run_api(env) as (api, process):
        clients = [threading.Thread(target=client, args=(n, api)) for n in range(8)]
        for thread in clients:
            thread.start()
        wait_for(lambda: len(answered) >= 100, 60, "load running")
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        stop.set()
        for thread in clients:
            thread.join(60)
    assert len(answered) >= 100
    # Every answered prediction is in the database (flushed on shutdown), exactly once.
    assert count_rows(url) == len(answered)
    assert sorted(logged_ids(url)) == sorted(answered)
    assert not spool_left(tmp_path / "spool")


def test_reused_and_claimed_request_ids_lose_no_row(
    pg_engine, tiny_versions, embedder_url, tmp_path
):
    """Issue 9, defect 1: a client reusing one X-Request-ID, and a client claiming the ids the
    server would make next, while another client sends ordinary requests: every answer still
    has its own row, and every caller's id is logged beside it."""
    url = pg_engine.url.render_as_string(hide_password=False)
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    with run_api(api_env(url, embedder_url, tiny_versions, tmp_path / "spool")) as (api, _):
        checker = checker_for(api)
        # An id seen in an answer of each worker (a new connection each time, so both answer
        # once the second one is up).
        seen: dict[str, str] = {}
        warm = 0

        def both_seen() -> bool:
            nonlocal warm
            response = validating_session(checker).post(
                api + "/predict/tiny_banking", json={"text": "I lost my card"}, timeout=30
            )
            warm += 1
            seen.setdefault(response.headers["X-Served-By"], response.headers["X-Request-ID"])
            return len(seen) == 2

        wait_for(both_seen, 60, "an answer from each worker")
        # The ids a per-process prefix and counter would give next: claimed before they are made.
        claimed = [
            f"{rid[:16]}{int(rid[16:], 16) + step:0{len(rid) - 16}x}"
            for rid in seen.values()
            for step in range(1, 151)
        ]
        plan = [("same-id-for-all", PHRASES[i % 6]) for i in range(100)]
        plan += [(claim, "my top up failed") for claim in claimed]
        plan += [(None, f"{PHRASES[i % 6]} {i}") for i in range(200)]  # the ordinary client
        local = threading.local()

        def one(step: tuple[str | None, str]) -> tuple[str, str | None, str | None]:
            client_id, text = step
            if not hasattr(local, "session"):
                local.session = validating_session(checker)
            headers = {"X-Request-ID": client_id} if client_id else {}
            response = local.session.post(
                api + "/predict/tiny_banking", json={"text": text}, headers=headers, timeout=30
            )
            assert response.status_code == 200, response.text
            body = response.json()
            return body["request_id"], client_id, body.get("client_request_id")

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, plan))
        answered = [(rid, client) for rid, client, _ in results]
        answered += [(rid, None) for rid in seen.values()]
        wait_for(lambda: count_rows(url) >= warm + len(plan), 30, "every row written")
        time.sleep(0.5)  # nothing more may arrive
    assert len({rid for rid, _ in answered}) == len(answered)  # the server's ids never collide
    assert count_rows(url) == warm + len(plan)  # one row per answer, none lost to a claimed key
    assert all(echoed == client for _, client, echoed in results)
    rows = logged_ids(url)
    assert set(answered) <= set(rows)
    assert Counter(client for _, client in rows)["same-id-for-all"] == 100
    assert {client for _, client in rows} >= set(claimed)


def _kill_a_worker_under_load(api: str, stop_database=None, start_database=None):
    """8 clients predict until stopped; one API worker is SIGKILLed under that load and the
    load goes on on its successor. Returns (answered, failed): (server id, client id) of each
    200 answer, and the client ids of the requests that got no answer."""
    answered: list[tuple[str, str]] = []
    failed: set[str] = set()
    workers: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        session = requests.Session()
        i = 0
        while not stop.is_set():
            client_id = f"kill-{n}-{i}"
            i += 1
            if i % 10 == 0:  # new connections now and then, so every worker gets some
                session = requests.Session()
            try:
                response = session.post(
                    api + "/predict/tiny_banking",
                    json={"text": f"{PHRASES[i % len(PHRASES)]} {i % 40}"},
                    headers={"X-Request-ID": client_id},
                    timeout=30,
                )
            except requests.RequestException:
                with lock:
                    failed.add(client_id)  # in flight on the killed worker: no answer
                session = requests.Session()
                continue
            with lock:
                if response.status_code == 200:
                    answered.append((response.json()["request_id"], client_id))
                    workers.add(response.headers["X-Served-By"])
                else:
                    failed.add(client_id)

    def answers() -> int:
        with lock:
            return len(answered)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: answers() >= 150 and len(workers) == 2, 60, "load on both workers")
        if stop_database is not None:
            stop_database()
            mark = answers()
            wait_for(lambda: answers() >= mark + 100, 60, "answers during the outage")
        with lock:
            victim = sorted(workers)[0]
        os.kill(int(victim.rsplit(":", 1)[1]), signal.SIGKILL)
        mark = answers()
        # gunicorn's master starts a successor at once; the load goes on until it answers too.
        wait_for(lambda: len(workers) >= 3 and answers() >= mark + 150, 90, "a successor")
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    if start_database is not None:
        start_database()
    return answered, failed


def _assert_a_row_per_answer(url: str, answered, failed) -> None:
    """Every answered prediction has exactly one row. A request the killed worker had logged
    but not yet answered has one too (its row is written before its answer): such rows may
    only belong to requests that got no answer, at most one per thread of that worker."""
    answered_ids = {(rid, 0) for rid, _ in answered}
    wait_for(
        lambda: answered_ids <= distinct_keys(url),
        90,
        "a row for every answer (the killed worker's journal replayed)",
    )
    time.sleep(1.0)  # nothing more may arrive
    answered_clients = {client for _, client in answered}
    rows = logged_ids(url)
    assert len(rows) == len(set(rows))
    assert Counter(client for _, client in rows if client in answered_clients) == Counter(
        answered_clients
    )
    assert set(answered) <= set(rows)
    unanswered = [client for _, client in rows if client not in answered_clients]
    assert set(unanswered) <= failed and len(unanswered) <= 8, unanswered
    assert len(rows) == len(answered) + len(unanswered)


def test_sigkill_of_a_worker_under_load_loses_no_row(
    pg_engine, tiny_versions, embedder_url, tmp_path
):
    """Issue 9, defect 2: a worker killed with SIGKILL (the OOM killer, ECS) under 8 clients;
    the rows still in its memory queue reach the database from its journal, replayed by the
    worker gunicorn starts in its place."""
    url = pg_engine.url.render_as_string(hide_password=False)
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    spool = tmp_path / "spool"
    # A long flush interval: the killed worker surely holds rows it has not written yet.
    env = api_env(url, embedder_url, tiny_versions, spool, DC_LOG_FLUSH_INTERVAL_MS=500)
    with run_api(env) as (api, _):
        answered, failed = _kill_a_worker_under_load(api)
        _assert_a_row_per_answer(url, answered, failed)
    assert len(answered) >= 300
    assert not spool_left(spool)


def test_sigkill_of_a_worker_during_a_database_outage_loses_no_row(
    pg_cluster, tiny_versions, embedder_url, tmp_path
):
    """The same SIGKILL while PostgreSQL is down: the killed worker's kept rows wait in its
    journal (its spool), its successor starts and serves during the outage, and every row is
    in the database once the server is back."""
    engine = make_engine(pg_cluster.url)
    register_versions(engine, tiny_versions, promoted=tiny_versions[0].version)
    engine.dispose()
    spool = tmp_path / "spool"
    with run_api(api_env(pg_cluster.url, embedder_url, tiny_versions, spool)) as (api, _):
        answered, failed = _kill_a_worker_under_load(
            api, stop_database=pg_cluster.stop, start_database=pg_cluster.start
        )
        _assert_a_row_per_answer(pg_cluster.url, answered, failed)
        wait_for(lambda: not spool_left(spool), 30, "the spool emptied")
    assert len(answered) >= 400


def test_rollback_reaches_every_worker_and_admin_needs_the_token(
    pg_engine, tiny_versions, embedder_url, tmp_path
):
    url = pg_engine.url.render_as_string(hide_password=False)
    first, second = tiny_versions[0].version, tiny_versions[1].version
    register_versions(pg_engine, tiny_versions, promoted=first)
    admin = {"Authorization": f"Bearer {TOKEN}"}
    with run_api(api_env(url, embedder_url, tiny_versions, tmp_path / "spool")) as (api, _):
        checker = checker_for(api)
        session = validating_session(checker)
        assert session.post(api + "/admin/models/tiny_banking/rollback").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (
            session.post(api + "/admin/models/tiny_banking/rollback", headers=wrong).status_code
            == 401
        )
        promoted = session.post(
            api + "/admin/models/tiny_banking/promote",
            json={"version": second, "force": True},
            headers=admin,
        )
        assert promoted.status_code == 200 and promoted.json()["version"] == second
        time.sleep(2.0)  # four refresh intervals

        def versions_by_worker() -> dict[str, set[str]]:
            seen: dict[str, set[str]] = {}
            for _ in range(40):  # a new connection each time, so the workers take turns
                response = validating_session(checker).post(
                    api + "/predict/tiny_banking", json={"text": "I lost my card"}, timeout=30
                )
                seen.setdefault(response.headers["X-Served-By"], set()).add(
                    response.json()["version"]
                )
            return seen

        before = versions_by_worker()
        assert len(before) == 2 and all(v == {second} for v in before.values())
        rolled = session.post(api + "/admin/models/tiny_banking/rollback", headers=admin)
        assert rolled.status_code == 200 and rolled.json()["version"] == first
        time.sleep(2.0)  # four refresh intervals
        after = versions_by_worker()
        assert len(after) == 2 and all(v == {first} for v in after.values()), after


def test_embedder_down_answers_503_and_cached_phrases_keep_working(
    pg_engine, tiny_versions, tmp_path
):
    url = pg_engine.url.render_as_string(hide_password=False)
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    with run_gunicorn("embedder/gunicorn.conf.py", {"DC_LOG_LEVEL": "WARNING"}) as (emb, eproc):
        env = api_env(url, emb, tiny_versions, tmp_path / "spool", DC_API_WORKERS=1)
        with run_api(env) as (api, _):
            checker = checker_for(api)
            session = validating_session(checker)
            warm = session.post(api + "/predict/tiny_banking", json={"text": "I lost my card"})
            assert warm.status_code == 200 and warm.json()["cached"] is False
            eproc.terminate()
            eproc.wait(30)
            cached = session.post(api + "/predict/tiny_banking", json={"text": "I lost my card"})
            assert cached.status_code == 200 and cached.json()["cached"] is True
            new = session.post(api + "/predict/tiny_banking", json={"text": "a brand new phrase"})
            assert new.status_code == 503
            assert new.json()["error"]["code"] == "embedder_unavailable"
            assert int(new.headers["Retry-After"]) >= 1
            assert session.get(api + "/ready").status_code == 503
