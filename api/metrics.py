"""Prometheus metrics of the prediction API, correct under several gunicorn workers.

Under gunicorn the API runs as several processes and a scrape of `/metrics` lands on one of
them, so the metrics use prometheus_client's multiprocess mode (`web.prometheus`): gunicorn's
config sets `PROMETHEUS_MULTIPROC_DIR` before any worker starts, every process writes its values
to files there, and `/metrics` aggregates all of them. Without that variable (one process, the
tests' in-process app) the same metrics live in a registry owned by the app.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from web.prometheus import LATENCY_BUCKETS, app_registry, exposition

LOG_EVENTS = ("enqueued", "written", "spooled", "replayed", "dropped", "conflicts")
STAGES = ("parse", "embed", "score", "log", "total")


class ApiMetrics:
    """The API's metrics; create one per app and serve `render()` at /metrics."""

    def __init__(self) -> None:
        self._own = app_registry()  # None in multiprocess mode
        self.multiprocess = self._own is None
        registry = self._own
        self.requests = Counter(
            "api_requests",
            "HTTP requests by endpoint, model and status",
            ["endpoint", "model", "status"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "api_stage_seconds",
            "Seconds per stage of /predict (parse, embed, score, log, total)",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.predictions = Counter(
            "api_predictions",
            "Texts classified, by model and version",
            ["model", "version"],
            registry=registry,
        )
        self.cache = Counter(
            "api_embedding_cache",
            "Texts whose embedding came from the phrase cache (hit) or not (miss)",
            ["result"],
            registry=registry,
        )
        self.cache_size = Gauge(
            "api_embedding_cache_size",
            "Entries in the API process's phrase cache (summed over live workers)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.log_rows = Counter(
            "api_inference_log_rows",
            "Inference-log rows by event (enqueued, written, spooled, replayed, dropped, "
            "conflicts: quarantined because a different row holds their key)",
            ["event"],
            registry=registry,
        )
        self.log_lag = Histogram(
            "api_inference_log_lag_seconds",
            "Seconds from a prediction to its row being written or spooled",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.log_queue_depth = Gauge(
            "api_inference_log_queue_depth",
            "Rows waiting in the inference-log queues (summed over live workers)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.models_served = Gauge(
            "api_models_served",
            "Models a worker is serving (per live worker)",
            registry=registry,
            multiprocess_mode="liveall",
        )
        # Children bound once: `labels()` takes a lock and builds a key on every call, and the
        # request path updates several series per request (bench/bench_api.py measures it).
        self.stage = {stage: self.stage_seconds.labels(stage) for stage in STAGES}
        self.cache_hits = self.cache.labels("hit")
        self.cache_misses = self.cache.labels("miss")
        self._log_rows = {event: self.log_rows.labels(event) for event in LOG_EVENTS}
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._predictions: dict[tuple[str, str], Any] = {}

    def count_request(self, endpoint: str, model: str, status: str) -> None:
        """One HTTP request answered."""
        key = (endpoint, model, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(*key)
        child.inc()

    def count_predictions(self, model: str, version: str, count: int) -> None:
        """`count` texts classified by `model` `version`."""
        key = (model, version)
        child = self._predictions.get(key)
        if child is None:
            child = self._predictions[key] = self.predictions.labels(*key)
        child.inc(count)

    def on_log_event(self, kind: str, value: float) -> None:
        """Listener of `InferenceLog`: count rows per event, observe the lag."""
        if kind == "lag":
            self.log_lag.observe(value)
        elif kind in self._log_rows:
            self._log_rows[kind].inc(value)

    def render(self) -> bytes:
        """The exposition text of every live worker (multiprocess) or of this app."""
        return exposition(self._own)
