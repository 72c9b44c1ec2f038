"""The gunicorn settings both services share. Each service's `gunicorn.conf.py` takes them all
(`from web.gunicorn_base import *`: the names in `__all__`) and sets only what differs (app,
bind, workers, threads, timeouts, backlog, process name, control socket, hooks).

- The worker class is `web.worker.BufferedThreadWorker`: requests buffered until complete (408
  past `DC_REQUEST_READ_TIMEOUT_S`), shed with 429 past `DC_MAX_QUEUE_WAIT_MS` of waiting for a
  thread, /health, /ready and /metrics on threads of their own, gunicorn's own rejections in the
  JSON error envelope, every accepted request answered on SIGTERM.
- Nothing heavy before fork (`preload_app = False`): each worker builds its app, and loads any
  encoder (TensorFlow must be imported after fork), in the worker. The master only reads
  settings.
- No access log: per-request lines cost throughput; /metrics counts requests instead.
"""

from __future__ import annotations

from pathlib import Path

from dc.config import VAR_DIR, get_settings

# The settings a star import takes; the helpers below are not settings.
__all__ = [
    "accesslog",
    "errorlog",
    "keepalive",
    "loglevel",
    "preload_app",
    "worker_class",
    "worker_tmp_dir",
]

worker_class = "web.worker.BufferedThreadWorker"
preload_app = False
keepalive = 5
worker_tmp_dir = "/dev/shm"
loglevel = get_settings().log_level.lower()
errorlog = "-"
accesslog = None


def run_dir() -> Path:
    """`var/run`, made if missing: the services' control sockets and metric files."""
    path = VAR_DIR / "run"
    path.mkdir(parents=True, exist_ok=True)
    return path


def control_socket_path(service: str, port: int) -> str:
    """The control socket of one service instance (gunicorn >= 25.1 opens one, for
    `gunicornc`): one per port, so that several instances (the service, the tests, the
    benchmarks) never fight over the default path."""
    return str(run_dir() / f"{service}-{port}.ctl")
