"""gunicorn settings of the prediction API, taken from `dc.config.Settings` (DC_* variables).

What both services share (the worker class `web.worker.BufferedThreadWorker` with its request
buffering, load shedding and graceful SIGTERM; no preloading, so each worker builds its app,
model store, inference log and embedder client or encoder after forking; keep-alive, logging,
no access log) comes from `web/gunicorn_base.py`. Here, what is the API's own:

- `DC_API_THREADS` request threads per worker, and workers recycled after `DC_API_MAX_REQUESTS`
  requests plus a random jitter, so they never restart all at once.
- Hooks: the Prometheus multiprocess folder is emptied when the server starts and a dead
  worker's live gauges are dropped; on SIGTERM (or recycling) each worker flushes its inference
  log to the database, or to the disk spool, before it exits (`worker_exit`).
"""

import os
import shutil

from dc.config import get_settings
from web.gunicorn_base import *  # noqa: F403 - the settings both services share
from web.gunicorn_base import control_socket_path, run_dir

_settings = get_settings()
# One metrics folder per port, so several instances (the service, tests, benchmarks) never mix.
# Set here, in the master, before any worker imports prometheus_client.
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(run_dir() / f"api-{_settings.api_port}-metrics")
)

# A head scores one phrase with two small matrix products: a BLAS thread pool per worker only
# adds hand-offs (and GIL round trips) to every request. Set before any worker imports NumPy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

wsgi_app = "api.app:create_app()"
bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.api_workers
threads = _settings.api_threads
timeout = _settings.api_timeout_s
graceful_timeout = _settings.api_graceful_timeout_s
max_requests = _settings.api_max_requests
max_requests_jitter = _settings.api_max_requests_jitter
backlog = 512
proc_name = "dc-api"
control_socket = control_socket_path("api", _settings.api_port)


def on_starting(server):
    # Files of a previous run would add its counts to this one's.
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)


def worker_exit(server, worker):
    from api.app import close_app

    close_app(getattr(worker, "wsgi", None))


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
