"""Prometheus metrics of the embedder service, in a registry owned by one app.

Request counts and stage latencies are observed as they happen; cache counters, cache size and
queue depth are read from the engine at scrape time, so they can never drift from the truth.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dc.nlp.embeddings import LocalEmbedder
from web.prometheus import LATENCY_BUCKETS

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _EngineCollector:
    """Reads the engine's cache and queue state at scrape time."""

    def __init__(self, engine: Callable[[], LocalEmbedder | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        yield GaugeMetricFamily(
            "embedder_ready", "1 once the model is loaded and warmed", value=engine is not None
        )
        if engine is None:
            return
        stats = engine.cache.stats()
        yield CounterMetricFamily("embedder_cache_hits", "Phrase-cache hits", value=stats.hits)
        yield CounterMetricFamily(
            "embedder_cache_misses", "Phrase-cache misses", value=stats.misses
        )
        yield CounterMetricFamily(
            "embedder_cache_evictions", "Phrase-cache evictions", value=stats.evictions
        )
        yield GaugeMetricFamily("embedder_cache_size", "Phrase-cache entries", value=stats.size)
        yield GaugeMetricFamily(
            "embedder_cache_maxsize", "Phrase-cache capacity", value=stats.maxsize
        )
        yield GaugeMetricFamily(
            "embedder_queue_depth",
            "Texts waiting for the encoder",
            value=engine.batcher.queue_depth,
        )
        if engine.warm_start is not None:
            warm = engine.warm_start.info()
            phrases = GaugeMetricFamily(
                "embedder_warm_start_phrases",
                "Phrases put in the cache at start, by source: the snapshot read, or the "
                "inference log's frequent texts encoded so far (pre-warm)",
                labels=["source"],
            )
            phrases.add_metric(["snapshot"], warm["snapshot"]["entries"])
            phrases.add_metric(["prewarm"], warm["prewarm"]["encoded"])
            yield phrases


class EmbedderMetrics:
    """The service's metrics: create one per app and pass `registry` to the exporter."""

    def __init__(self, engine: Callable[[], LocalEmbedder | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "embedder_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "embedder_stage_seconds",
            "Time spent per stage of /embed (parse, cache, encode, serialize, total)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "embedder_batch_size",
            "Texts per encoder call (micro-batch size)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "embedder_batch_seconds",
            "Seconds per encoder call",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_EngineCollector(engine))

    def observe_batch(self, size: int, seconds: float) -> None:
        """Hook for the micro-batcher: one encoder call of `size` texts took `seconds`."""
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)
