"""gunicorn settings of the prediction API, taken from `dc.config.Settings` (DC_* variables).

- Nothing heavy before fork: `preload_app = False`, so each worker builds its app (model store,
  inference log, embedder client or encoder) after forking. The master only reads settings.
- The worker class is `web.worker.BufferedThreadWorker` (`DC_API_THREADS` request threads): it
  buffers each request in its event loop until complete, so slow clients never hold a thread
  (408 past `DC_REQUEST_READ_TIMEOUT_S`); sheds requests that wait for a thread longer than
  `DC_MAX_QUEUE_WAIT_MS` (429 with Retry-After); runs /health, /ready and /metrics on threads of
  their own; answers gunicorn's own rejections with the JSON error envelope; and on SIGTERM
  answers every request it accepted.
- Workers are recycled after `DC_API_MAX_REQUESTS` requests plus a random jitter, so they never
  restart all at once.
- Hooks: the Prometheus multiprocess folder is emptied when the server starts and a dead
  worker's live gauges are dropped; on SIGTERM (or recycling) each worker flushes its inference
  log to the database, or to the disk spool, before it exits (`worker_exit`).
"""

import os
import shutil

from dc.config import VAR_DIR, get_settings

_settings = get_settings()
_run_dir = VAR_DIR / "run"
_run_dir.mkdir(parents=True, exist_ok=True)
# One metrics folder per port, so several instances (the service, tests, benchmarks) never mix.
# Set here, in the master, before any worker imports prometheus_client.
_metrics_dir = os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", str(_run_dir / f"api-{_settings.api_port}-metrics")
)

# A head scores one phrase with two small matrix products: a BLAS thread pool per worker only
# adds hand-offs (and GIL round trips) to every request. Set before any worker imports NumPy.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

wsgi_app = "api.app:create_app()"
bind = f"{_settings.api_host}:{_settings.api_port}"
workers = _settings.api_workers
worker_class = "web.worker.BufferedThreadWorker"
threads = _settings.api_threads
preload_app = False
timeout = _settings.api_timeout_s
graceful_timeout = _settings.api_graceful_timeout_s
max_requests = _settings.api_max_requests
max_requests_jitter = _settings.api_max_requests_jitter
keepalive = 5
backlog = 512
worker_tmp_dir = "/dev/shm"
loglevel = _settings.log_level.lower()
errorlog = "-"
accesslog = None  # per-request lines cost throughput; /metrics and the inference log count them
proc_name = "dc-api"
control_socket = str(_run_dir / f"api-{_settings.api_port}.ctl")


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
