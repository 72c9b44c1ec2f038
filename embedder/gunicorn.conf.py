"""gunicorn settings of the embedder service, taken from `dc.config.Settings` (DC_* variables).

One worker by default: the worker owns the model and batches across every request it holds, so
threads (not processes) give concurrency; the model is loaded after fork, never in the master.
What both services share (the worker class `web.worker.BufferedThreadWorker`, no preloading,
keep-alive, logging, no access log) comes from `web/gunicorn_base.py`.

On SIGTERM the worker closes its engine (`worker_exit`), which writes the phrase-cache snapshot
(DC_CACHE_SNAPSHOT) that the next embedder reads at start; `graceful_timeout` leaves it the time.
"""

from dc.config import get_settings
from web.gunicorn_base import *  # noqa: F403 - the settings both services share
from web.gunicorn_base import control_socket_path

_settings = get_settings()

wsgi_app = "embedder.app:create_app()"
bind = f"{_settings.embedder_host}:{_settings.embedder_port}"
workers = _settings.embedder_workers
threads = _settings.embedder_threads
timeout = _settings.embedder_timeout_s
graceful_timeout = 30
backlog = 256
proc_name = "dc-embedder"
control_socket = control_socket_path("embedder", _settings.embedder_port)


def worker_exit(server, worker):
    from embedder.app import close_app

    close_app(getattr(worker, "wsgi", None))
