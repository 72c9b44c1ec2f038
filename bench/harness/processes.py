"""The servers a benchmark starts: gunicorn process groups on free ports, with their logs.

Each server runs in a session of its own, so that a Ctrl-C in the terminal reaches only the
benchmark, which then stops its servers in order (bench.harness.run). Its output goes to a log
file in the run's work folder, kept when the run fails.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.harness import REPO
from bench.harness.client import HOST, http_call

_SEVERE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


@dataclass
class Server:
    """A gunicorn process group started by a benchmark (its own session, so that a Ctrl-C
    in the terminal reaches only the benchmark, which then stops it in order)."""

    name: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def warnings(self, limit: int = 20) -> list[str]:
        """The server's log lines at WARNING or above (the last `limit` of them)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in lines if _SEVERE.search(line)][-limit:]

    def stop(self, timeout_s: float = 35.0) -> None:
        """SIGTERM to the group (gunicorn stops its workers gracefully; the API's flush their
        inference logs), then SIGKILL to whatever is left after `timeout_s`."""
        if self.alive():
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                print(f"  {self.name}: no exit after SIGTERM; SIGKILL")
        # The master may be gone while a worker lingers: the group is ours either way.
        _signal_group(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(10)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def server_env() -> dict[str, str]:
    """The environment of a server a benchmark starts: this one's without any DC_* setting
    (each point sets its own) or Prometheus folder, quiet logs, unbuffered output, no
    phrase-cache snapshot."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DC_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    # No phrase-cache snapshot unless a point asks for one (the default is a file in var/).
    env.update({"DC_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", "DC_CACHE_SNAPSHOT": ""})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def gunicorn(config: str, app: str | None = None) -> list[str]:
    """The command of gunicorn with `config`, serving `app` instead of the config's `wsgi_app`
    when given (gunicorn takes a command-line app over the config's)."""
    return [sys.executable, "-m", "gunicorn", "-c", config, *([app] if app else [])]


def start_server(name: str, command: list[str], env: dict[str, str], port: int, logs: Path):
    log_path = logs / f"{name}.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Server(name, port, proc, log_path)


def wait_until(
    server: Server, path: str, ok: Callable[[int, bytes], bool], timeout_s: float = 180.0
) -> None:
    """Poll GET `path` until `ok(status, body)` holds; fail with the server's log otherwise."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if not server.alive():
            raise SystemExit(f"{server.name} exited during start-up:\n{server.log_tail()}")
        try:
            status, _, body = http_call(server.port, "GET", path, timeout=5)
            if ok(status, body):
                return
            last = f"{status} {body[:200]!r}"
        except OSError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.3)
    raise SystemExit(
        f"{server.name} not ready after {timeout_s:.0f} s ({last}):\n{server.log_tail()}"
    )


def wait_ready(server: Server) -> None:
    """Wait until the server's GET /ready answers 200 (its models loaded)."""
    wait_until(server, "/ready", lambda status, _: status == 200)


def require_alive(servers: Iterable[Server]) -> None:
    """Fail the run, with the server's log, when one of `servers` died while it measured."""
    for server in servers:
        if not server.alive():
            raise SystemExit(f"{server.name} died during the run:\n{server.log_tail()}")
