"""Warm start of the phrase cache (dc.nlp.warm_start): the snapshot's format, its atomic write,
its refusal of another encoder's vectors, its bound, corrupt files, the readiness bound and the
pre-warm from an inference log (SQLite here; PostgreSQL in tests/persistence/test_prewarm.py).

Everything runs on a real `LocalEmbedder` (cache and micro-batcher) around a fake encoder, so
no TensorFlow is loaded.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import numpy as np
import pytest
from sqlalchemy import insert

from dc.nlp import warm_start
from dc.nlp.cache import PhraseCache
from dc.nlp.warm_start import (
    Snapshot,
    SnapshotError,
    read_snapshot,
    write_snapshot,
)
from tests.warm_start_support import (
    DIMENSION,
    fake_engine,
    frequent_log,
    inference_rows,
    vector_of,
)

TEXTS = ["my card has not arrived", "Straße ß ﬁ", "全角テキスト", "emoji 💳✓", "", "a\nb\tc"]


def snapshot_of(texts, fingerprint="fake-fp-1") -> Snapshot:
    return Snapshot(fingerprint, DIMENSION, list(texts), np.stack([vector_of(t) for t in texts]))


@pytest.fixture
def engine_factory():
    made = []

    def make(fingerprint="fake-fp-1", **overrides):
        engine, settings = fake_engine(fingerprint, **overrides)
        made.append(engine)
        return engine, settings

    yield make
    for engine in made:
        engine.close()


# --- the file ------------------------------------------------------------------------------------


def test_snapshot_round_trip_keeps_texts_vectors_and_order(tmp_path):
    path = tmp_path / "snap.npz"
    write_snapshot(str(path), snapshot_of(TEXTS), make_settings_for(path))
    back = read_snapshot(str(path), make_settings_for(path))
    assert back.fingerprint == "fake-fp-1" and back.dimension == DIMENSION
    assert back.texts == TEXTS
    assert back.vectors.dtype == np.float32
    np.testing.assert_array_equal(back.vectors, np.stack([vector_of(t) for t in TEXTS]))
    # A plain numpy file, readable without pickle.
    with np.load(path, allow_pickle=False) as data:
        assert data["vectors"].shape == (len(TEXTS), DIMENSION)


def make_settings_for(path):
    from tests.conftest import make_settings

    return make_settings(cache_snapshot=str(path))


def test_a_crash_mid_write_leaves_the_previous_snapshot(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "snap.npz"
    settings = make_settings_for(path)
    write_snapshot(str(path), snapshot_of(["first"]), settings)
    before = path.read_bytes()

    real = np.savez

    def crash_half_way(file, **arrays):
        real(file, **{k: v for k, v in list(arrays.items())[:2]})  # some bytes out, then:
        raise OSError("No space left on device")

    monkeypatch.setattr(warm_start.np, "savez", crash_half_way)
    with pytest.raises(SnapshotError):
        write_snapshot(str(path), snapshot_of(["second", "third"]), settings)
    assert path.read_bytes() == before
    assert read_snapshot(str(path), settings).texts == ["first"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["snap.npz"]  # no temporary left


def test_a_writer_killed_mid_write_leaves_a_temporary_the_next_write_removes(tmp_path):
    path = tmp_path / "snap.npz"
    settings = make_settings_for(path)
    write_snapshot(str(path), snapshot_of(["first"]), settings)
    (tmp_path / ".snap.npz.abc123.tmp").write_bytes(b"PK\x03\x04 half a zip")  # SIGKILLed writer
    assert read_snapshot(str(path), settings).texts == ["first"]
    write_snapshot(str(path), snapshot_of(["second"]), settings)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snap.npz"]
    assert read_snapshot(str(path), settings).texts == ["second"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"not a zip at all",
        lambda b: b"",
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_a_corrupt_snapshot_is_an_error_to_read(tmp_path, damage):
    path = tmp_path / "snap.npz"
    settings = make_settings_for(path)
    write_snapshot(str(path), snapshot_of(TEXTS), settings)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(SnapshotError):
        read_snapshot(str(path), settings)


def test_a_npz_that_is_not_a_snapshot_is_refused_and_pickles_are_never_loaded(tmp_path):
    path = tmp_path / "snap.npz"
    settings = make_settings_for(path)
    np.savez(path, vectors=np.zeros((2, 3), dtype=np.float32))  # no format, no texts
    with pytest.raises(SnapshotError):
        read_snapshot(str(path), settings)
    with open(path, "wb") as file:
        np.savez(file, format=np.int64(1), texts=np.array([object()], dtype=object))
    with pytest.raises(SnapshotError):
        read_snapshot(str(path), settings)


def test_a_missing_snapshot_reads_as_none(tmp_path):
    assert read_snapshot(str(tmp_path / "none.npz"), make_settings_for(tmp_path)) is None


# --- the cache's order ---------------------------------------------------------------------------


def test_cache_entries_are_most_recent_first_and_load_keeps_that_order():
    cache = PhraseCache(maxsize=10)
    for text in ["a", "b", "c", "d"]:
        cache.put_many("fp", [text], vector_of(text)[None])
    cache.get_many("fp", ["b"])  # b becomes the most recent
    cache.put_many("other", ["z"], vector_of("z")[None])
    texts, vectors = cache.entries("fp", limit=3)
    assert texts == ["b", "d", "c"]  # z is another fingerprint's; a, the oldest, over the bound
    np.testing.assert_array_equal(vectors[0], vector_of("b"))
    assert cache.stats().hits == 1  # entries() is not a lookup

    small = PhraseCache(maxsize=2)
    small.put_many("fp", ["d"], np.zeros((1, DIMENSION), dtype=np.float32))  # already fresher
    assert small.load("fp", texts, vectors) == 1  # only b fits beside d, which is kept
    assert small.entries("fp", 5)[0] == ["d", "b"]
    assert not small.get_many("fp", ["d"])[0].any()


# --- the engine: save on close, load at start ----------------------------------------------------


def test_close_writes_the_most_recent_entries_and_a_new_engine_reads_them(tmp_path, engine_factory):
    path = tmp_path / "snap.npz"
    first, settings = engine_factory(cache_snapshot=str(path), cache_snapshot_max_entries=3)
    first.start_warm_start(settings)
    first.embed(["p1", "p2", "p3", "p4"])
    first.embed(["p1"])  # p1 most recent: p4, p3, then p2 follow
    first.close()
    assert read_snapshot(str(path), settings).texts == ["p1", "p4", "p3"]

    second, _ = engine_factory(cache_snapshot=str(path))
    second.start_warm_start(settings)
    info = second.info()["warm_start"]
    assert info["snapshot"]["state"] == "loaded" and info["snapshot"]["entries"] == 3
    assert info["prewarm"]["state"] == "skipped"
    result = second.embed(["p1", "p3", "p2"])
    assert result.cached == [True, True, False]
    np.testing.assert_array_equal(result.vectors[0], vector_of("p1"))
    assert second.encoder.encoded == ["p2"]


def test_a_snapshot_of_another_encoder_is_ignored(tmp_path, engine_factory, caplog):
    path = tmp_path / "snap.npz"
    settings = make_settings_for(path)
    write_snapshot(str(path), snapshot_of(["p1"], fingerprint="another-encoder"), settings)
    engine, settings = engine_factory(cache_snapshot=str(path))
    with caplog.at_level("INFO", logger="dc.nlp.warm_start"):
        engine.start_warm_start(settings)
    assert engine.info()["warm_start"]["snapshot"]["state"] == "foreign"
    assert engine.cache.stats().size == 0
    assert "another-encoder" in caplog.text and "ignoring the snapshot" in caplog.text
    assert engine.embed(["p1"]).cached == [False]


def test_a_corrupt_snapshot_is_logged_and_skipped_and_then_replaced(tmp_path, engine_factory):
    path = tmp_path / "snap.npz"
    path.write_bytes(b"PK\x03\x04 torn")
    engine, settings = engine_factory(cache_snapshot=str(path))
    engine.start_warm_start(settings)  # does not raise
    assert engine.info()["warm_start"]["snapshot"]["state"] == "unreadable"
    engine.embed(["p1"])
    engine.close()
    assert read_snapshot(str(path), settings).texts == ["p1"]


def test_readiness_waits_for_the_snapshot_at_most_the_bound(tmp_path, engine_factory, monkeypatch):
    path = tmp_path / "snap.npz"
    settings = make_settings_for(path)
    write_snapshot(str(path), snapshot_of(["p1", "p2"]), settings)
    release = threading.Event()
    real = warm_start.read_snapshot

    def slow_read(location, settings):
        release.wait(30)
        return real(location, settings)

    monkeypatch.setattr(warm_start, "read_snapshot", slow_read)
    engine, settings = engine_factory(cache_snapshot=str(path), warm_start_wait_s=0.05)
    warm = engine.start_warm_start(settings)  # returns although the read has not finished
    assert engine.info()["warm_start"]["snapshot"]["state"] == "loading"
    release.set()
    assert warm.wait(30)
    assert engine.info()["warm_start"]["snapshot"]["state"] == "loaded"
    assert engine.embed(["p1", "p2"]).cached == [True, True]


def test_empty_setting_disables_snapshots(tmp_path, engine_factory):
    engine, settings = engine_factory(cache_snapshot="")
    engine.start_warm_start(settings)
    engine.embed(["p1"])
    engine.close()
    assert engine.info()["warm_start"]["snapshot"]["state"] == "off"
    assert list(tmp_path.iterdir()) == []


# --- pre-warm from the inference log (SQLite) ------------------------------------------------


def test_prewarm_from_a_sqlite_log_encodes_the_most_frequent_valid_texts(tmp_path, engine_factory):
    from persistence.db import make_engine
    from persistence.models import Base, Inference

    url = f"sqlite:///{tmp_path / 'log.sqlite'}"
    database = make_engine(url)
    Base.metadata.create_all(database)
    with database.begin() as connection:
        connection.execute(insert(Inference), inference_rows(frequent_log(datetime.now(UTC))))
    database.dispose()

    engine, settings = engine_factory(
        cache_snapshot=str(tmp_path / "none.npz"), database_url=url, warm_start_phrases=5
    )
    warm = engine.start_warm_start(settings)
    assert warm.wait(30)
    prewarm = engine.info()["warm_start"]["prewarm"]
    # The 5 most frequent of the day are top, and the three refused texts, then second: the
    # refused ones are dropped, not replaced.
    assert prewarm["state"] == "done" and prewarm["encoded"] == 2, prewarm
    assert sorted(engine.encoder.encoded) == ["second", "top"]
    assert engine.embed(["top", "second", "third"]).cached == [True, True, False]


def test_no_prewarm_without_a_database_or_when_it_is_unreachable(tmp_path, engine_factory):
    engine, settings = engine_factory(cache_snapshot="", database_url="")
    assert engine.start_warm_start(settings).wait(30)
    assert engine.info()["warm_start"]["prewarm"]["state"] == "skipped"

    engine, settings = engine_factory(
        cache_snapshot="",
        database_url="postgresql+psycopg2://nobody@127.0.0.1:9/none",
        db_retries=0,
    )
    assert engine.start_warm_start(settings).wait(30)
    assert engine.info()["warm_start"]["prewarm"]["state"] == "skipped"
    assert engine.encoder.encoded == []
