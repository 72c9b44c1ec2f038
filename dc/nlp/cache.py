"""The LRU phrase cache in front of the encoder: phrases repeat, so this is the speed lever."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cachetools import LRUCache


class _CountingLRU(LRUCache):
    """An LRUCache that counts what it evicts."""

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=maxsize)
        self.evictions = 0

    def popitem(self):
        item = super().popitem()
        self.evictions += 1
        return item


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of the cache's counters."""

    size: int
    maxsize: int
    hits: int
    misses: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        """The counters and the hit rate, for /info answers."""
        return {
            "maxsize": self.maxsize,
            "size": self.size,
            "hits": self.hits,
            "misses": self.misses,
            "evictions": self.evictions,
            "hit_rate": round(self.hit_rate, 4),
        }


class PhraseCache:
    """A thread-safe LRU map from (embedder fingerprint, text) to its vector.

    The fingerprint is part of the key so that vectors of one encoder are never served for
    another, even if a long-lived client sees the central embedder change underneath it.
    A `maxsize` of 0 disables caching (every lookup is a miss, nothing is stored).
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("cache maxsize must be >= 0")
        self.maxsize = maxsize
        self._lru = _CountingLRU(maxsize) if maxsize else None
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def get_many(self, fingerprint: str, texts: Sequence[str]) -> list[np.ndarray | None]:
        """Look up each text; returns its vector or None, and counts hits and misses."""
        with self._lock:
            if self._lru is None:
                self._misses += len(texts)
                return [None] * len(texts)
            found = [self._lru.get((fingerprint, text)) for text in texts]
            hits = sum(vector is not None for vector in found)
            self._hits += hits
            self._misses += len(texts) - hits
        return found

    def put_many(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        """Store one vector per text (rows of `vectors`), evicting the least recently used."""
        if self._lru is None:
            return
        # Copy each row so a cached vector does not keep its whole batch array alive.
        rows = [np.array(vectors[i], dtype=np.float32, copy=True) for i in range(len(texts))]
        for row in rows:
            row.setflags(write=False)
        with self._lock:
            for text, row in zip(texts, rows, strict=True):
                self._lru[(fingerprint, text)] = row

    def clear(self) -> None:
        """Drop every entry (counters are kept)."""
        if self._lru is not None:
            with self._lock:
                self._lru.clear()

    def stats(self) -> CacheStats:
        """Return the current size and counters."""
        with self._lock:
            return CacheStats(
                size=len(self._lru) if self._lru is not None else 0,
                maxsize=self.maxsize,
                hits=self._hits,
                misses=self._misses,
                evictions=self._lru.evictions if self._lru is not None else 0,
            )
