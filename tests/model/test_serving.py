"""The model store (dc.serve.store) on a real registry: PostgreSQL, real trained heads, encoder.

Two `ModelStore`s on the same database stand for two gunicorn workers: an admin call lands on
one, the other sees the change at its next refresh. Refreshes are called explicitly, so the
tests wait for nothing except in the one that checks the background thread.
"""

from __future__ import annotations

import logging
import shutil
import time

import numpy as np
import pytest
from sqlalchemy import update
from sqlalchemy.engine import make_url

from dc.errors import (
    DatabaseUnavailable,
    EmbedderMismatch,
    EmbedderUnavailable,
    NotFound,
    NotReady,
    PromotionRefused,
)
from dc.promotion import promote
from dc.serve.store import ModelStore
from persistence.db import make_engine, session_factory
from persistence.models import ModelVersion
from persistence.registry import list_versions, rollback
from tests.conftest import free_port, make_settings
from tests.heads_support import (
    TINY_NAME,
    TINY_REGION,
    TcpProxy,
    copy_version,
    copy_with_fingerprint,
    register_versions,
)

pytestmark = [pytest.mark.db, pytest.mark.slow]


OTHER_FINGERPRINT = "0123456789abcdef"


@pytest.fixture
def store_settings(tiny_versions, tmp_path):
    return make_settings(
        serving_region=TINY_REGION,
        artifacts_dir=str(tiny_versions[0].artifacts_dir),
        model_refresh_s=0.1,
        promotion_tolerance=0.005,
        spool_dir=str(tmp_path / "state"),
    )


@pytest.fixture
def make_store(store_settings, pg_engine, tiny_versions):
    """Build stores ("workers") on the test database; each is closed after the test."""
    stores: list[ModelStore] = []
    running = tiny_versions[0].embedder_fingerprint  # the real encoder's

    def build(settings=None, engine=None, fingerprint=lambda: running) -> ModelStore:
        store = ModelStore(
            settings or store_settings, session_factory(engine or pg_engine), fingerprint
        )
        stores.append(store)
        return store

    yield build
    for store in stores:
        store.close()


def test_the_store_serves_the_promoted_version(make_store, pg_engine, tiny_versions, encoder):
    first, second = tiny_versions
    register_versions(pg_engine, tiny_versions, promoted=first.version)
    store = make_store()
    assert not store.ready
    with pytest.raises(NotReady, match="not been read yet"):
        store.get(TINY_NAME)

    assert store.refresh() is True
    assert store.ready and store.names() == [TINY_NAME]
    head = store.get(TINY_NAME)
    assert head.version == first.version and head.embedder_fingerprint == first.embedder_fingerprint
    vector = np.asarray(encoder.encode(["my card has still not arrived"]))
    assert head.labels[int(head.predict_proba(vector).argmax())] == "card_arrival"

    assert store.refresh() is False  # nothing changed: nothing reloaded
    assert store.get(TINY_NAME) is head

    (entry,) = store.describe()
    assert entry["name"] == TINY_NAME and entry["region"] == TINY_REGION
    assert entry["status"] == "serving" and entry["reason"] is None
    assert entry["version"] == entry["served_version"] == first.version
    assert entry["model_type"] == "mlp-1x64" and entry["classes"] == 6
    assert entry["embedder_fingerprint"] == first.embedder_fingerprint
    assert entry["metrics"] == first.metrics and entry["loaded_at"]
    assert entry["serving_rule"] == {"fallback_label": None, "min_probability": 0.0}
    detail = store.describe(TINY_NAME)
    assert detail["labels"] == list(head.labels) and detail["promoted_at"]
    assert {v["version"]: v["status"] for v in detail["versions"]} == {
        first.version: "promoted",
        second.version: "trained",
    }


def test_unknown_models_are_not_found(make_store, pg_engine, tiny_versions):
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    store = make_store()
    store.refresh()
    with pytest.raises(NotFound, match=f"no model 'nope'.*served models: {TINY_NAME}"):
        store.get("nope")
    with pytest.raises(NotFound):
        store.describe("nope")


def test_a_model_without_a_promoted_version(make_store, pg_engine, tiny_versions):
    register_versions(pg_engine, tiny_versions, promoted=None)
    store = make_store()
    assert store.refresh() is False  # nothing to serve
    assert store.ready and store.names() == []
    with pytest.raises(NotFound):
        store.get(TINY_NAME)
    assert store.describe(TINY_NAME)["status"] == "unpromoted"
    with pytest.raises(NotFound, match="no previously promoted version"):
        store.rollback(TINY_NAME)
    with pytest.raises(NotFound, match="no promoted version"):
        store.reload(TINY_NAME)

    # Promoted through the store, then demoted behind its back: served, then dropped.
    assert store.promote(TINY_NAME, tiny_versions[0].version)["status"] == "serving"
    with pg_engine.begin() as connection:
        connection.execute(update(ModelVersion).values(status="archived"))
    assert store.refresh() is True
    assert store.names() == []
    with pytest.raises(NotFound):
        store.get(TINY_NAME)


def test_promote_rollback_and_reload_reach_a_second_worker(make_store, pg_engine, tiny_versions):
    first, second = tiny_versions
    register_versions(pg_engine, tiny_versions, promoted=first.version)
    worker_a, worker_b = make_store(), make_store()
    worker_a.refresh()
    worker_b.refresh()
    assert worker_a.get(TINY_NAME).version == worker_b.get(TINY_NAME).version == first.version

    # The second version is clearly worse: the rule refuses it unless forced.
    with pytest.raises(PromotionRefused, match="weighted F1"):
        worker_a.promote(TINY_NAME, second.version)
    with pytest.raises(NotFound):
        worker_a.promote(TINY_NAME, "19990101T000000Z")
    described = worker_a.promote(TINY_NAME, second.version, force=True)
    assert described["version"] == described["served_version"] == second.version
    assert worker_a.get(TINY_NAME).version == second.version
    assert worker_a.get(TINY_NAME).rule.fallback_label == "other"
    assert worker_b.get(TINY_NAME).version == first.version  # until its next refresh
    assert worker_b.refresh() is True
    assert worker_b.get(TINY_NAME).version == second.version

    described = worker_b.rollback(TINY_NAME)
    assert described["version"] == described["served_version"] == first.version
    worker_a.refresh()
    assert worker_a.get(TINY_NAME).version == first.version
    with session_factory(pg_engine)() as session:
        statuses = {v.version: v.status for v in list_versions(session, TINY_NAME, TINY_REGION)}
    assert statuses == {first.version: "promoted", second.version: "archived"}

    # Reload: same version, files read again by every worker.
    head_a, head_b = worker_a.get(TINY_NAME), worker_b.get(TINY_NAME)
    loaded_at = worker_a.describe(TINY_NAME)["loaded_at"]
    described = worker_a.reload(TINY_NAME)
    assert described["version"] == first.version and described["reload_requested_at"]
    assert described["loaded_at"] != loaded_at
    assert worker_a.get(TINY_NAME) is not head_a
    assert worker_a.get(TINY_NAME).version == first.version
    assert worker_b.refresh() is True
    assert worker_b.get(TINY_NAME) is not head_b


def test_rolling_back_twice_returns_to_where_it_started(pg_engine, tiny_versions):
    first, second = tiny_versions
    register_versions(pg_engine, tiny_versions, promoted=first.version)
    sessions = session_factory(pg_engine)
    with sessions() as session:
        promote(session, TINY_NAME, TINY_REGION, second.version, tolerance=1.0)
    with sessions() as session:
        assert rollback(session, TINY_NAME, TINY_REGION).version == first.version
    with sessions() as session:
        assert rollback(session, TINY_NAME, TINY_REGION).version == second.version


def test_the_refresh_thread_picks_changes_up(make_store, pg_engine, tiny_versions):
    first, second = tiny_versions
    register_versions(pg_engine, tiny_versions, promoted=first.version)
    store = make_store().start()
    assert store.ready and store.get(TINY_NAME).version == first.version
    with session_factory(pg_engine)() as session:
        promote(session, TINY_NAME, TINY_REGION, second.version, tolerance=1.0)
    deadline = time.monotonic() + 30
    while store.get(TINY_NAME).version != second.version:
        assert time.monotonic() < deadline, "the refresh thread never picked the promotion up"
        time.sleep(0.05)
    store.close()
    store.close()  # idempotent


def test_a_head_of_another_embedder_is_refused(
    make_store, pg_engine, tiny_versions, tmp_path, caplog
):
    foreign = copy_with_fingerprint(tiny_versions[0], OTHER_FINGERPRINT, tmp_path)
    register_versions(pg_engine, [foreign], promoted=foreign.version)
    store = make_store()
    running = tiny_versions[0].embedder_fingerprint
    with caplog.at_level(logging.WARNING, logger="dc.serve.sync"):
        store.refresh()
    assert store.ready and store.names() == []
    with pytest.raises(EmbedderMismatch, match=f"{OTHER_FINGERPRINT}.*{running}"):
        store.get(TINY_NAME)
    (entry,) = store.describe()
    assert entry["status"] == "refused" and entry["served_version"] is None
    assert OTHER_FINGERPRINT in entry["reason"] and running in entry["reason"]
    (line,) = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    for part in (TINY_NAME, foreign.version, OTHER_FINGERPRINT, running):
        assert part in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dc.serve.sync"):
        store.refresh()
    assert not [r for r in caplog.records if "refusing" in r.getMessage()]  # said once


def test_heads_serve_only_on_the_backend_vectors_they_were_trained_on(
    make_store, pg_engine, tiny_versions, settings, tmp_path
):
    """fp32 backends (tf, onnx) share one fingerprint; int8 has its own, refused both ways."""
    from dc.nlp.encoder import load_encoder

    handle = settings.embedder_handle
    fp32_head = tiny_versions[0]
    assert load_encoder(handle, "onnx").fingerprint == fp32_head.embedder_fingerprint
    int8 = load_encoder(handle, "onnx-int8").fingerprint
    assert int8 != fp32_head.embedder_fingerprint
    int8_head = copy_with_fingerprint(fp32_head, int8, tmp_path, suffix="-int8")
    register_versions(pg_engine, [fp32_head, int8_head], promoted=fp32_head.version)

    on_int8 = make_store(fingerprint=lambda: int8)
    on_int8.refresh()
    with pytest.raises(EmbedderMismatch, match=f"{fp32_head.embedder_fingerprint}.*{int8}"):
        on_int8.get(TINY_NAME)

    with session_factory(pg_engine)() as session:
        promote(session, TINY_NAME, TINY_REGION, int8_head.version, tolerance=1.0)
    on_int8.refresh()
    assert on_int8.get(TINY_NAME).version == int8_head.version
    on_fp32 = make_store()
    on_fp32.refresh()
    with pytest.raises(EmbedderMismatch, match=int8):
        on_fp32.get(TINY_NAME)


def test_a_manifest_of_another_embedder_is_refused_too(
    make_store, pg_engine, tiny_versions, tmp_path
):
    from dataclasses import replace

    # The registry row claims the running embedder; the files say otherwise.
    foreign = copy_with_fingerprint(tiny_versions[0], OTHER_FINGERPRINT, tmp_path)
    lying = replace(foreign, embedder_fingerprint=tiny_versions[0].embedder_fingerprint)
    register_versions(pg_engine, [lying], promoted=lying.version)
    store = make_store()
    store.refresh()
    with pytest.raises(EmbedderMismatch, match=OTHER_FINGERPRINT):
        store.get(TINY_NAME)


def test_an_unknown_embedder_fingerprint_keeps_models_pending(make_store, pg_engine, tiny_versions):
    register_versions(pg_engine, tiny_versions, promoted=tiny_versions[0].version)
    running: list[str] = []

    def fingerprint() -> str:
        if not running:
            raise EmbedderUnavailable("embedder at http://127.0.0.1:9 is unreachable")
        return running[0]

    store = make_store(fingerprint=fingerprint)
    store.refresh()
    assert not store.ready
    assert store.describe()[0]["status"] == "pending"
    with pytest.raises(NotReady, match="fingerprint is not known"):
        store.get(TINY_NAME)

    running.append(tiny_versions[0].embedder_fingerprint)
    assert store.refresh() is True
    assert store.ready and store.get(TINY_NAME).version == tiny_versions[0].version

    # The embedder going away again does not unload what is served.
    running.clear()
    store.refresh()
    assert store.ready and store.get(TINY_NAME).version == tiny_versions[0].version


def test_missing_files_fail_the_model_but_not_the_store(
    make_store, pg_engine, tiny_versions, tmp_path
):
    first, second = tiny_versions
    moved = copy_version(first, tmp_path / "artifacts", first.version)
    register_versions(pg_engine, [moved, second], promoted=moved.version)
    hidden = tmp_path / "hidden"
    shutil.move(moved.version_dir, hidden)
    store = make_store(
        settings=make_settings(serving_region=TINY_REGION, artifacts_dir=str(tmp_path / "none"))
    )
    store.refresh()
    assert store.ready  # decided: failed
    (entry,) = store.describe()
    assert entry["status"] == "failed" and "could not be loaded" in entry["reason"]
    with pytest.raises(NotReady, match="could not be loaded"):
        store.get(TINY_NAME)

    # The folder is repaired; a reload request makes every worker try again at once.
    shutil.move(hidden, moved.version_dir)
    assert store.reload(TINY_NAME)["status"] == "serving"
    assert store.get(TINY_NAME).version == first.version

    # A newly promoted version whose files are missing leaves the served one in place.
    gone = copy_version(second, tmp_path / "artifacts", second.version + "-gone")
    register_versions(pg_engine, [gone])
    shutil.rmtree(gone.version_dir)
    described = store.promote(TINY_NAME, gone.version, force=True)
    assert described["status"] == "serving" and described["version"] == gone.version
    assert described["served_version"] == first.version
    assert f"still serving version {first.version}" in described["reason"]
    assert store.get(TINY_NAME).version == first.version


def test_an_unreachable_registry_keeps_what_is_served(
    make_store, pg_engine, pg_migrated, tiny_versions
):
    first, second = tiny_versions
    register_versions(pg_engine, tiny_versions, promoted=first.version)
    url = make_url(pg_migrated)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    engine = make_engine(
        url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
        connect_args={"connect_timeout": 3},
    )
    try:
        worker = make_store(engine=engine)
        assert worker.refresh() is True
        head = worker.get(TINY_NAME)

        proxy.stop()  # the database is gone for this worker
        assert worker.refresh() is False
        assert worker.ready and worker.get(TINY_NAME) is head
        # A 503 that says what is unavailable, with the driver's words kept for the log only.
        for action in (worker.reload, worker.describe):
            with pytest.raises(DatabaseUnavailable, match="registry") as caught:
                action(TINY_NAME)
            assert (
                "psycopg2" not in caught.value.message and "127.0.0.1" not in caught.value.message
            )
            assert "OperationalError" in caught.value.detail
        assert worker.describe()[0]["status"] == "serving"

        # A worker starting while the database is away serves the rows the first one saved.
        late = make_store(engine=engine).start()
        assert late.ready and late.get(TINY_NAME).version == first.version
        late.close()

        with session_factory(pg_engine)() as session:  # meanwhile, through another worker
            promote(session, TINY_NAME, TINY_REGION, second.version, tolerance=1.0)
        proxy.start()
        assert worker.refresh() is True
        assert worker.get(TINY_NAME).version == second.version
    finally:
        proxy.stop()
        engine.dispose()


def test_a_version_backed_up_to_s3_is_restored(
    make_store, pg_engine, tiny_versions, s3_settings, tmp_path
):
    from dc.backup import backup_version

    first = tiny_versions[0]
    uri = backup_version(
        first.version_dir, s3_settings, region=first.region, model=first.name, version=first.version
    )
    from dataclasses import replace

    register_versions(pg_engine, [replace(first, artifact_uri=uri)], promoted=first.version)
    settings = s3_settings.model_copy(
        update={"serving_region": TINY_REGION, "artifacts_dir": str(tmp_path / "serving")}
    )
    store = make_store(settings=settings)
    store.refresh()
    head = store.get(TINY_NAME)
    assert head.version == first.version
    assert head.version_dir == tmp_path / "serving" / first.region / first.name / first.version


def test_a_worker_starting_while_the_database_is_away_serves_the_saved_rows(
    make_store, pg_engine, tiny_versions, store_settings
):
    first = tiny_versions[0]
    register_versions(pg_engine, tiny_versions, promoted=first.version)
    make_store().start()  # a worker that read the registry: it saves the promoted rows
    unreachable = make_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/none")
    late = make_store(engine=unreachable).start()  # a worker (re)started during the outage
    assert late.ready and late.get(TINY_NAME).version == first.version
    fresh = make_store(  # no saved rows at all: nothing to serve, not ready
        settings=store_settings.model_copy(update={"spool_dir": store_settings.spool_dir + "x"}),
        engine=unreachable,
    ).start()
    assert not fresh.ready
