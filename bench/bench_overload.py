"""Overload benchmark of the prediction API: slow clients and a flood of new phrases, against the
acceptance figures of the services' gunicorn worker (web/worker/).

Acceptance:
  A. 200 connections that send their headers a byte at a time (a few bytes, then one a second)
     for 60 s: a normal client's /predict and /health each answer within 1 s, every time.
  B. 512 connections sending single texts never seen before (every one an encoder miss) for
     20 s: /health p99 under 100 ms; the requests that wait for a thread longer than
     DC_MAX_QUEUE_WAIT_MS get 429 with Retry-After, within that bound as the client sees it
     (p99; the client's own loop delay, which is part of it, is reported); after the load,
     normal requests answer at their usual latency within 5 s.

What one run does:
  1. The database and the registry as bench/bench_api.py sets them up (bench/harness/: a scratch
     database on the local PostgreSQL, the demo models' promoted versions copied from
     var/dc.sqlite), then the embedder service and the API (api/gunicorn.conf.py, remote embedder
     mode, DC_API_WORKERS x DC_API_THREADS, every other setting at its default) on free ports.
  2. A baseline: a normal client's new-phrase /predict latency, one request at a time, for a few
     seconds.
  3. Phase A: the slow clients run in a child process (asyncio; a connection the server closes,
     with 408 after DC_REQUEST_READ_TIMEOUT_S, is opened again at once, so 200 are always held)
     while this process, as the normal client, alternates /predict (a small set of repeated
     phrases, on one kept-alive connection) and /health (a new connection each time, as a load
     balancer's check) every 100 ms.
  4. Phase B: the flood runs in a child process (asyncio, 512 connections; each sends its next
     request as soon as it has an answer, ignoring Retry-After, and reconnects when the server
     closes) while this process checks /health every 50 ms on new connections. Then, for 5 s,
     the normal client's new-phrase /predict again, one at a time.

Output: bench/results/overload.json (every figure) and bench/results/overload.md (the table).
`--smoke`: a few seconds of each phase with small numbers on the tiny models of bench/smoke.py
(trained when missing), results in the folder given by
`--out` (default var/bench-smoke/overload), never bench/results. Every process it starts is
stopped at the end, also on Ctrl-C, SIGTERM or SIGHUP. About 2 min with the defaults. Exit
status 0 when every acceptance point is met, 1 otherwise (the results are saved either way).

The client and the servers share the machine's cores: the flood's own client takes a good part
of one core.

Usage: python bench/bench_overload.py [--slow-connections 200] [--slow-seconds 60]
                                      [--flood-connections 512] [--flood-seconds 20]
                                      [--model banking77] [--out bench/results] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import http.client
import json
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.client import HOST, http_call  # noqa: E402
from bench.harness.database import DEMO_MODELS, Database  # noqa: E402
from bench.harness.inputs import load_phrases  # noqa: E402
from bench.harness.processes import Server, require_alive  # noqa: E402
from bench.harness.results import (  # noqa: E402
    latency_summary,
    machine_info,
    timestamp,
    write_results,
)
from bench.harness.run import Run, app_settings, run_main  # noqa: E402
from dc.config import Settings  # noqa: E402

MAX_WORDS = 15
SLOW_INTERVAL_S = 1.0  # the slow clients send one byte this often
NORMAL_EVERY_S = 0.1
HEALTH_EVERY_S = 0.05
AFTER_LOAD_S = 5.0
BASELINE_S = 3.0
CLIENT_TIMEOUT_S = 10.0
TARGET_NORMAL_MAX_S = 1.0
TARGET_HEALTH_P99_S = 0.100
LAG_PROBE_S = 0.01  # the flood client's probe of its own event loop's delay


# --- load generators (also used by tests/service/test_overload_service.py) --------------------


async def _read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """Read one HTTP response; its status and (lower-cased) headers."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers


async def _slow_headers(port: int, connections: int, seconds: float, path: str) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    stats: dict[str, Any] = {"connections": 0, "connect_errors": 0, "closed": 0, "answers": {}}
    head = f"POST {path} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/json\r\n".encode()
    drip = head + b"X-Slow: " + b"s" * 100_000

    async def client() -> None:
        while loop.time() < deadline:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                stats["connect_errors"] += 1
                await asyncio.sleep(SLOW_INTERVAL_S)
                continue
            stats["connections"] += 1
            try:
                writer.write(drip[:8])  # a few bytes, then one a second
                sent = 8
                while loop.time() < deadline:
                    try:
                        data = await asyncio.wait_for(reader.read(65536), SLOW_INTERVAL_S)
                    except TimeoutError:
                        writer.write(drip[sent : sent + 1])
                        sent += 1
                        continue
                    if data.startswith(b"HTTP/"):
                        status = data.split(b" ", 2)[1].decode()
                        stats["answers"][status] = stats["answers"].get(status, 0) + 1
                    else:
                        stats["closed"] += 1
                    break
            except OSError:
                stats["closed"] += 1
            finally:
                writer.close()

    await asyncio.gather(*(client() for _ in range(connections)))
    return stats


def slow_headers(port: int, connections: int, seconds: float, path: str = "/predict/x") -> dict:
    """Hold `connections` connections that send request headers a byte a second, for
    `seconds`; each one the server closes is opened again.

    Returns:
        connections opened, connect errors, the server's answers by status (408 expected) and
        the connections it closed without one.
    """
    return asyncio.run(_slow_headers(port, connections, seconds, path))


async def _flood(
    port: int, connections: int, seconds: float, path: str, phrases: list[str], timeout_s: float
) -> dict:
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + seconds
    answers: list[tuple[float, int, float, str | None]] = []
    errors: dict[str, int] = {}

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def client(n: int) -> None:
        writer = reader = None
        i = 0
        while loop.time() < deadline:
            if writer is None:
                try:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(HOST, port), timeout_s
                    )
                except (OSError, TimeoutError):
                    error("connect")
                    await asyncio.sleep(0.05)
                    continue
            i += 1
            text = f"{phrases[(n * 7919 + i) % len(phrases)]} {n}x{i}"  # never seen before
            body = json.dumps({"text": text}).encode()
            request = (
                f"POST {path} HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body
            sent_at = loop.time()
            try:
                writer.write(request)
                status, headers = await asyncio.wait_for(_read_answer(reader), timeout_s)
            except TimeoutError:
                error("timeout")
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                error("closed")
            else:
                answers.append(
                    (sent_at - started, status, loop.time() - sent_at, headers.get("retry-after"))
                )
                if headers.get("connection", "").lower() != "close":
                    continue
            writer.close()
            writer = None
        if writer is not None:
            writer.close()

    lags: list[float] = []

    async def lag_probe() -> None:
        # How late this loop wakes from a short sleep: a latency measured here includes that
        # much of the client's own wait for a core (it shares the machine with the servers).
        while loop.time() < deadline:
            asked = loop.time()
            await asyncio.sleep(LAG_PROBE_S)
            lags.append(loop.time() - asked - LAG_PROBE_S)

    await asyncio.gather(lag_probe(), *(client(n) for n in range(connections)))
    return {
        "answers": answers,
        "errors": errors,
        "seconds": loop.time() - started,
        "client_lags": lags,
    }


@contextlib.contextmanager
def no_gc():
    """No garbage collection inside the block (one collection before it): a collection of a
    large process (a test session with TensorFlow loaded, say) takes hundreds of ms, which a
    latency measured across it would count as the server's."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def flood(
    port: int,
    connections: int,
    seconds: float,
    path: str,
    phrases: list[str],
    timeout_s: float = CLIENT_TIMEOUT_S,
) -> dict:
    """`connections` clients posting single new texts (phrases with a unique suffix) to `path`
    for `seconds`, each sending its next request as soon as it has an answer.

    Returns:
        answers: (sent at, status, latency, Retry-After) per answer, times in seconds from the
        start; errors: counts of connect errors, timeouts and connections closed without an
        answer; seconds: how long it ran.
    """
    with no_gc():  # a pause would stall every connection at once
        return asyncio.run(_flood(port, connections, seconds, path, phrases, timeout_s))


def _child(send, function, args) -> None:
    try:
        send.send(("ok", function(*args)))
    except BaseException as exc:  # reported to the parent, which raises it
        send.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        send.close()


class InProcess:
    """`function(*args)` in a child process (spawned: a clean interpreter), so that the load
    it generates does not share this process's GIL with the measurements taken here."""

    def __init__(self, function, *args) -> None:
        context = multiprocessing.get_context("spawn")
        self._receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_child, args=(send, function, args), daemon=True)
        self.process.start()
        send.close()

    def running(self) -> bool:
        return self.process.is_alive() and not self._receive.poll()

    def result(self, timeout_s: float = 120.0):
        """The function's return value (waits for it); raises RuntimeError if it failed."""
        if not self._receive.poll(timeout_s):
            self.stop()
            raise RuntimeError(f"the child process gave no result within {timeout_s} s")
        kind, value = self._receive.recv()
        self.process.join(10)
        if kind != "ok":
            raise RuntimeError(f"the child process failed: {value}")
        return value

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)


def timed_call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    conn: http.client.HTTPConnection | None = None,
    timeout_s: float = CLIENT_TIMEOUT_S,
) -> tuple[int | None, float]:
    """One request (on `conn`, kept, or on a new connection); (status or None, seconds)."""
    started = time.monotonic()
    try:
        status, _, _ = http_call(port, method, path, body, conn=conn, timeout=timeout_s)
    except (OSError, http.client.HTTPException):
        if conn is not None:
            conn.close()  # http.client reconnects on the next request
        return None, time.monotonic() - started
    return status, time.monotonic() - started


# --- phases -------------------------------------------------------------------------------------


def measure_normal(port: int, model: str, phrases: list[str], seconds: float, tag: str) -> dict:
    """A normal client's new-phrase predictions, one at a time, for `seconds`."""
    conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT_S)
    latencies, failures, i = [], 0, 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            i += 1
            text = f"{phrases[i % len(phrases)]} {tag}{i}"
            status, seconds_taken = timed_call(
                port, "POST", f"/predict/{model}", {"text": text}, conn=conn
            )
            if status == 200:
                latencies.append(seconds_taken)
            else:
                failures += 1
            time.sleep(NORMAL_EVERY_S)
    finally:
        conn.close()
    return {**latency_summary(latencies), "failures": failures}


def phase_slow(port: int, model: str, phrases: list[str], connections: int, seconds: float):
    attack = InProcess(slow_headers, port, connections, seconds, f"/predict/{model}")
    time.sleep(min(3.0, seconds / 4))  # let every slow connection open
    conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT_S)
    predict, health, failures = [], [], {"predict": 0, "health": 0}
    i = 0
    try:
        with no_gc():
            while attack.running():
                i += 1
                status, took = timed_call(
                    port, "POST", f"/predict/{model}", {"text": phrases[i % 20]}, conn=conn
                )
                predict.append(took)
                failures["predict"] += status != 200
                status, took = timed_call(port, "GET", "/health")
                health.append(took)
                failures["health"] += status != 200
                time.sleep(NORMAL_EVERY_S)
    finally:
        conn.close()
    attack_stats = attack.result()
    return {
        "connections": connections,
        "seconds": seconds,
        "attack": attack_stats,
        "predict": {**latency_summary(predict), "failures": failures["predict"]},
        "health": {**latency_summary(health), "failures": failures["health"]},
    }


def phase_flood(port: int, model: str, phrases: list[str], connections: int, seconds: float):
    load = InProcess(flood, port, connections, seconds, f"/predict/{model}", phrases)
    health, health_failures = [], 0
    with no_gc():
        while load.running():
            status, took = timed_call(port, "GET", "/health")
            health.append(took)
            health_failures += status != 200
            time.sleep(HEALTH_EVERY_S)
    result = load.result()
    after = measure_normal(port, model, phrases, AFTER_LOAD_S, "after")
    by_status: dict[str, list[tuple]] = {}
    for answer in result["answers"]:
        by_status.setdefault(str(answer[1]), []).append(answer)
    shed = by_status.get("429", []) + by_status.get("503", [])
    ok = [a for status, rows in by_status.items() if status.startswith("2") for a in rows]
    return {
        "connections": connections,
        "seconds": round(result["seconds"], 2),
        "answers_by_status": {status: len(rows) for status, rows in sorted(by_status.items())},
        "client_errors": result["errors"],
        "ok_2xx": latency_summary([a[2] for a in ok]),
        "shed_429_503": {
            **latency_summary([a[2] for a in shed]),
            "without_retry_after": sum(1 for a in shed if a[3] is None),
        },
        "health": {**latency_summary(health), "failures": health_failures},
        "client_loop_lag": latency_summary(result["client_lags"]),
        "after_load": after,
    }


# --- report -------------------------------------------------------------------------------------


def verdicts(report: dict) -> dict[str, bool]:
    """Each acceptance point, met or not."""
    slow, fl = report["slow_headers"], report["flood"]
    bound_ms = report["settings"]["max_queue_wait_ms"]
    shed = fl["shed_429_503"]
    baseline = report["baseline"]["p50_ms"] or 0.0
    after = fl["after_load"]
    return {
        "slow: /predict and /health within 1 s every time": all(
            part["failures"] == 0 and (part["max_ms"] or 0) <= 1000 * TARGET_NORMAL_MAX_S
            for part in (slow["predict"], slow["health"])
        ),
        "flood: /health p99 under 100 ms": fl["health"]["failures"] == 0
        and (fl["health"]["p99_ms"] or 0) < 1000 * TARGET_HEALTH_P99_S,
        "flood: requests past the bound shed with 429/503 + Retry-After": shed["count"] > 0
        and shed["without_retry_after"] == 0,
        # As the client sees it: its own loop's delay included (reported beside it).
        "flood: shed answers within the bound (p99)": (shed["p99_ms"] or 0) <= bound_ms,
        "after: normal latency within 5 s of the load": after["failures"] == 0
        and after["count"] > 0
        and (after["max_ms"] or 0) <= max(5 * baseline, 1000.0),
    }


def to_markdown(report: dict) -> str:
    s, slow, fl = report["settings"], report["slow_headers"], report["flood"]

    def row(name: str, part: dict, extra: str = "") -> str:
        return (
            f"| {name} | {part['count']} | {part['p50_ms']} | {part['p99_ms']} | "
            f"{part['max_ms']} | {extra} |"
        )

    statuses = ", ".join(f"{k}: {v}" for k, v in fl["answers_by_status"].items())
    errors = ", ".join(f"{k} {v}" for k, v in fl["client_errors"].items()) or "none"
    attack = slow["attack"]
    lines = [
        f"Run {report['when']} on {report['machine']['machine']} ({report['machine']['cpus']} "
        f"CPUs, shared by the clients and the servers); the API under `api/gunicorn.conf.py`, "
        f"{s['workers']} workers x {s['threads']} threads, `{s['worker_class']}`, remote "
        f"embedder, inference log to {report['database']['backend']}; "
        f"DC_MAX_QUEUE_WAIT_MS={s['max_queue_wait_ms']:g}, "
        f"DC_REQUEST_READ_TIMEOUT_S={s['request_read_timeout_s']:g}.",
        "",
        "| measured | count | p50 ms | p99 ms | max ms | notes |",
        "|---|---:|---:|---:|---:|---|",
        row("baseline: new-phrase `/predict`, one at a time", report["baseline"]),
        row(
            f"A. {slow['connections']} slow-header connections, {slow['seconds']:g} s: "
            "normal `/predict`",
            slow["predict"],
            f"failures {slow['predict']['failures']}",
        ),
        row(
            "A. ... normal `/health` (new connection each)",
            slow["health"],
            f"failures {slow['health']['failures']}; slow connections opened "
            f"{attack['connections']}, answered {attack['answers']}",
        ),
        row(
            f"B. {fl['connections']} connections of new phrases, {fl['seconds']:g} s: "
            "`/health` (new connection each)",
            fl["health"],
            f"failures {fl['health']['failures']}",
        ),
        row("B. ... 2xx answers", fl["ok_2xx"], f"answers by status: {statuses}"),
        row(
            "B. ... 429/503 answers",
            fl["shed_429_503"],
            f"bound {s['max_queue_wait_ms']:g} ms; without Retry-After "
            f"{fl['shed_429_503']['without_retry_after']}; client errors: {errors}",
        ),
        row(
            "B. ... the flood client's own delay (its event loop waking from a 10 ms sleep)",
            fl["client_loop_lag"],
            "part of every latency above that the client, not the server, adds",
        ),
        row(
            f"after the load: new-phrase `/predict` for {AFTER_LOAD_S:g} s",
            fl["after_load"],
            f"failures {fl['after_load']['failures']}",
        ),
        "",
        "Acceptance: "
        + "; ".join(
            f"{name}: {'met' if ok else '**NOT met**'}" for name, ok in report["verdicts"].items()
        )
        + ".",
    ]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------


# --- main ---------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slow-connections", type=int, default=200)
    parser.add_argument("--slow-seconds", type=float, default=60.0)
    parser.add_argument("--flood-connections", type=int, default=512)
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--model", default="banking77", choices=DEMO_MODELS)
    parser.add_argument(
        "--out",
        type=Path,
        help="where overload.json and overload.md go (default bench/results; "
        "var/bench-smoke/overload with --smoke)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a quick check that the benchmark works: 20 slow connections for 4 s, 32 flooding "
        "for 3 s; results never in bench/results",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (printed)")
    args = parser.parse_args()
    if args.smoke:
        args.slow_connections, args.slow_seconds = 20, 4.0
        args.flood_connections, args.flood_seconds = 32, 3.0
        args.out = args.out or smoke.SMOKE_DIR / "overload"
        if args.out.resolve() == smoke.COMMITTED_RESULTS.resolve():
            parser.error("--smoke never writes to bench/results: give another --out")
    args.out = args.out or smoke.COMMITTED_RESULTS
    if min(args.slow_connections, args.flood_connections) < 1:
        parser.error("connection counts must be positive")
    return args


def start_api(run: Run, database: Database, model: str, phrases: list[str]) -> Server:
    """The embedder service and the API (every setting but the run's at its default), with the
    normal client's repeated phrases of phase A in its cache."""
    embedder = run.start_embedder()
    api = run.start_api(embedder, app_settings(database), [model])
    for phrase in phrases[:20]:
        http_call(api.port, "POST", f"/predict/{model}", {"text": phrase})
    return api


def run_phases(port: int, phrases: list[str], args) -> dict:
    """The baseline, phase A (slow clients) and phase B (the flood, then the normal client)."""
    print(f"baseline: new-phrase /predict for {BASELINE_S:g} s ...")
    baseline = measure_normal(port, args.model, phrases, BASELINE_S, "base")
    print(f"phase A: {args.slow_connections} slow-header connections for {args.slow_seconds:g} s")
    slow = phase_slow(port, args.model, phrases, args.slow_connections, args.slow_seconds)
    time.sleep(2.0)
    print(
        f"phase B: {args.flood_connections} connections of new phrases for {args.flood_seconds:g} s"
    )
    flooded = phase_flood(port, args.model, phrases, args.flood_connections, args.flood_seconds)
    return {"baseline": baseline, "slow_headers": slow, "flood": flooded}


def make_report(args, run: Run, copied: list[dict], phases: dict) -> dict:
    """overload.json: every figure, and each acceptance point met or not."""
    # The servers ran with every DC_* setting at its default (server_env drops this
    # environment's), whatever this process's environment says.
    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    report = {
        "when": timestamp(),
        "smoke": args.smoke,
        "machine": machine_info(load_tools=False),
        "settings": {
            "workers": defaults["api_workers"],
            "threads": defaults["api_threads"],
            "worker_class": "web.worker.BufferedThreadWorker",
            "max_queue_wait_ms": defaults["max_queue_wait_ms"],
            "request_read_timeout_s": defaults["request_read_timeout_s"],
            "retry_after_s": defaults["retry_after_s"],
            "model": args.model,
        },
        "database": {"backend": run.database.backend, "how": run.database.how},
        "registry": copied,
        **phases,
        # API log lines at WARNING or above (the worker's shed/408 counts every 10 s among them)
        "server_warnings": run.server_warnings,
    }
    report["verdicts"] = verdicts(report)
    report["pass"] = all(report["verdicts"].values())
    return report


def save(report: dict, args) -> None:
    """overload.json and overload.md into args.out; the markdown on stdout."""
    markdown = to_markdown(report)
    if args.smoke:
        markdown = (
            "SMOKE RUN: small numbers, to check that the benchmark works; not figures.\n\n"
            + markdown
        )
    write_results(args.out, "overload", report, markdown)
    print()
    print(markdown)
    print(f"saved {args.out / 'overload.json'} and {args.out / 'overload.md'}")


def exit_status(report: dict, smoke_run: bool) -> int:
    """0 when every acceptance point is met (1 otherwise); a smoke run only has to work."""
    if smoke_run:  # the path must work; the figures of a few seconds decide nothing
        if (
            not report["flood"]["answers_by_status"]
            or not report["slow_headers"]["predict"]["count"]
        ):
            raise SystemExit("smoke run failed: no answers measured")
        return 0
    return 0 if report["pass"] else 1


def main() -> int:
    args = parse_args()
    settings = Settings()
    with Run("bench-overload-", keep_logs=args.keep_logs) as run:
        phrases = load_phrases(MAX_WORDS)
        # A smoke run trains tiny heads of its own when needed (a clean clone has no demo
        # models); a real run measures the demo models of `make demo`.
        database, copied = run.prepare_database(settings, smoke=args.smoke)
        api = start_api(run, database, args.model, phrases)
        phases = run_phases(api.port, phrases, args)
        require_alive(run.servers)
    report = make_report(args, run, copied, phases)
    save(report, args)
    return exit_status(report, args.smoke)


if __name__ == "__main__":
    run_main(main)
