"""`LocalEmbedder`: the encoder in this process, behind the phrase cache and the micro-batcher.

The embedded default of the product, and the engine inside the embedder service. The encoder's
runtime (ONNX Runtime or TensorFlow) is reached only through `dc.nlp.encoder`, imported when an
encoder is actually loaded (`from_settings`): importing this module, or wrapping an encoder
that is already loaded, loads neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dc.config import Settings
from dc.errors import EmbedderUnavailable
from dc.nlp.batching import MicroBatcher
from dc.nlp.cache import PhraseCache
from dc.nlp.embeddings.interface import Embedder, EmbedResult, assemble

if TYPE_CHECKING:
    from dc.nlp.encoder import Encoder
    from dc.nlp.warm_start import WarmStart


class LocalEmbedder(Embedder):
    """The encoder in this process, behind the phrase cache and the micro-batcher.

    Args:
        encoder: a loaded `dc.nlp.encoder.Encoder`.
        cache_size: LRU entries (0 disables the cache).
        max_batch_size, max_queue, retry_after_s, batch_wait_s, workers: micro-batching
            settings (see `MicroBatcher`).
        wait_timeout_s: longest a caller waits for its batch before giving up.
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        cache_size: int,
        max_batch_size: int,
        max_queue: int,
        retry_after_s: int = 1,
        batch_wait_s: float = 0.0,
        workers: int = 1,
        wait_timeout_s: float = 60.0,
    ) -> None:
        self.encoder = encoder
        self.name = encoder.name
        self.fingerprint = encoder.fingerprint
        self.dimension = encoder.dimension
        self.cache = PhraseCache(cache_size)
        self._batch_listeners: list[Callable[[int, float], None]] = []
        self._wait_timeout_s = wait_timeout_s
        self.warm_start: WarmStart | None = None  # see start_warm_start
        self.batcher = MicroBatcher(
            encoder.encode,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            retry_after_s=retry_after_s,
            on_batch=self._on_batch,
            max_wait_s=batch_wait_s,
            workers=workers,
        ).start()

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalEmbedder:
        """Load the encoder named by the settings, warm it up and wrap it."""
        from dc.nlp.encoder import encoder_from_settings

        encoder = encoder_from_settings(settings)
        encoder.warmup()
        return cls.from_encoder(encoder, settings)

    @classmethod
    def from_encoder(cls, encoder: Encoder, settings: Settings) -> LocalEmbedder:
        """Wrap an already loaded encoder with the cache and batching the settings ask for."""
        return cls(
            encoder,
            cache_size=settings.cache_size,
            max_batch_size=settings.max_batch_size,
            max_queue=settings.max_queue,
            retry_after_s=settings.retry_after_s,
            batch_wait_s=settings.batch_wait_ms / 1000,
            workers=settings.encoder_workers,
        )

    def start_warm_start(self, settings: Settings) -> WarmStart:
        """Warm the cache up (dc.nlp.warm_start): read the snapshot of `settings.cache_snapshot`,
        or else pre-warm from the inference log, on a thread of its own; returns once the
        snapshot is read, or after `settings.warm_start_wait_s`. `close()` then writes the
        snapshot. The embedder service calls it right after loading its engine."""
        from dc.nlp.warm_start import WarmStart

        self.warm_start = WarmStart(self, settings)
        return self.warm_start.start()

    def add_batch_listener(self, listener: Callable[[int, float], None]) -> None:
        """Call `listener(batch size, seconds)` after every encoder call (for metrics)."""
        self._batch_listeners.append(listener)

    def _on_batch(self, texts: list[str], vectors: np.ndarray, seconds: float) -> None:
        self.cache.put_many(self.fingerprint, texts, vectors)
        for listener in self._batch_listeners:
            listener(len(texts), seconds)

    def embed(self, texts: Sequence[str]) -> EmbedResult:
        """Return one vector per text; misses are encoded in shared micro-batches."""
        started = time.perf_counter()
        found = self.cache.get_many(self.fingerprint, texts)
        looked_up = time.perf_counter()
        misses = [text for text, vector in zip(texts, found, strict=True) if vector is None]
        computed: dict[str, np.ndarray] = {}
        if misses:
            unique = list(dict.fromkeys(misses))
            futures = self.batcher.submit(unique)
            try:
                computed = {
                    text: future.result(timeout=self._wait_timeout_s)
                    for text, future in zip(unique, futures, strict=True)
                }
            except TimeoutError as exc:
                raise EmbedderUnavailable(
                    f"the encoder did not answer within {self._wait_timeout_s:.0f} s"
                ) from exc
        vectors, cached = assemble(texts, found, computed, self.dimension)
        return EmbedResult(
            vectors=vectors,
            cached=cached,
            fingerprint=self.fingerprint,
            timings={"cache": looked_up - started, "encode": time.perf_counter() - looked_up},
        )

    def info(self) -> dict[str, Any]:
        return {
            "mode": "local",
            "model": self.name,
            "handle": self.encoder.handle,
            "backend": self.encoder.backend,
            "dimension": self.dimension,
            "fingerprint": self.fingerprint,
            "cache": self.cache.stats().as_dict(),
            "batching": {
                "max_batch_size": self.batcher.max_batch_size,
                "batch_wait_ms": self.batcher.max_wait_s * 1000,
                "workers": self.batcher.workers,
                "max_queue": self.batcher.max_queue,
                "queue_depth": self.batcher.queue_depth,
            },
            "warm_start": self.warm_start.info() if self.warm_start is not None else None,
        }

    def close(self) -> None:
        if self.warm_start is not None:
            self.warm_start.close()  # stops the pre-warm, writes the snapshot
        self.batcher.close()
