"""How fast do the production reports answer on a large inference log?

A scratch PostgreSQL database at Alembic head gets the demo models' promoted versions and
--rows predictions over the last 30 days from `scripts/generate_inferences.py` (half per model,
with feedback for 10% of them, in the day partitions of the log), then VACUUM ANALYZE (what
autovacuum does to an insert-only table). The API runs under gunicorn as in production (no
embedder: reports do not need one), and the benchmark times, over HTTP:

- `GET /reports/banking77?days=30` (JSON): the first answer of a worker (it imports scipy and
  scikit-learn and reads the version's training files) and then --repeat answers;
- `GET /dashboard/banking77?days=30` (HTML, five charts): the same.

Targets (the issue's): on 1,000,000 rows, the JSON report under 2 s and the dashboard page
under 3 s (medians of the repeated answers). Also printed: the time each part of the report
takes in process (`dc.queries.reports`), which says where the time goes.

Smoke mode (`--smoke`, what `make bench-smoke` runs): the tiny smoke models, 20,000 rows, two
repeats; results in var/bench-smoke/results/.

Usage: python bench/bench_reports.py [--rows 1000000] [--repeat 5] [--out bench/results] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.client import http_call  # noqa: E402
from bench.harness.processes import wait_until  # noqa: E402
from bench.harness.results import machine_info, timestamp, write_results  # noqa: E402
from bench.harness.run import Run, app_settings, run_main  # noqa: E402
from dc.config import Settings  # noqa: E402

ROWS = 1_000_000
SMOKE_ROWS = 20_000
DAYS = 30
MODEL = "banking77"
TARGETS_S = {"json": 2.0, "dashboard": 3.0}
PATHS = {"json": f"/reports/{MODEL}", "dashboard": f"/dashboard/{MODEL}"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, help=f"rows of the log (default {ROWS:,})")
    parser.add_argument("--repeat", type=int, help="answers timed after the first (default 5)")
    smoke.add_arguments(parser)
    return parser.parse_args()


def generate(database_url: str, rows: int, end: datetime) -> float:
    """Fill the log with `scripts/generate_inferences.py`; its wall time."""
    started = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "generate_inferences.py"),
            "--rows",
            str(rows),
            "--days",
            str(DAYS),
            "--end",
            end.isoformat(),
            "--database-url",
            database_url,
        ],
        check=True,
        env={**os.environ, "DC_LOG_LEVEL": "WARNING"},
    )
    return time.perf_counter() - started


def vacuum(database_url: str) -> float:
    from sqlalchemy import text

    from persistence.db import make_engine

    started = time.perf_counter()
    engine = make_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("VACUUM ANALYZE inferences"))
                connection.execute(text("VACUUM ANALYZE feedback"))
    finally:
        engine.dispose()
    return time.perf_counter() - started


def timed_get(port: int, path: str) -> tuple[float, int, int]:
    started = time.perf_counter()
    status, _, body = http_call(port, "GET", path, timeout=60)
    return time.perf_counter() - started, status, len(body)


def in_process_parts(database_url: str, start: datetime, end: datetime) -> dict[str, float]:
    """Seconds of each query of one report, in this process (the same SQL as the API's)."""
    from dc.queries import reports as sql
    from dc.reports import stats
    from persistence.db import make_engine

    engine = make_engine(database_url)
    scope = sql.Scope(MODEL, "global", start, end)
    parts: dict[str, float] = {}
    texts = _training_texts(database_url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql("SET jit = off")  # as dc.reports.service does
            for name, run in (
                ("traffic", lambda: sql.traffic(connection, scope, "day")),
                ("latency", lambda: sql.latency_percentiles(connection, scope, "day")),
                ("labels", lambda: sql.label_counts(connection, scope, "day")),
                ("histogram", lambda: sql.probability_histogram(connection, scope)),
                ("unseen", lambda: sql.seen_in_training(connection, scope, texts)),
                ("feedback", lambda: sql.feedback_counts(connection, scope, "day")),
                ("calibration", lambda: sql.calibration_bins(connection, scope, stats.ECE_BINS)),
            ):
                started = time.perf_counter()
                run()
                parts[name] = round(time.perf_counter() - started, 4)
    finally:
        engine.dispose()
    return parts


def _training_texts(database_url: str) -> list[str]:
    """The training phrases of MODEL's promoted version (what the report compares with)."""
    from dc.reports import read_reference, served_version
    from dc.serve.version_files import version_folder
    from persistence.db import make_engine, session_factory
    from persistence.models import ModelVersion

    engine = make_engine(database_url)
    try:
        sessions = session_factory(engine)
        version = served_version(sessions, MODEL, "global")
        with sessions() as session:
            row = session.query(ModelVersion).filter_by(name=MODEL, version=version).one()
            facts = {"name": row.name, "region": row.region, "version": row.version}
            facts["artifact_uri"] = row.artifact_uri
    finally:
        engine.dispose()
    return sorted(read_reference(version_folder(Settings(), facts)).training_texts)


def main() -> int:
    args = parse_args()
    rows = args.rows or (SMOKE_ROWS if args.smoke else ROWS)
    repeat = args.repeat or (2 if args.smoke else 5)
    out = smoke.smoke_out(args.out) if args.smoke else (args.out or smoke.COMMITTED_RESULTS)
    settings = Settings()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    start = end - timedelta(days=DAYS)
    query = f"?start={start.isoformat()}&end={end.isoformat()}".replace("+", "%2B")

    with Run("dc-bench-reports-") as run:
        database, copied = run.prepare_database(settings, args.smoke)
        print(f"generating {rows:,} predictions over {DAYS} days ...")
        generated_s = generate(database.url, rows, end)
        vacuum_s = vacuum(database.url)
        print(f"generated in {generated_s:.1f} s, VACUUM ANALYZE in {vacuum_s:.1f} s")
        parts = in_process_parts(database.url, start, end)
        print("in process, per query (s): " + ", ".join(f"{k} {v}" for k, v in parts.items()))

        # No embedder: the reports need none. One worker, so the first answer is the worker's
        # first (cold) and the others are warm.
        env = app_settings(database, workers=1, threads=4)
        env["DC_EMBEDDER_URL"] = "http://127.0.0.1:9"
        api = run.start_app("api", env)
        wait_until(api, "/health", lambda status, _: status == 200)
        results: dict[str, dict] = {}
        for kind, path in PATHS.items():
            first, status, size = timed_get(api.port, path + query)
            if status != 200:
                raise SystemExit(f"{path} answered {status}")
            times = [timed_get(api.port, path + query)[0] for _ in range(repeat)]
            median = statistics.median(times)
            results[kind] = {
                "path": path,
                "first_s": round(first, 3),
                "median_s": round(median, 3),
                "max_s": round(max(times), 3),
                "bytes": size,
                "target_s": TARGETS_S[kind],
                "met": median < TARGETS_S[kind],
            }
            print(
                f"{kind:>9}: first {first:.3f} s, median {median:.3f} s over {repeat} "
                f"(target < {TARGETS_S[kind]} s: {'met' if median < TARGETS_S[kind] else 'MISSED'})"
            )
        _, _, body = http_call(api.port, "GET", PATHS["json"] + query, timeout=60)
        report = json.loads(body)

    figures = {
        "benchmark": "reports",
        "when": timestamp(),
        "machine": machine_info(load_tools=False),
        "smoke": args.smoke,
        "rows": rows,
        "days": DAYS,
        "model": MODEL,
        "model_rows": report["traffic"]["texts"],
        "feedback_items": report["feedback"]["items"],
        "models": copied,
        "database": database.backend,
        "generate_s": round(generated_s, 1),
        "vacuum_s": round(vacuum_s, 1),
        "query_s": parts,
        "answers": results,
    }
    markdown = _markdown(figures)
    write_results(out, "reports", figures, smoke.mark(markdown, args.smoke))
    print(markdown)
    missed = [kind for kind, r in results.items() if not r["met"]]
    return 1 if missed and not args.smoke else 0


def _markdown(f: dict) -> str:
    lines = [
        f"Reports on {f['rows']:,} inference rows ({f['database']}, {f['days']} days, "
        f"{f['model']}: {f['model_rows']:,} rows, {f['feedback_items']:,} with feedback); "
        "one API worker under gunicorn, over HTTP.",
        "",
        "| answer | first (cold worker) | median | max | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for kind, r in f["answers"].items():
        lines.append(
            f"| `{r['path']}?days=30` ({kind}) | {r['first_s']:.3f} s | {r['median_s']:.3f} s "
            f"| {r['max_s']:.3f} s | < {r['target_s']:.0f} s | {'yes' if r['met'] else 'no'} |"
        )
    lines += [
        "",
        "Per query, in process (s): "
        + ", ".join(f"{k} {v:.3f}" for k, v in f["query_s"].items())
        + f". Generating the rows took {f['generate_s']} s, VACUUM ANALYZE {f['vacuum_s']} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_main(main)
