"""gunicorn settings for the worker tests: tests/worker_app.py under web.worker's worker (or the
class named by TEST_WORKER_CLASS, to compare with another), one worker of two threads, bound
to DC_API_HOST:DC_API_PORT."""

import os

from dc.config import VAR_DIR, get_settings

_settings = get_settings()
_run_dir = VAR_DIR / "run"
_run_dir.mkdir(parents=True, exist_ok=True)

wsgi_app = "tests.worker_app:app"
bind = f"{_settings.api_host}:{_settings.api_port}"
workers = 1
worker_class = os.environ.get("TEST_WORKER_CLASS", "web.worker.BufferedThreadWorker")
threads = 2
keepalive = 2
timeout = 30
graceful_timeout = 10
backlog = 256
loglevel = "info"
errorlog = "-"
accesslog = None
control_socket = str(_run_dir / f"worker-test-{_settings.api_port}.ctl")
