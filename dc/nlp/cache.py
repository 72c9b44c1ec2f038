"""The LRU phrase cache in front of the encoder: phrases repeat, so this is the speed lever."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from cachetools import Cache, LRUCache

log = logging.getLogger(__name__)


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

    def uncached(self, fingerprint: str, texts: Sequence[str]) -> list[str]:
        """The distinct `texts` not in the cache, in order (not counted as lookups)."""
        unique = list(dict.fromkeys(texts))
        if self._lru is None:
            return unique
        with self._lock:
            return [text for text in unique if (fingerprint, text) not in self._lru]

    def entries(self, fingerprint: str, limit: int) -> tuple[list[str], np.ndarray]:
        """Up to `limit` entries of `fingerprint`, most recently used first (for a snapshot).

        Returns:
            The texts, and their vectors as one float32 matrix [count, dimension] (a [0, 0]
            matrix when there are none). The lookup counters are not touched.
        """
        if self._lru is None or limit <= 0:
            return [], np.zeros((0, 0), dtype=np.float32)
        with self._lock:
            texts: list[str] = []
            rows: list[np.ndarray] = []
            for key in _most_recent_first(self._lru):
                if key[0] != fingerprint:
                    continue
                texts.append(key[1])
                rows.append(Cache.__getitem__(self._lru, key))  # leaves the order alone
                if len(texts) >= limit:
                    break
        # Stacked outside the lock: the rows are read-only, and requests wait for the lock.
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        return texts, np.stack(rows).astype(np.float32, copy=False)

    def load(self, fingerprint: str, texts: Sequence[str], vectors: np.ndarray) -> int:
        """Add entries given most recently used first (a snapshot's order), in that order, into
        the room the cache has left: entries already cached (put by live traffic, so fresher)
        are neither replaced nor evicted, and stay the most recent. Returns how many were added.
        """
        if self._lru is None:
            return 0
        with self._lock:
            fresher = list(reversed(list(_most_recent_first(self._lru))))  # least recent first
            room = self.maxsize - len(fresher)
            chosen = [i for i, text in enumerate(texts) if (fingerprint, text) not in self._lru]
            chosen = chosen[: max(room, 0)]
        rows = {i: np.array(vectors[i], dtype=np.float32, copy=True) for i in chosen}
        for row in rows.values():
            row.setflags(write=False)
        with self._lock:
            # Oldest first, so that the snapshot's most recent entry ends up the most recent of
            # the snapshot's, then the fresher entries above them again.
            for i in reversed(chosen):
                self._lru[(fingerprint, texts[i])] = rows[i]
            for key in fresher:
                if key in self._lru:
                    self._lru[key]  # a lookup marks it most recently used
        return len(chosen)

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


def _most_recent_first(lru: LRUCache) -> Iterable[tuple[str, str]]:
    """The keys of `lru`, most recently used first.

    cachetools keeps the recency order in a private OrderedDict (least recent first), named
    `_LRUCache__order` from 5.x to 8.x. Should a release rename it, the keys come in the cache's
    own iteration order (insertion order: recency is then approximate, never wrong entries).
    """
    order = getattr(lru, "_LRUCache__order", None)
    if order is not None and len(order) == len(lru):
        return list(reversed(order))
    log.debug("cachetools' LRU order is not reachable; using insertion order")
    return list(reversed(list(lru)))
