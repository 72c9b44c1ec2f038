"""gunicorn settings of the embedder service, taken from `dc.config.Settings` (DC_* variables).

One worker by default: the worker owns the model and batches across every request it holds, so
threads (not processes) give concurrency; the model is loaded after fork, never in the master.
The worker class is the API's, `web.worker.BufferedThreadWorker`: requests buffered until
complete (408 past `DC_REQUEST_READ_TIMEOUT_S`), shed with 429 past `DC_MAX_QUEUE_WAIT_MS` of
waiting for a thread, /health, /ready and /metrics on threads of their own, gunicorn's own
rejections in the JSON error envelope, every accepted request answered on SIGTERM.
"""

from dc.config import VAR_DIR, get_settings

_settings = get_settings()
_run_dir = VAR_DIR / "run"
_run_dir.mkdir(parents=True, exist_ok=True)

wsgi_app = "embedder.app:create_app()"
bind = f"{_settings.embedder_host}:{_settings.embedder_port}"
workers = _settings.embedder_workers
worker_class = "web.worker.BufferedThreadWorker"
threads = _settings.embedder_threads
preload_app = False  # TensorFlow must be imported after fork, in the worker
timeout = _settings.embedder_timeout_s
graceful_timeout = 30
keepalive = 5
backlog = 256
worker_tmp_dir = "/dev/shm"
loglevel = _settings.log_level.lower()
errorlog = "-"
accesslog = None  # per-request lines cost throughput; /metrics counts requests instead
proc_name = "dc-embedder"
# gunicorn >= 25.1 opens a control socket (for `gunicornc`); one per port, so that several
# instances (the service, the tests, the benchmark) never fight over the default path.
control_socket = str(_run_dir / f"embedder-{_settings.embedder_port}.ctl")
