"""Acceptance benchmark of the prediction API: cached predictions with logging on, against a bare
Flask endpoint that only echoes JSON, in the same run, under the same gunicorn settings.

Acceptance point: repeated phrases served from the cache, with the inference log writing to
PostgreSQL, reach at least 60% of the requests/s of the echo endpoint (ratio api/echo >= 0.60).

What one run does:
  1. Database: DC_BENCH_DATABASE_URL when set; else a scratch database on the local PostgreSQL
     (postgresql+psycopg2://postgres@127.0.0.1:5432, trust auth), dropped at the end; else,
     said loudly in the output and the JSON, a SQLite file (not the acceptance setting). It is
     migrated to Alembic head and given the promoted registry rows of the demo models, copied
     from var/dc.sqlite (read from a migrated copy; var/dc.sqlite itself is left untouched).
  2. Servers, on free ports: the embedder service (embedder/gunicorn.conf.py); the API
     (api/gunicorn.conf.py, remote embedder mode, inference log to that database, its own
     spool folder); the echo app (bench/echo_app.py) with the SAME config file and the same
     DC_API_WORKERS / DC_API_THREADS: `gunicorn -c api/gunicorn.conf.py
     'bench.echo_app:create_app()'` (gunicorn 27 takes a command-line app over the config's
     `wsgi_app`; the run checks that the echo app is what answers).
  3. Warm-up: connections pinned to every API worker send each phrase once, so each worker's
     phrase cache holds them all; then every phrase goes several times over fresh connections
     and every answer must say `cached: true`. Then 2 s of wrk on each server.
  4. Measurement: wrk (bench/predict.lua) POSTs the same bodies, `{"text": <phrase>}` drawn
     from a small set of repeated phrases, to /echo and to /predict/<model>, with the same wrk
     threads and connections; rounds alternate echo, api, echo, api, ... The medians of
     requests/s, p50 and p99 and the summed errors (socket errors + every non-2xx answer) are
     reported, with the ratio of the medians, api/echo. wrk keeps its connections for the
     whole round, and the workers race to accept them: when one worker gets none (seen with
     `ss` 1 s in), the round is capped at one core whatever the app does, so that attempt is
     stopped and started again (at most 5 times; counted in the output and the JSON).
  5. Checks: the share of cache hits during the api rounds (the API's /metrics); the mean time
     per /predict stage inside the app (Server-Timing's stages, from /metrics); and that
     logging happened: after the run the inference log is flushed (the `inferences` row count
     is waited on until it stops growing) and the rows written during the api rounds are
     compared with the 2xx answers, as the API counted them (equal) and as wrk counted them
     (wrk drops the requests still in flight when a round ends, so it counts up to that many
     fewer; the in-flight number is printed).

Output: a table on stdout, bench/results/api.json (machine, settings, every round, medians,
ratio, pass/fail) and bench/results/api.md (the README's table between the markers
`<!-- bench:api:start -->` and `<!-- bench:api:end -->`). Every process it starts is stopped at
the end (SIGTERM, then SIGKILL), also on Ctrl-C, SIGTERM or SIGHUP. About 70 s with the
defaults. Exit status: 0 when the ratio meets the target, 1 when it does not (the results are
saved either way).

The machine's cores are shared by wrk and both servers (and the embedder, idle while
measuring): compare the ratio, not the absolute figures, across runs.

Smoke mode (`--smoke`, what `make bench-smoke` runs): one round of 1 s each, 20 phrases, as
many wrk connections as request threads, the tiny smoke models of bench/smoke.py instead of the
demo's, results in var/bench-smoke/results/; it fails on errors or on predictions missing from
the inference log, never on the ratio.

Usage: python bench/bench_api.py [--seconds 8] [--rounds 3] [--workers 2] [--threads 4]
                                 [--wrk-threads 2] [--connections 16] [--phrases 100]
                                 [--model banking77] [--out bench/results] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.bench_embedder import ensure_wrk, load_phrases  # noqa: E402
from dc.config import VAR_DIR, Settings  # noqa: E402

TARGET_RATIO = 0.60
DEMO_MODELS = ("banking77", "clinc150")
REGION = "global"
MAX_WORDS = 15  # the product's phrases: 5-15 words
LOCAL_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
WARM_WRK_SECONDS = 2.0
VERIFY_REPEATS = 3  # fresh-connection requests per phrase after the pinned warm-up
STABLE_FOR_S = 2.0  # the row count must not change for this long to count as flushed
MAX_ATTEMPTS = 5  # starts of one wrk round when its connections leave a worker idle


# --- processes ----------------------------------------------------------------------------------


_SEVERE = re.compile(r"\b(WARNING|ERROR|CRITICAL|Traceback)\b")


@dataclass
class Server:
    """A gunicorn process group started by this benchmark (its own session, so that a Ctrl-C
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
    """The environment of a server this benchmark starts: this one's without any DC_* setting
    (each point sets its own) or Prometheus folder, quiet logs, unbuffered output."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DC_") and k != "PROMETHEUS_MULTIPROC_DIR"
    }
    env.update({"DC_LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1"})
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def wait_until(server: Server, path: str, ok, timeout_s: float = 180.0) -> None:
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


# --- HTTP ---------------------------------------------------------------------------------------


def http_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 30.0,
) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One request, on `conn` (kept open) or on a fresh connection (closed after)."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, data, headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        if own:
            conn.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> list[tuple[str, dict[str, str], float]]:
    """The API's Prometheus samples (all workers: multiprocess mode)."""
    status, _, body = http_call(port, "GET", "/metrics", timeout=10)
    if status != 200:
        raise SystemExit(f"/metrics answered {status}")
    samples = []
    for line in body.decode().splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return samples


def metric(samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (a value may be a predicate)."""
    total = 0.0
    for sample_name, sample_labels, value in samples:
        if sample_name != name:
            continue
        if all(
            (want(sample_labels.get(key, "")) if callable(want) else sample_labels.get(key) == want)
            for key, want in labels.items()
        ):
            total += value
    return total


@dataclass
class ApiCounters:
    """The /metrics figures the benchmark follows, at one moment."""

    hits: float
    misses: float
    ok: float  # 2xx answers of /predict/<model>
    not_ok: float
    stage_sum: dict[str, float] = field(default_factory=dict)
    stage_count: dict[str, float] = field(default_factory=dict)
    log_rows: dict[str, float] = field(default_factory=dict)
    queue_depth: float = 0.0

    @classmethod
    def read(cls, port: int, model: str) -> ApiCounters:
        samples = scrape(port)
        route = "/predict/<model>"
        stages = ("parse", "embed", "score", "log", "total")
        return cls(
            hits=metric(samples, "api_embedding_cache_total", result="hit"),
            misses=metric(samples, "api_embedding_cache_total", result="miss"),
            ok=metric(
                samples,
                "api_requests_total",
                endpoint=route,
                model=model,
                status=lambda s: s.startswith("2"),
            ),
            not_ok=metric(
                samples,
                "api_requests_total",
                endpoint=route,
                status=lambda s: not s.startswith("2"),
            ),
            stage_sum={s: metric(samples, "api_stage_seconds_sum", stage=s) for s in stages},
            stage_count={s: metric(samples, "api_stage_seconds_count", stage=s) for s in stages},
            log_rows={
                e: metric(samples, "api_inference_log_rows_total", event=e)
                for e in ("enqueued", "written", "spooled", "replayed", "dropped")
            },
            queue_depth=metric(samples, "api_inference_log_queue_depth"),
        )

    def minus(self, earlier: ApiCounters) -> dict[str, Any]:
        hits, misses = self.hits - earlier.hits, self.misses - earlier.misses
        stage_ms = {}
        for stage, total in self.stage_sum.items():
            count = self.stage_count[stage] - earlier.stage_count.get(stage, 0.0)
            if count:
                stage_ms[stage] = 1000 * (total - earlier.stage_sum.get(stage, 0.0)) / count
        return {
            "cache_hits": int(hits),
            "cache_misses": int(misses),
            "cache_hit_share": hits / (hits + misses) if hits + misses else 0.0,
            "api_2xx": int(self.ok - earlier.ok),
            "api_non2xx": int(self.not_ok - earlier.not_ok),
            "stage_mean_ms": stage_ms,
            "log_rows": {
                k: int(v - earlier.log_rows.get(k, 0.0)) for k, v in self.log_rows.items()
            },
        }


# --- database -----------------------------------------------------------------------------------


@dataclass
class Database:
    url: str
    backend: str  # "postgresql" or "sqlite"
    how: str
    drop: Any = None  # callable that removes a scratch database, or None

    @property
    def display_url(self) -> str:
        from sqlalchemy.engine import make_url

        return make_url(self.url).render_as_string(hide_password=True)


def _autocommit_connection(psycopg2, server):
    """A psycopg2 connection to the server's maintenance database, for CREATE/DROP DATABASE."""
    connection = psycopg2.connect(
        host=server.host,
        port=server.port,
        user=server.username,
        dbname=server.database,
        connect_timeout=3,
    )
    connection.autocommit = True
    return connection


def open_database(workdir: Path) -> Database:
    """DC_BENCH_DATABASE_URL, else a scratch database on the local PostgreSQL, else SQLite."""
    given = os.environ.get("DC_BENCH_DATABASE_URL", "").strip()
    if given:
        backend = "sqlite" if given.startswith("sqlite") else "postgresql"
        return Database(given, backend, "DC_BENCH_DATABASE_URL (kept; counts are deltas)")
    try:
        import psycopg2
        from sqlalchemy.engine import make_url

        server = make_url(LOCAL_POSTGRES)
        name = f"dc_bench_api_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        admin = _autocommit_connection(psycopg2, server)
        with admin.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        admin.close()
    except Exception as exc:  # no server, no trust auth, no driver: fall back, loudly
        path = workdir / "bench-api.sqlite"
        banner = "!" * 78
        print(
            f"{banner}\n! PostgreSQL not reachable at {LOCAL_POSTGRES} ({type(exc).__name__}:"
            f" {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}).\n"
            f"! FALLING BACK TO SQLITE ({path}): NOT the acceptance setting (production logs"
            f" to PostgreSQL).\n! Set DC_BENCH_DATABASE_URL to benchmark against PostgreSQL."
            f"\n{banner}"
        )
        return Database(
            f"sqlite:///{path}",
            "sqlite",
            "FALLBACK: SQLite file (PostgreSQL unreachable) - not the acceptance setting",
        )

    def drop() -> None:
        admin = _autocommit_connection(psycopg2, server)
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()

    url = server.set(database=name).render_as_string(hide_password=False)
    return Database(
        url, "postgresql", f"scratch database {name} on the local server (dropped)", drop
    )


def prepare_registry(
    database: Database, workdir: Path, settings: Settings, source_file: Path | None = None
) -> list[dict]:
    """Migrate the benchmark database and copy the demo models' promoted versions into it.

    Args:
        source_file: the SQLite registry to copy them from: var/dc.sqlite (`make demo`) by
            default, bench/smoke.py's for a smoke run.
    """
    from persistence import registry
    from persistence.db import make_engine, session_factory, upgrade

    source_file = source_file or VAR_DIR / "dc.sqlite"
    if not source_file.exists():
        raise SystemExit(f"{source_file} is missing: run .venv/bin/python scripts/demo.py first")
    # A migrated copy (sqlite's backup API: consistent even while someone writes the file).
    copy = workdir / "registry-copy.sqlite"
    with sqlite3.connect(source_file) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    upgrade(f"sqlite:///{copy}")
    upgrade(database.url)

    source_engine, target_engine = make_engine(f"sqlite:///{copy}"), make_engine(database.url)
    source, target = session_factory(source_engine), session_factory(target_engine)
    copied = []
    try:
        for name in DEMO_MODELS:
            with source() as session:
                rows = registry.list_versions(session, name, REGION)
            promoted = [row for row in rows if row.status == "promoted"]
            if not promoted:
                raise SystemExit(
                    f"{name} has no promoted version in {source_file}: run "
                    ".venv/bin/python scripts/demo.py first"
                )
            row = promoted[0]
            with target() as session:
                existing = {r.version for r in registry.list_versions(session, name, REGION)}
            if row.version not in existing:
                with target() as session:
                    registry.record_version(
                        session,
                        name=name,
                        region=REGION,
                        version=row.version,
                        metrics=row.metrics,
                        embedder_fingerprint=row.embedder_fingerprint,
                        artifact_uri=row.artifact_uri,
                        config=row.config,
                    )
            with target() as session:
                registry.promote(
                    session,
                    name,
                    REGION,
                    row.version,
                    tolerance=settings.promotion_tolerance,
                    force=True,
                )
            # Reported relative to the checkout: a results file names no machine's folders.
            artifact = row.artifact_uri.replace(f"file://{REPO}/", "")
            copied.append({"model": name, "version": row.version, "artifact": artifact})
    finally:
        source_engine.dispose()
        target_engine.dispose()
    return copied


def count_rows(url: str) -> int:
    from sqlalchemy import text

    from persistence.db import make_engine

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM inferences")).scalar_one())
    finally:
        engine.dispose()


def wait_flushed(database: Database, api: Server, model: str, timeout_s: float = 60.0) -> int:
    """Wait until the `inferences` row count stops growing (and no row waits in a queue)."""
    deadline = time.monotonic() + timeout_s
    last, stable_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        rows = count_rows(database.url)
        now = time.monotonic()
        if rows != last:
            last, stable_since = rows, now
        elif (
            now - stable_since >= STABLE_FOR_S
            and ApiCounters.read(api.port, model).queue_depth == 0
        ):
            return rows
        time.sleep(0.25)
    print(f"  warning: the inference log did not settle within {timeout_s:.0f} s")
    return last


# --- warm-up and load ---------------------------------------------------------------------------


def warm_api(api: Server, model: str, phrases: list[str], workers: int) -> dict:
    """Put every phrase in every worker's cache, then check every answer is a cache hit."""
    path = f"/predict/{model}"
    pinned: dict[str, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    # /ready answered from one worker; the others may still be booting. Open connections (kept
    # open, so each stays with the worker that accepted it) until every worker has taken one
    # and says it is ready on it.
    deadline = time.monotonic() + 90
    while len(pinned) < workers and time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
        status, headers, _ = http_call(api.port, "GET", "/ready", conn=conn)
        who = headers.get("X-Served-By", "?")
        if status == 200 and who not in pinned:
            pinned[who] = conn
        else:
            spare.append(conn)
            time.sleep(0.02)
        if len(spare) > 100:  # do not hold more than the workers' threads can keep alive
            for old in spare:
                old.close()
            spare.clear()
    for conn in spare:
        conn.close()
    if len(pinned) < workers:
        raise SystemExit(
            f"only {len(pinned)} of {workers} API workers took a connection "
            f"within 90 s:\n{api.log_tail()}"
        )
    first_misses = 0
    try:
        for phrase in phrases:  # interleaved, so no pinned connection idles into keep-alive
            for who, conn in pinned.items():
                status, _, body = http_call(api.port, "POST", path, {"text": phrase}, conn=conn)
                if status != 200:
                    raise SystemExit(f"warm-up: {path} answered {status} on {who}: {body[:300]!r}")
                first_misses += not json.loads(body)["cached"]
    finally:
        for conn in pinned.values():
            conn.close()
    seen: dict[str, int] = {}
    not_cached = 0
    for _ in range(VERIFY_REPEATS):
        for phrase in phrases:
            status, headers, body = http_call(api.port, "POST", path, {"text": phrase})
            if status != 200:
                raise SystemExit(f"warm-up check: {path} answered {status}: {body[:300]!r}")
            seen[headers["X-Served-By"]] = seen.get(headers["X-Served-By"], 0) + 1
            not_cached += not json.loads(body)["cached"]
    if not_cached:
        raise SystemExit(f"warm-up check: {not_cached} answers were not cache hits")
    return {
        "workers_warmed": sorted(pinned),
        "first_pass_misses": first_misses,
        "check_requests": VERIFY_REPEATS * len(phrases),
        "check_not_cached": not_cached,
        "check_answers_by_worker": seen,
    }


def connections_by_process(port: int) -> dict[str, int]:
    """Established connections to `port`, by the pid that accepted them (`ss`, when present).

    wrk opens its connections once and keeps them, so which worker accepted each one decides
    how the round's load is split between the workers (a worker runs on one core at a time).
    """
    if shutil.which("ss") is None:
        return {}
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    counts: dict[str, int] = {}
    for pid in re.findall(r"pid=(\d+)", listing):
        counts[pid] = counts.get(pid, 0) + 1
    return dict(sorted(counts.items()))


def _wrk_figures(output: str) -> dict:
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    figures = json.loads(line.removeprefix("WRK_JSON "))
    return {
        "requests_per_s": figures["requests"] / figures["duration_s"],
        "requests": figures["requests"],
        "ok_2xx": figures["responses"] - figures["non2xx"],
        "non2xx": figures["non2xx"],
        "socket_errors": figures["socket_errors"],
        "errors": figures["socket_errors"] + figures["non2xx"],
        "in_flight_at_stop": max(0, figures["issued"] - figures["responses"]),
        "duration_s": figures["duration_s"],
        "p50_ms": figures["p50_ms"],
        "p90_ms": figures["p90_ms"],
        "p99_ms": figures["p99_ms"],
        "max_ms": figures["max_ms"],
    }


def run_wrk(wrk: str, port: int, bodies: Path, path: str, args, workers: int = 0) -> dict:
    """One wrk round: `args.connections` connections on `args.wrk_threads` threads.

    wrk opens its connections once, in a burst, and the gunicorn workers race to accept them;
    now and then one worker takes them all and the other idles, which caps the round at one
    core (one GIL) whatever the app does. When `workers` > 1, a round whose connections (seen
    with `ss` one second in) leave a worker without any is stopped (SIGINT: wrk still reports
    what it counted) and started again, up to MAX_ATTEMPTS times. The discarded attempts are
    kept in the result: the server answered (and logged) their requests too.
    """
    command = [
        wrk, f"-t{args.wrk_threads}", f"-c{args.connections}", f"-d{args.seconds:g}s",
        "--timeout", "10s", "-s", str(REPO / "bench" / "predict.lua"),
        f"http://127.0.0.1:{port}", "--", str(bodies), str(args.wrk_threads), path,
    ]  # fmt: skip
    expected = min(workers, args.connections)
    discarded: list[dict] = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            try:
                time.sleep(min(1.0, args.seconds / 4))
                split = connections_by_process(port)
                degenerate = expected > 1 and split and len(split) < expected
                if degenerate and attempt < MAX_ATTEMPTS:
                    proc.send_signal(signal.SIGINT)
                    output, _ = proc.communicate(timeout=30)
                    figures = _wrk_figures(output)
                    figures["connections_by_worker"] = sorted(split.values(), reverse=True)
                    discarded.append(figures)
                    time.sleep(0.5)  # let the servers close the abandoned connections
                    continue
                output, errors = proc.communicate()
            except BaseException:
                proc.kill()
                raise
        break
    if proc.returncode != 0:
        raise SystemExit(f"wrk failed ({proc.returncode}): {errors.strip()}")
    result = _wrk_figures(output)
    result["connections_by_worker"] = sorted(split.values(), reverse=True)
    result["discarded_attempts"] = discarded
    return result


def summarise(rounds: list[dict]) -> dict:
    return {
        "requests_per_s": statistics.median(r["requests_per_s"] for r in rounds),
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "p99_ms": statistics.median(r["p99_ms"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "non2xx": sum(r["non2xx"] for r in rounds),
        "socket_errors": sum(r["socket_errors"] for r in rounds),
        "requests": sum(r["requests"] for r in rounds),
        "ok_2xx": sum(r["ok_2xx"] for r in rounds),
        "in_flight_at_stop": sum(r["in_flight_at_stop"] for r in rounds),
        # Attempts stopped because a worker got no connection: not measured, but answered.
        "discarded_attempts": sum(len(r["discarded_attempts"]) for r in rounds),
        "discarded_ok_2xx": sum(d["ok_2xx"] for r in rounds for d in r["discarded_attempts"]),
        "discarded_in_flight": sum(
            d["in_flight_at_stop"] for r in rounds for d in r["discarded_attempts"]
        ),
        "rounds_requests_per_s": [round(r["requests_per_s"], 1) for r in rounds],
    }


# --- report -------------------------------------------------------------------------------------


def machine_info() -> dict:
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gunicorn": metadata.version("gunicorn"),
        "flask": metadata.version("flask"),
        "wrk": (wrk_version.stdout or wrk_version.stderr).splitlines()[0].strip(),
    }


def to_markdown(report: dict) -> str:
    s, echo, api = report["settings"], report["echo"], report["api"]
    logging_ = report["logging"]
    mark = "met" if report["pass"] else "NOT met"
    db = report["database"]
    db_note = (
        "PostgreSQL"
        if db["backend"] == "postgresql"
        else "**SQLite (fallback, not the acceptance setting)**"
    )
    stages = ", ".join(f"{k} {v:.3f}" for k, v in api["stage_mean_ms"].items())
    lines = [
        f"Run {report['when']} on {report['machine']['machine']} ({report['machine']['cpus']} "
        f"CPUs, shared by wrk and the servers); gunicorn `api/gunicorn.conf.py`, "
        f"{s['workers']} workers x {s['threads']} threads for both; wrk -t{s['wrk_threads']} "
        f"-c{s['connections']}; {s['rounds']} alternating rounds of {s['seconds']:g} s each; "
        f"{s['phrases']} repeated phrases, every request a cache hit after warm-up; inference "
        f"log on, to {db_note}.",
        "",
        "| endpoint | req/s (median) | p50 ms | p99 ms | errors | rounds (req/s) |",
        "|---|---:|---:|---:|---:|---|",
        f"| bare Flask `POST /echo` | {echo['requests_per_s']:.0f} | {echo['p50_ms']:.2f} | "
        f"{echo['p99_ms']:.2f} | {echo['errors']} | "
        f"{', '.join(f'{x:.0f}' for x in echo['rounds_requests_per_s'])} |",
        f"| `POST /predict/{s['model']}`, cached, logged | {api['requests_per_s']:.0f} | "
        f"{api['p50_ms']:.2f} | {api['p99_ms']:.2f} | {api['errors']} | "
        f"{', '.join(f'{x:.0f}' for x in api['rounds_requests_per_s'])} |",
        "",
        f"API / echo: **{report['ratio']:.2f}** (target >= {TARGET_RATIO:.2f}: {mark}; "
        f"per round pair {', '.join(f'{x:.2f}' for x in report['pair_ratios'])}). "
        f"Cache hits during the API rounds: {100 * api['cache_hit_share']:.1f}%. "
        f"Inference log: {logging_['rows_written']} rows written for "
        f"{logging_['api_2xx']} 2xx answers counted by the API and {logging_['wrk_2xx']} by wrk "
        f"({logging_['wrk_in_flight_at_stop']} still in flight when wrk stopped"
        + (
            f"; {logging_['spooled']} went through the disk spool, {logging_['replayed']} replayed"
            if logging_["spooled"]
            else ""
        )
        + "). "
        f"Mean ms per stage inside the app (wall clock, so GIL waits included): {stages}.",
        f"wrk attempts restarted because one worker got no connection: echo "
        f"{echo['discarded_attempts']}, api {api['discarded_attempts']}.",
    ]
    return "\n".join(lines) + "\n"


def print_table(report: dict) -> None:
    echo, api = report["echo"], report["api"]
    print()
    print(f"{'':34} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   rounds")
    for label, row in (
        ("bare Flask POST /echo", echo),
        (f"POST /predict/{report['settings']['model']} (cached)", api),
    ):
        print(
            f"{label:34} {row['requests_per_s']:8.0f} {row['p50_ms']:8.2f} "
            f"{row['p99_ms']:8.2f} {row['errors']:7d}   "
            f"{', '.join(f'{x:.0f}' for x in row['rounds_requests_per_s'])}"
        )
    verdict = "PASS" if report["pass"] else "FAIL"
    print(
        f"ratio api/echo: {report['ratio']:.3f} (target >= {TARGET_RATIO}) -> {verdict}; "
        f"per pair: {', '.join(f'{x:.2f}' for x in report['pair_ratios'])}"
    )
    discarded = echo["discarded_attempts"] + api["discarded_attempts"]
    if discarded:
        print(
            f"restarted {discarded} wrk attempt(s) whose connections left a worker idle "
            f"(echo {echo['discarded_attempts']}, api {api['discarded_attempts']})"
        )
    print(
        f"cache-hit share during api rounds: {100 * api['cache_hit_share']:.2f}% "
        f"({api['cache_hits']} hits, {api['cache_misses']} misses)"
    )
    lg = report["logging"]
    print(
        f"inference log: rows written {lg['rows_written']}, 2xx counted by the API "
        f"{lg['api_2xx']}, by wrk {lg['wrk_2xx']} (+{lg['wrk_in_flight_at_stop']} in flight at "
        f"stop); rows == API 2xx: {lg['rows_equal_api_2xx']}; spooled {lg['spooled']}, "
        f"replayed {lg['replayed']}, dropped {lg['dropped']}"
    )
    print(
        "mean ms per stage inside the app: "
        + ", ".join(f"{k} {v:.3f}" for k, v in api["stage_mean_ms"].items())
    )
    for name, lines in report["server_warnings"].items():
        if lines:
            print(f"{name} logged {len(lines)} warning line(s), last: {lines[-1][:160]}")
    if report["database"]["backend"] != "postgresql":
        print(f"!!! DATABASE: {report['database']['how']}")


# --- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=float, default=8.0, help="length of one measured wrk round (default 8)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds per server, alternating echo and api (default 3)",
    )
    defaults = Settings()
    parser.add_argument(
        "--workers",
        type=int,
        default=defaults.api_workers,
        help="gunicorn workers of the API and the echo app (default: DC_API_WORKERS, "
        f"{defaults.api_workers})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=defaults.api_threads,
        help=f"threads per worker of both (default: DC_API_THREADS, {defaults.api_threads})",
    )
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--connections", type=int, default=16, help="wrk connections, kept open (default 16)"
    )
    parser.add_argument(
        "--phrases",
        type=int,
        default=100,
        help="distinct repeated phrases, from BANKING77 and CLINC150 (default 100)",
    )
    parser.add_argument(
        "--model",
        default="banking77",
        choices=DEMO_MODELS,
        help="the model to predict with (default banking77)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="where api.json and api.md go (default bench/results; var/bench-smoke/results "
        "with --smoke)",
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the servers' logs and the work folder (printed)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check that the benchmark works (see above); overrides --seconds, "
        "--rounds, --phrases and --connections",
    )
    args = parser.parse_args()
    if args.smoke:
        args.seconds, args.rounds, args.phrases = 1.0, 1, 20
        # No more connections than request threads: none waits for one, so none is shed
        # (429) however busy the machine is, and any error means something broke.
        args.connections = args.workers * args.threads
        args.out = smoke.smoke_out(args.out)
    elif args.out is None:
        args.out = REPO / "bench" / "results"
    if args.rounds < 1 or args.seconds <= 0 or args.phrases < 1:
        parser.error("--rounds, --seconds and --phrases must be positive")
    return args


def tear_down(servers: list[Server], database: Database | None, workdir: Path, keep: bool) -> None:
    """Stop `servers` (last started first: the API before the embedder, so it can flush its
    log), drop the scratch database, and remove `workdir` unless `keep` (a failed run's logs
    are kept and named). A second Ctrl-C cannot interrupt it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for server in reversed(servers):
            server.stop()
        if database is not None and database.drop is not None:
            try:
                database.drop()
            except Exception as exc:  # report, but let the run's own outcome stand
                print(f"could not drop the scratch database: {exc}")
        if keep:
            print(f"servers' logs and work files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    finally:
        signal.signal(signal.SIGINT, previous)


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


def main() -> int:
    args = parse_args()
    install_stop_handlers()
    wrk = ensure_wrk()
    settings = Settings()
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    servers: list[Server] = []
    database: Database | None = None
    failed = True
    try:
        phrases = load_phrases(MAX_WORDS)[: args.phrases]
        bodies = workdir / "bodies.jsonl"
        bodies.write_text("".join(json.dumps({"text": p}) + "\n" for p in phrases))

        registry_file = smoke.ensure_models() if args.smoke else None
        database = open_database(workdir)
        print(f"database: {database.display_url} ({database.how})")
        copied = prepare_registry(database, workdir, settings, registry_file)
        print("registry: " + ", ".join(f"{c['model']} {c['version']}" for c in copied))

        embedder_port, api_port, echo_port = free_port(), free_port(), free_port()
        base_env = server_env()
        embedder_env = {**base_env, "DC_EMBEDDER_PORT": str(embedder_port)}
        # The API and the echo app: the same DC_* settings; only the port (and the folder of
        # Prometheus files, which the echo app never writes) differ.
        api_settings = {
            "DC_API_WORKERS": str(args.workers),
            "DC_API_THREADS": str(args.threads),
            "DC_EMBEDDER_MODE": "remote",
            "DC_EMBEDDER_URL": f"http://127.0.0.1:{embedder_port}",
            "DC_DATABASE_URL": database.url,
            "DC_SPOOL_DIR": str(workdir / "spool"),  # never replay other runs' spool files
            "DC_SERVING_REGION": REGION,
        }
        api_env = {
            **base_env,
            **api_settings,
            "DC_API_PORT": str(api_port),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "api-metrics"),
        }
        echo_env = {
            **base_env,
            **api_settings,
            "DC_API_PORT": str(echo_port),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "echo-metrics"),
        }
        gunicorn = [sys.executable, "-m", "gunicorn"]

        print("starting the embedder service, the API and the echo app ...")
        embedder = start_server(
            "embedder",
            [*gunicorn, "-c", "embedder/gunicorn.conf.py"],
            embedder_env,
            embedder_port,
            workdir,
        )
        servers.append(embedder)
        echo = start_server(
            "echo",
            [*gunicorn, "-c", "api/gunicorn.conf.py", "bench.echo_app:create_app()"],
            echo_env,
            echo_port,
            workdir,
        )
        servers.append(echo)
        wait_until(embedder, "/ready", lambda status, _: status == 200)
        api = start_server(
            "api", [*gunicorn, "-c", "api/gunicorn.conf.py"], api_env, api_port, workdir
        )
        servers.append(api)
        wait_until(
            api,
            "/ready",
            lambda status, body: status == 200 and args.model in json.loads(body)["models"],
        )

        # The echo app, not the API, must be what answers on its port (command-line app over
        # the config's wsgi_app).
        status, _, body = http_call(echo_port, "POST", "/echo", {"text": phrases[0]})
        echo_status, _, _ = http_call(echo_port, "GET", "/ready")
        if status != 200 or json.loads(body) != {"text": phrases[0]} or echo_status != 404:
            raise SystemExit(
                f"the echo app is not what answers on {echo_port} "
                f"(/echo {status}, /ready {echo_status})"
            )

        warm = warm_api(api, args.model, phrases, args.workers)
        print(
            f"warm-up: {len(phrases)} phrases in each of {len(warm['workers_warmed'])} "
            f"workers; {warm['check_requests']} checks over fresh connections, all cache hits "
            f"(answers by worker: {warm['check_answers_by_worker']})"
        )
        predict_path = f"/predict/{args.model}"
        warm_seconds = min(WARM_WRK_SECONDS, args.seconds) if args.smoke else WARM_WRK_SECONDS
        warm_args = argparse.Namespace(**{**vars(args), "seconds": warm_seconds})
        warm_wrk = {
            "echo": run_wrk(wrk, echo_port, bodies, "/echo", warm_args, args.workers),
            "api": run_wrk(wrk, api_port, bodies, predict_path, warm_args, args.workers),
        }
        for name, result in warm_wrk.items():
            if result["errors"]:
                raise SystemExit(f"warm-up wrk round on {name}: {result['errors']} errors")

        rows_before = wait_flushed(database, api, args.model)
        counters_before = ApiCounters.read(api_port, args.model)
        load_before = os.getloadavg()
        rounds: list[dict] = []
        api_phase = {"hits": 0, "misses": 0}
        print(
            f"measuring: {args.rounds} rounds each of {args.seconds:g} s, alternating "
            f"echo/api, wrk -t{args.wrk_threads} -c{args.connections}"
        )
        for number in range(1, args.rounds + 1):
            for name, port, path in (("echo", echo_port, "/echo"), ("api", api_port, predict_path)):
                before = ApiCounters.read(api_port, args.model) if name == "api" else None
                result = run_wrk(wrk, port, bodies, path, args, args.workers)
                result.update(server=name, round=number)
                if before is not None:
                    delta = ApiCounters.read(api_port, args.model).minus(before)
                    result["cache_hit_share"] = delta["cache_hit_share"]
                    api_phase["hits"] += delta["cache_hits"]
                    api_phase["misses"] += delta["cache_misses"]
                rounds.append(result)
                extra = (
                    f"  cache hits {100 * result['cache_hit_share']:.1f}%" if name == "api" else ""
                )
                split = "/".join(map(str, result["connections_by_worker"])) or "?"
                print(
                    f"  round {number} {name:4}: {result['requests_per_s']:7.0f} req/s  "
                    f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
                    f"errors {result['errors']}  connections per worker {split}{extra}"
                )
        load_after = os.getloadavg()

        rows_after = wait_flushed(database, api, args.model)
        counters_after = ApiCounters.read(api_port, args.model)
        totals = counters_after.minus(counters_before)
        for server in servers:
            if not server.alive():
                raise SystemExit(f"{server.name} died during the run:\n{server.log_tail()}")
        failed = False
    finally:
        # The API's and the echo app's (the embedder's TensorFlow start-up noise is not news).
        server_warnings = {s.name: s.warnings() for s in servers if s.name != "embedder"}
        tear_down(servers, database, workdir, keep=failed or args.keep_logs)

    echo_rounds = [r for r in rounds if r["server"] == "echo"]
    api_rounds = [r for r in rounds if r["server"] == "api"]
    echo_summary, api_summary = summarise(echo_rounds), summarise(api_rounds)
    hits, misses = api_phase["hits"], api_phase["misses"]
    api_summary.update(
        cache_hits=hits,
        cache_misses=misses,
        cache_hit_share=hits / (hits + misses) if hits + misses else 0.0,
        stage_mean_ms=totals["stage_mean_ms"],
    )
    ratio = api_summary["requests_per_s"] / echo_summary["requests_per_s"]
    rows_written = rows_after - rows_before
    wrk_2xx = api_summary["ok_2xx"] + api_summary["discarded_ok_2xx"]
    wrk_in_flight = api_summary["in_flight_at_stop"] + api_summary["discarded_in_flight"]
    report = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "smoke": args.smoke,
        "machine": {
            **machine_info(),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "settings": {
            "seconds": args.seconds,
            "rounds": args.rounds,
            "workers": args.workers,
            "threads": args.threads,
            "wrk_threads": args.wrk_threads,
            "connections": args.connections,
            "phrases": len(phrases),
            "model": args.model,
            "gunicorn_config": "api/gunicorn.conf.py (both servers)",
            "echo_command": "gunicorn -c api/gunicorn.conf.py 'bench.echo_app:create_app()'",
            "embedder_mode": "remote",
            "log_batch_size": settings.log_batch_size,
            "log_flush_interval_ms": settings.log_flush_interval_ms,
        },
        "database": {"backend": database.backend, "how": database.how, "url": database.display_url},
        "registry": copied,
        "warm_up": {**warm, "wrk": warm_wrk},
        "rounds": rounds,
        "echo": echo_summary,
        "api": api_summary,
        "ratio": ratio,
        "pair_ratios": [
            a["requests_per_s"] / e["requests_per_s"]
            for e, a in zip(echo_rounds, api_rounds, strict=True)
        ],
        "target_ratio": TARGET_RATIO,
        "pass": ratio >= TARGET_RATIO,
        "logging": {
            "rows_written": rows_written,
            "api_2xx": totals["api_2xx"],
            "api_non2xx": totals["api_non2xx"],
            # wrk's 2xx over every api run in the window (measured rounds and discarded
            # attempts), and the requests it abandoned in flight when each run stopped.
            "wrk_2xx": wrk_2xx,
            "wrk_in_flight_at_stop": wrk_in_flight,
            "rows_equal_api_2xx": rows_written == totals["api_2xx"],
            "wrk_2xx_all_logged": wrk_2xx <= rows_written <= wrk_2xx + wrk_in_flight,
            "enqueued": totals["log_rows"]["enqueued"],
            "written": totals["log_rows"]["written"],
            "spooled": totals["log_rows"]["spooled"],
            "replayed": totals["log_rows"]["replayed"],
            "dropped": totals["log_rows"]["dropped"],
        },
        # What the servers logged at WARNING or above (e.g. "inference log queue full").
        "server_warnings": server_warnings,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = smoke.mark(to_markdown(report), args.smoke)
    (args.out / "api.md").write_text(markdown)
    print_table(report)
    print()
    print(markdown)
    print(f"saved {args.out / 'api.json'} and {args.out / 'api.md'}")
    if args.smoke:
        smoke.require_no_errors({"echo": echo_summary, "api": api_summary})
        if not report["logging"]["rows_equal_api_2xx"]:
            raise SystemExit(
                f"smoke run failed: {rows_written} inference rows written for "
                f"{totals['api_2xx']} 2xx answers"
            )
        return 0
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; every server started was stopped")
        sys.exit(130)
