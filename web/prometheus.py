"""What both services' Prometheus metrics share: the latency buckets, and metrics that stay
correct when a service runs as several gunicorn worker processes.

A scrape of `/metrics` lands on one worker. In prometheus_client's multiprocess mode (gunicorn's
config sets `PROMETHEUS_MULTIPROC_DIR` before any worker starts) every process writes its values
to files there, and the exposition aggregates all of them. Without that variable (one process,
an in-process test app) an app's metrics live in a registry of its own. Each service keeps its
own metric definitions (`api/metrics.py`, `embedder/metrics.py`).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest

LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip


def multiprocess_dir() -> str | None:
    """The folder of multiprocess metric files, when multiprocess mode is on."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def app_registry() -> CollectorRegistry | None:
    """The registry an app's metrics go to: its own, or None in multiprocess mode, where the
    values live in files and are collected from there (registering the metrics in a registry
    too would count them twice)."""
    return None if multiprocess_dir() is not None else CollectorRegistry(auto_describe=True)


def exposition(registry: CollectorRegistry | None) -> bytes:
    """The exposition text of `registry`, or of every live worker when None (multiprocess)."""
    if registry is not None:
        return generate_latest(registry)
    from prometheus_client import multiprocess

    aggregate = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregate)
    return generate_latest(aggregate)
