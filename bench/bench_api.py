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
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.client import ApiCounters, warm_api  # noqa: E402
from bench.harness.database import DEMO_MODELS, Database, wait_flushed  # noqa: E402
from bench.harness.inputs import load_phrases, predict_bodies, write_bodies  # noqa: E402
from bench.harness.processes import Server, require_alive, wait_ready  # noqa: E402
from bench.harness.results import machine_info, timestamp, write_results  # noqa: E402
from bench.harness.run import Run, app_settings, run_main  # noqa: E402
from bench.harness.wrk import ensure_wrk, run_wrk, summarise, warm_round_args  # noqa: E402
from dc.config import Settings  # noqa: E402

TARGET_RATIO = 0.60
MAX_WORDS = 15  # the product's phrases: 5-15 words


# --- servers and load ---------------------------------------------------------------------------


def start_servers(run: Run, database: Database, args: argparse.Namespace) -> tuple[Server, Server]:
    """The echo app, the embedder service and the API: the echo app and the API with the same
    DC_* settings (only the port, the Prometheus folder and the API's spool folder differ)."""
    print("starting the embedder service, the API and the echo app ...")
    settings = app_settings(database, args.workers, args.threads)
    embedder = run.start_embedder(ready=False)
    echo = run.start_echo(settings)  # while the embedder loads its model
    wait_ready(embedder)
    api = run.start_api(embedder, settings, [args.model])
    return echo, api


def warm_up(wrk: str, echo: Server, api: Server, phrases: list[str], bodies: Path, args) -> dict:
    """Every phrase into every API worker's cache (checked), then a short wrk round on each."""
    warm = warm_api(api, args.model, phrases, args.workers)
    print(
        f"warm-up: {len(phrases)} phrases in each of {len(warm['workers_warmed'])} "
        f"workers; {warm['check_requests']} checks over fresh connections, all cache hits "
        f"(answers by worker: {warm['check_answers_by_worker']})"
    )
    warm_args = warm_round_args(args)
    warm_wrk = {
        "echo": run_wrk(wrk, echo.port, bodies, "/echo", warm_args, args.workers),
        "api": run_wrk(wrk, api.port, bodies, f"/predict/{args.model}", warm_args, args.workers),
    }
    for name, result in warm_wrk.items():
        if result["errors"]:
            raise SystemExit(f"warm-up wrk round on {name}: {result['errors']} errors")
    return {**warm, "wrk": warm_wrk}


def measure_round(wrk: str, server: Server, number: int, bodies: Path, args) -> tuple[dict, dict]:
    """One wrk round on `server` (the echo app or the API); its figures, and the API's cache
    hits and misses during it."""
    is_api = server.name == "api"
    path = f"/predict/{args.model}" if is_api else "/echo"
    before = ApiCounters.read(server.port, args.model) if is_api else None
    result = run_wrk(wrk, server.port, bodies, path, args, args.workers)
    result.update(server=server.name, round=number)
    cache = {"hits": 0, "misses": 0}
    if before is not None:
        delta = ApiCounters.read(server.port, args.model).minus(before)
        result["cache_hit_share"] = delta["cache_hit_share"]
        cache = {"hits": delta["cache_hits"], "misses": delta["cache_misses"]}
    extra = f"  cache hits {100 * result['cache_hit_share']:.1f}%" if is_api else ""
    split = "/".join(map(str, result["connections_by_worker"])) or "?"
    print(
        f"  round {number} {server.name:4}: {result['requests_per_s']:7.0f} req/s  "
        f"p50 {result['p50_ms']:6.2f} ms  p99 {result['p99_ms']:6.2f} ms  "
        f"errors {result['errors']}  connections per worker {split}{extra}"
    )
    return result, cache


def measure(wrk: str, database: Database, echo: Server, api: Server, bodies: Path, args) -> dict:
    """The measured rounds, alternating echo and api, with the inference log's row count and
    the API's counters read around them (once the log is flushed)."""
    rows_before = wait_flushed(database, api, args.model)
    counters_before = ApiCounters.read(api.port, args.model)
    load_before = os.getloadavg()
    rounds: list[dict] = []
    api_phase = {"hits": 0, "misses": 0}
    print(
        f"measuring: {args.rounds} rounds each of {args.seconds:g} s, alternating "
        f"echo/api, wrk -t{args.wrk_threads} -c{args.connections}"
    )
    for number in range(1, args.rounds + 1):
        for server in (echo, api):
            result, cache = measure_round(wrk, server, number, bodies, args)
            rounds.append(result)
            api_phase = {k: api_phase[k] + cache[k] for k in api_phase}
    load_after = os.getloadavg()
    rows_after = wait_flushed(database, api, args.model)
    totals = ApiCounters.read(api.port, args.model).minus(counters_before)
    return {
        "rounds": rounds,
        "api_phase": api_phase,
        "rows_written": rows_after - rows_before,
        "totals": totals,
        "load_average": (load_before, load_after),
    }


# --- report -------------------------------------------------------------------------------------


def summaries(measured: dict) -> tuple[list[dict], list[dict], dict, dict]:
    """The echo and api rounds, and their summaries (the api's with its cache and stages)."""
    rounds = measured["rounds"]
    echo_rounds = [r for r in rounds if r["server"] == "echo"]
    api_rounds = [r for r in rounds if r["server"] == "api"]
    echo_summary, api_summary = summarise(echo_rounds), summarise(api_rounds)
    hits, misses = measured["api_phase"]["hits"], measured["api_phase"]["misses"]
    api_summary.update(
        cache_hits=hits,
        cache_misses=misses,
        cache_hit_share=hits / (hits + misses) if hits + misses else 0.0,
        stage_mean_ms=measured["totals"]["stage_mean_ms"],
    )
    return echo_rounds, api_rounds, echo_summary, api_summary


def logging_check(measured: dict, api_summary: dict) -> dict:
    """The inference rows written during the api rounds against the 2xx answers, as the API
    counted them and as wrk did."""
    rows_written, totals = measured["rows_written"], measured["totals"]
    wrk_2xx = api_summary["ok_2xx"] + api_summary["discarded_ok_2xx"]
    wrk_in_flight = api_summary["in_flight_at_stop"] + api_summary["discarded_in_flight"]
    return {
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
    }


def make_report(args, settings: Settings, run: Run, run_facts: dict, measured: dict) -> dict:
    """api.json: machine, settings, every round, medians, ratio, logging, pass/fail.

    Args:
        run_facts: the phrases, the registry rows copied and the warm-up.
    """
    echo_rounds, api_rounds, echo_summary, api_summary = summaries(measured)
    ratio = api_summary["requests_per_s"] / echo_summary["requests_per_s"]
    load_before, load_after = measured["load_average"]
    database = run.database
    return {
        "when": timestamp(),
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
            "phrases": len(run_facts["phrases"]),
            "model": args.model,
            "gunicorn_config": "api/gunicorn.conf.py (both servers)",
            "echo_command": "gunicorn -c api/gunicorn.conf.py 'bench.echo_app:create_app()'",
            "embedder_mode": "remote",
            "log_batch_size": settings.log_batch_size,
            "log_flush_interval_ms": settings.log_flush_interval_ms,
        },
        "database": {"backend": database.backend, "how": database.how, "url": database.display_url},
        "registry": run_facts["copied"],
        "warm_up": run_facts["warm"],
        "rounds": measured["rounds"],
        "echo": echo_summary,
        "api": api_summary,
        "ratio": ratio,
        "pair_ratios": [
            a["requests_per_s"] / e["requests_per_s"]
            for e, a in zip(echo_rounds, api_rounds, strict=True)
        ],
        "target_ratio": TARGET_RATIO,
        "pass": ratio >= TARGET_RATIO,
        "logging": logging_check(measured, api_summary),
        # What the servers logged at WARNING or above (e.g. "inference log queue full").
        "server_warnings": run.server_warnings,
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


# --- command line -------------------------------------------------------------------------------


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


def save(report: dict, args) -> None:
    """api.json and api.md into args.out; the table and the markdown on stdout."""
    markdown = smoke.mark(to_markdown(report), args.smoke)
    write_results(args.out, "api", report, markdown)
    print_table(report)
    print()
    print(markdown)
    print(f"saved {args.out / 'api.json'} and {args.out / 'api.md'}")


def exit_status(report: dict, smoke_run: bool) -> int:
    """0 when the ratio meets the target (1 otherwise); a smoke run fails on errors or on
    predictions missing from the inference log instead, never on the ratio."""
    if not smoke_run:
        return 0 if report["pass"] else 1
    smoke.require_no_errors({"echo": report["echo"], "api": report["api"]})
    logged = report["logging"]
    if not logged["rows_equal_api_2xx"]:
        raise SystemExit(
            f"smoke run failed: {logged['rows_written']} inference rows written for "
            f"{logged['api_2xx']} 2xx answers"
        )
    return 0


def main() -> int:
    args = parse_args()
    wrk = ensure_wrk()
    settings = Settings()
    with Run("bench-api-", keep_logs=args.keep_logs) as run:
        phrases = load_phrases(MAX_WORDS)[: args.phrases]
        bodies = write_bodies(run.workdir / "bodies.jsonl", predict_bodies(phrases))
        database, copied = run.prepare_database(settings, smoke=args.smoke)
        echo, api = start_servers(run, database, args)
        warm = warm_up(wrk, echo, api, phrases, bodies, args)
        measured = measure(wrk, database, echo, api, bodies, args)
        require_alive(run.servers)
    run_facts = {"phrases": phrases, "copied": copied, "warm": warm}
    report = make_report(args, settings, run, run_facts, measured)
    save(report, args)
    return exit_status(report, args.smoke)


if __name__ == "__main__":
    run_main(main)
