"""What one API worker holds: the serving runtime's `Services` (embedder, model store,
inference log, prediction cache: `dc.serve.services`) plus the API's own Prometheus metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.metrics import ApiMetrics
from dc.serve.services import Services


@dataclass(kw_only=True)
class ApiServices(Services):
    """The worker's `Services` and its metrics, in `app.extensions["dc.services"]`."""

    metrics: ApiMetrics
