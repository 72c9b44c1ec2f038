"""The LRU phrase cache: hits, misses, evictions, fingerprint isolation, thread safety."""

import threading

import numpy as np
import pytest

from dc.nlp.cache import PhraseCache


def vecs(n, dim=4, start=0.0):
    return np.arange(start, start + n * dim, dtype=np.float32).reshape(n, dim)


def test_hits_misses_and_lru_eviction():
    cache = PhraseCache(maxsize=2)
    cache.put_many("fp", ["a", "b"], vecs(2))
    assert [v is not None for v in cache.get_many("fp", ["a", "x"])] == [True, False]
    cache.put_many("fp", ["c"], vecs(1, start=100))  # evicts "b": "a" was used more recently
    found = cache.get_many("fp", ["a", "b", "c"])
    assert found[0] is not None and found[1] is None and found[2] is not None
    np.testing.assert_array_equal(found[2], vecs(1, start=100)[0])
    stats = cache.stats()
    assert (stats.size, stats.maxsize, stats.hits, stats.misses, stats.evictions) == (2, 2, 3, 2, 1)
    assert stats.hit_rate == pytest.approx(3 / 5)


def test_fingerprint_is_part_of_the_key():
    cache = PhraseCache(maxsize=10)
    cache.put_many("fp-1", ["same text"], vecs(1))
    assert cache.get_many("fp-2", ["same text"]) == [None]
    assert cache.get_many("fp-1", ["same text"])[0] is not None


def test_cached_rows_are_copies_and_read_only():
    cache = PhraseCache(maxsize=10)
    batch = vecs(2)
    cache.put_many("fp", ["a", "b"], batch)
    batch[:] = -1  # the caller reusing its buffer must not change what is cached
    row = cache.get_many("fp", ["a"])[0]
    np.testing.assert_array_equal(row, vecs(2)[0])
    with pytest.raises(ValueError):
        row[0] = 42


def test_size_zero_disables_the_cache():
    cache = PhraseCache(maxsize=0)
    cache.put_many("fp", ["a"], vecs(1))
    assert cache.get_many("fp", ["a"]) == [None]
    assert cache.stats().misses == 1 and cache.stats().size == 0


def test_concurrent_use_keeps_counts_exact():
    cache = PhraseCache(maxsize=50)
    texts = [f"t{i}" for i in range(100)]

    def work(offset):
        for i in range(200):
            text = texts[(i + offset) % len(texts)]
            if cache.get_many("fp", [text])[0] is None:
                cache.put_many("fp", [text], vecs(1))

    threads = [threading.Thread(target=work, args=(k * 7,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == 8 * 200
    assert stats.size == 50
    # Every miss inserts; two threads missing the same text overwrite instead of evicting.
    assert 0 < stats.evictions <= stats.misses - stats.size
