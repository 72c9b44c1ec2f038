"""One benchmark run: its work folder, the servers it starts, its scratch database, and the
promise that all of them are released at the end, also on Ctrl-C, SIGTERM or SIGHUP.

    with Run("bench-x-", keep_logs=args.keep_logs) as run:
        database, copied = run.prepare_database(settings, smoke=args.smoke)
        embedder = run.start_embedder()
        api = run.start_api(embedder, app_settings(database), ["banking77"])
        ...  # measure

On leaving the block the servers are stopped (last started first: the API before the
embedder, so it can flush its inference log), the scratch database is dropped, and the work
folder is removed, unless the run failed or `keep_logs` was asked for: then the servers' logs
are kept, and named.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from bench import smoke as smoke_models
from bench.harness.client import HOST, http_call
from bench.harness.database import REGION, Database, open_database, prepare_registry
from bench.harness.processes import (
    Server,
    free_port,
    gunicorn,
    server_env,
    start_server,
    wait_ready,
    wait_until,
)
from dc.config import Settings

ECHO_APP = "bench.echo_app:create_app()"


def app_settings(
    database: Database, workers: int | None = None, threads: int | None = None
) -> dict[str, str]:
    """The DC_* settings of an app served under api/gunicorn.conf.py in a run: `workers` x
    `threads` (the defaults when None), the remote embedder mode, the inference log to
    `database`, the run's region."""
    settings = {}
    if workers is not None:
        settings["DC_API_WORKERS"] = str(workers)
    if threads is not None:
        settings["DC_API_THREADS"] = str(threads)
    settings.update(
        {
            "DC_EMBEDDER_MODE": "remote",
            "DC_DATABASE_URL": database.url,
            "DC_SERVING_REGION": REGION,
        }
    )
    return settings


class Run:
    """A run's resources (see the module's docstring); a context manager."""

    def __init__(self, prefix: str, keep_logs: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.keep_logs = keep_logs
        self.servers: list[Server] = []
        self.database: Database | None = None
        # What the servers other than the embedders logged at WARNING or above (e.g. "inference
        # log queue full"), read when the run ends (the embedder's TensorFlow start-up noise is
        # not news).
        self.server_warnings: dict[str, list[str]] = {}

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.server_warnings = {
            s.name: s.warnings() for s in self.servers if not s.name.startswith("embedder")
        }
        self._tear_down(keep=exc_type is not None or self.keep_logs)

    def _tear_down(self, keep: bool) -> None:
        """Stop the servers, drop the scratch database, remove the work folder unless `keep`.
        A second Ctrl-C cannot interrupt it."""
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for server in reversed(self.servers):
                server.stop()
            if self.database is not None and self.database.drop is not None:
                try:
                    self.database.drop()
                except Exception as exc:  # report, but let the run's own outcome stand
                    print(f"could not drop the scratch database: {exc}")
            if keep:
                print(f"servers' logs and work files kept in {self.workdir}")
            else:
                shutil.rmtree(self.workdir, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, previous)

    # --- the database -------------------------------------------------------------------------

    def prepare_database(self, settings: Settings, smoke: bool) -> tuple[Database, list[dict]]:
        """Open the run's database (bench.harness.database) and give it the promoted demo
        models: the tiny ones of bench/smoke.py (trained when missing) when `smoke`, else those
        of `make demo`.

        Returns:
            The database, and per model copied its name, version and artifact folder.
        """
        registry_file = smoke_models.ensure_models() if smoke else None
        self.database = open_database(self.workdir)
        print(f"database: {self.database.display_url} ({self.database.how})")
        copied = prepare_registry(self.database, self.workdir, settings, registry_file)
        print("registry: " + ", ".join(f"{c['model']} {c['version']}" for c in copied))
        return self.database, copied

    # --- servers ------------------------------------------------------------------------------

    def start(self, name: str, command: list[str], env: dict[str, str], port: int) -> Server:
        """Start a server of this run (its log in the work folder); stopped at the end."""
        server = start_server(name, command, env, port, self.workdir)
        self.servers.append(server)
        return server

    def stop(self, *servers: Server) -> None:
        """Stop `servers` now (each SIGTERM, then SIGKILL if need be)."""
        for server in servers:
            server.stop()
            self.servers.remove(server)

    def start_embedder(
        self, name: str = "embedder", settings: dict[str, str] | None = None, ready: bool = True
    ) -> Server:
        """The embedder service (embedder/gunicorn.conf.py) on a free port, with the DC_*
        `settings` (the defaults otherwise); returns once it is ready, unless not `ready`
        (then the caller starts other servers while it loads, and waits with `wait_ready`)."""
        port = free_port()
        env = {**server_env(), "DC_EMBEDDER_PORT": str(port), **(settings or {})}
        embedder = self.start(name, gunicorn("embedder/gunicorn.conf.py"), env, port)
        if ready:
            wait_ready(embedder)
        return embedder

    def start_app(self, name: str, settings: dict[str, str], app: str | None = None) -> Server:
        """A server under api/gunicorn.conf.py on a free port, with the DC_* `settings` and a
        Prometheus folder of its own: the API, or `app` under the same gunicorn settings."""
        port = free_port()
        env = {
            **server_env(),
            **settings,
            "DC_API_PORT": str(port),
            "PROMETHEUS_MULTIPROC_DIR": str(self.workdir / f"metrics-{name}-{port}"),
        }
        return self.start(name, gunicorn("api/gunicorn.conf.py", app), env, port)

    def start_api(
        self, embedder: Server, settings: dict[str, str], models: Iterable[str], name: str = "api"
    ) -> Server:
        """The API with `settings`, remote `embedder`, and a spool folder of its own (it never
        replays another's files); returns once it serves every one of `models`."""
        spool = self.workdir / f"spool-{name}"
        api = self.start_app(
            name,
            {
                **settings,
                "DC_EMBEDDER_URL": f"http://{HOST}:{embedder.port}",
                "DC_SPOOL_DIR": str(spool),
            },
        )
        wanted = set(models)
        wait_until(
            api,
            "/ready",
            lambda status, body: status == 200 and wanted <= set(json.loads(body)["models"]),
        )
        return api

    def start_echo(self, settings: dict[str, str]) -> Server:
        """The bare Flask echo app (bench/echo_app.py) under the API's gunicorn settings;
        returns once it answers, after checking that the echo app, not the API, is what
        answers (gunicorn takes the command-line app over the config's `wsgi_app`)."""
        echo = self.start_app("echo", settings, app=ECHO_APP)
        wait_until(echo, "/echo", lambda status, _: True)
        body = {"text": "is this the echo app?"}
        status, _, answer = http_call(echo.port, "POST", "/echo", body)
        ready_status, _, _ = http_call(echo.port, "GET", "/ready")
        if status != 200 or json.loads(answer) != body or ready_status != 404:
            raise SystemExit(
                f"the echo app is not what answers on {echo.port} "
                f"(/echo {status}, /ready {ready_status})"
            )
        return echo


# --- stop signals -------------------------------------------------------------------------------


def _interrupt(signum, frame) -> None:
    # SIGTERM and SIGHUP behave like Ctrl-C: unwind through the finally that stops the servers.
    raise KeyboardInterrupt


def install_stop_handlers() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt, so a run always cleans up.

    SIGINT explicitly too: a shell starts background jobs with SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler, so `kill -INT` would not stop (and clean up) a run.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for stop_signal in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(stop_signal, _interrupt)


def run_main(main: Callable[[], int | None]) -> None:
    """Run a benchmark's `main` as its script does: with the stop handlers installed, exiting
    with its status, or with 130 when interrupted (after every server it started stopped)."""
    install_stop_handlers()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every server started was stopped")
        sys.exit(130)
