"""How many bytes does one row of the inference log take on PostgreSQL, indexes included?

Writes --rows realistic rows into a scratch database at Alembic head (`inferences` partitioned
by day) through the log's real insert path, `persistence.inference_log.database.Database`:
COPY batches of DC_LOG_BATCH_SIZE rows, as the writer thread sends them. A row is what the API
logs: a request id of the server's layout (time first, then random bits), a phrase of 50-80
characters from BANKING77 or CLINC150, the top 3 of that model's classes with probabilities,
a latency, a cache flag, the embedder fingerprint, and the caller's X-Request-ID on one row in
ten. Every row falls in today's UTC day, so in one daily partition, which is then vacuumed (as
autovacuum does to an insert-only table) and measured with pg_total_relation_size: the heap
(with TOAST, free-space and visibility maps) and each index, as the growth over the empty
partition, divided by the rows. Also measured: the WAL written per row (the whole server's WAL,
so run it on a quiet server) and the rows/s of one writer.

From the bytes per row: rows and storage per day at 200 and 5,000 predictions/s, and for a
retention of 7, 30 and 90 days (README, "The log at scale").

The database: DC_BENCH_DATABASE_URL, else a scratch database on the local PostgreSQL (dropped
at the end), else, said loudly, a SQLite file, whose growth is measured instead: not the
production setting (bench.harness.database).

Smoke mode (`--smoke`, what `make bench-smoke` runs): 2,000 rows; results in
var/bench-smoke/results/.

Usage: python bench/bench_log_size.py [--rows 100000] [--out bench/results] [--smoke]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import smoke  # noqa: E402
from bench.harness.database import open_database  # noqa: E402
from bench.harness.results import machine_info, timestamp, write_results  # noqa: E402
from bench.harness.run import Run, run_main  # noqa: E402
from dc.config import Settings  # noqa: E402

ROWS = 100_000
SMOKE_ROWS = 2_000
TEXT_CHARS = (50, 80)  # the phrases' length range, in characters (mean about 60)
TOP_K = 3
CLIENT_ID_SHARE = 0.1  # rows whose request sent an X-Request-ID
CACHE_HIT_SHARE = 0.6
MODELS = {"banking77": "20261125T125520Z", "clinc150": "20261125T130102Z"}
MODEL_TYPE = "mlp-1x512"
REGION = "global"
RATES = (200, 5_000)  # predictions per second
RETENTIONS = (7, 30, 90)  # days
GIB = 1 << 30
INDEXES = (
    "pk_inferences",
    "ix_inferences_model_region_created_at",
    "ix_inferences_client_request_id",
)


def dataset_texts() -> dict[str, tuple[list[str], list[str]]]:
    """Per model: the phrases of TEXT_CHARS characters of its dataset, and its classes."""
    found = {}
    for model in MODELS:
        texts: dict[str, None] = {}
        labels: dict[str, None] = {}
        for path in sorted((REPO / "data" / model).glob("*.csv")):
            with open(path, newline="", encoding="utf-8") as handle:
                for row in csv.DictReader(handle):
                    labels[row["label"]] = None
                    if TEXT_CHARS[0] <= len(row["text"]) <= TEXT_CHARS[1]:
                        texts[row["text"]] = None
        found[model] = (list(texts), list(labels))
    return found


def make_records(rows: int, day_start: datetime) -> list:
    """`rows` inference records spread evenly over the UTC day that starts at `day_start`,
    the models taking turns, with a fixed seed."""
    from persistence.inference_log import InferenceRecord

    rng = random.Random(0)
    data = dataset_texts()
    fingerprint = hashlib.sha256(b"all-minilm-l6-v2").hexdigest()
    step = timedelta(seconds=86_000 / rows)  # ends before midnight
    records = []
    for i in range(rows):
        model = list(MODELS)[i % len(MODELS)]
        texts, labels = data[model]
        created = day_start + i * step
        weights = sorted((rng.random() ** 3 for _ in range(TOP_K + 2)), reverse=True)
        total = sum(weights)
        top = [
            {"label": label, "probability": weight / total}
            for label, weight in zip(rng.sample(labels, TOP_K), weights, strict=False)
        ]
        # The layout of web.request_ids.new_request_id: the time in ms, then 80 random bits.
        millis = int(created.timestamp() * 1000)
        records.append(
            InferenceRecord(
                request_id=f"{millis:012x}{rng.getrandbits(80):020x}",
                item=0,
                created_at=created,
                model=model,
                region=REGION,
                version=MODELS[model],
                model_type=MODEL_TYPE,
                input_text=rng.choice(texts),
                predicted_label=top[0]["label"],
                probability=top[0]["probability"],
                top_k=top,
                latency_ms=rng.lognormvariate(1.5, 0.6),
                cache_hit=rng.random() < CACHE_HIT_SHARE,
                embedder_fingerprint=fingerprint,
                client_request_id=(
                    f"crm-{rng.getrandbits(64):016x}" if rng.random() < CLIENT_ID_SHARE else None
                ),
            )
        )
    return records


def insert(url: str, records: list, batch_size: int, folder: Path) -> float:
    """Write `records` through the log's insert path in batches; the seconds it took."""
    from persistence.inference_log.counters import Counters
    from persistence.inference_log.database import Database
    from persistence.inference_log.quarantine import Quarantine

    database = Database(url, Quarantine(folder, Counters(None)))
    try:
        started = time.perf_counter()
        for start in range(0, len(records), batch_size):
            outcome = database.insert(records[start : start + batch_size])
            if outcome.unsent or outcome.rejected or outcome.conflicts:
                raise SystemExit(f"the insert path did not store every row: {outcome}")
        return time.perf_counter() - started
    finally:
        database.engine.dispose()


def postgres_sizes(connection, partition: str) -> dict:
    """The partition's row count and its sizes in bytes: heap, TOAST and maps, each index."""
    from sqlalchemy import text

    sizes = {
        "rows": connection.execute(text(f"SELECT count(*) FROM {partition}")).scalar_one(),
        "heap_main": connection.execute(
            text("SELECT pg_relation_size(:p)"), {"p": partition}
        ).scalar_one(),
        "table_total": connection.execute(
            text("SELECT pg_table_size(:p)"), {"p": partition}
        ).scalar_one(),
        "total": connection.execute(
            text("SELECT pg_total_relation_size(:p)"), {"p": partition}
        ).scalar_one(),
    }
    # Each index of the parent, through its partition in `partition`.
    query = text(
        "SELECT pg_relation_size(t.relid) FROM pg_partition_tree(:index) t "
        "JOIN pg_index x ON x.indexrelid = t.relid WHERE x.indrelid = to_regclass(:p)"
    )
    for index in INDEXES:
        sizes[index] = connection.execute(query, {"index": index, "p": partition}).scalar_one()
    return sizes


def measure_postgres(url: str, records: list, batch_size: int, folder: Path) -> dict:
    """Insert into today's partition and measure its growth, per row."""
    from sqlalchemy import text

    from persistence.db import make_engine
    from persistence.partitions import partition_name, utc_day

    partition = partition_name(utc_day(records[0].created_at))
    engine = make_engine(url, isolation_level="AUTOCOMMIT")  # VACUUM runs outside transactions
    try:
        with engine.connect() as connection:
            before = postgres_sizes(connection, partition)
            wal_before = connection.execute(text("SELECT pg_current_wal_lsn()")).scalar_one()
        seconds = insert(url, records, batch_size, folder)
        with engine.connect() as connection:
            wal = connection.execute(
                text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), :lsn)"), {"lsn": wal_before}
            ).scalar_one()
            connection.exec_driver_sql(f"VACUUM (ANALYZE) {partition}")
            after = postgres_sizes(connection, partition)
            tuple_bytes = connection.execute(
                text(f"SELECT avg(pg_column_size(t.*)) FROM {partition} t")
            ).scalar_one()
            version = connection.execute(text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    rows = after["rows"] - before["rows"]
    if rows != len(records):
        raise SystemExit(f"{len(records)} rows written but {rows} found in {partition}")
    grown = {name: after[name] - before[name] for name in after if name != "rows"}
    per_row = {name: grown[name] / rows for name in grown}
    per_row["indexes"] = sum(per_row[name] for name in INDEXES)
    return {
        "server": f"PostgreSQL {version}",
        "partition": partition,
        "seconds": seconds,
        "bytes": grown,
        "bytes_per_row": per_row,
        "tuple_bytes": float(tuple_bytes),
        "wal_bytes_per_row": float(wal) / rows,
    }


def measure_sqlite(url: str, records: list, batch_size: int, folder: Path) -> dict:
    """The SQLite fallback: the file's growth per row (no partitions, no WAL figure)."""
    from sqlalchemy import text

    from persistence.db import make_engine

    engine = make_engine(url)

    def file_bytes() -> int:
        with engine.connect() as connection:
            pages = connection.execute(text("PRAGMA page_count")).scalar_one()
            return pages * connection.execute(text("PRAGMA page_size")).scalar_one()

    try:
        before = file_bytes()
        seconds = insert(url, records, batch_size, folder)
        grown = file_bytes() - before
    finally:
        engine.dispose()
    return {
        "server": "SQLite (FALLBACK: not the production setting)",
        "partition": None,
        "seconds": seconds,
        "bytes": {"total": grown},
        "bytes_per_row": {"total": grown / len(records)},
        "tuple_bytes": None,
        "wal_bytes_per_row": None,
    }


def sizing(bytes_per_row: float, wal_bytes_per_row: float | None) -> list[dict]:
    """Rows and storage per day at each of RATES, and for each of RETENTIONS days."""
    rows = []
    for rate in RATES:
        per_day = rate * 86_400
        rows.append(
            {
                "predictions_per_s": rate,
                "rows_per_day": per_day,
                "gib_per_day": per_day * bytes_per_row / GIB,
                "wal_gib_per_day": (
                    None if wal_bytes_per_row is None else per_day * wal_bytes_per_row / GIB
                ),
                "wal_mib_per_s": (
                    None if wal_bytes_per_row is None else rate * wal_bytes_per_row / (1 << 20)
                ),
                "gib_for_retention": {
                    str(days): days * per_day * bytes_per_row / GIB for days in RETENTIONS
                },
            }
        )
    return rows


def markdown(result: dict) -> str:
    per_row = result["bytes_per_row"]
    lines = [
        f"Inference log size ({result['when']}, {result['server']}, {result['rows']:,} rows "
        f"in batches of {result['batch_size']}, texts of {result['text_chars_mean']:.0f} "
        f"characters on average, top {TOP_K}, a client id on {CLIENT_ID_SHARE:.0%} of rows).",
        "",
        "| bytes per row | |",
        "|---|---:|",
    ]
    if result["partition"] is not None:
        lines += [
            f"| heap (main fork) | {per_row['heap_main']:.1f} |",
            f"| heap with TOAST and maps | {per_row['table_total']:.1f} |",
            *(f"| index {name} | {per_row[name]:.1f} |" for name in INDEXES),
            f"| indexes | {per_row['indexes']:.1f} |",
        ]
    lines.append(f"| **total** | **{per_row['total']:.1f}** |")
    if result["wal_bytes_per_row"] is not None:
        lines.append(f"| WAL written | {result['wal_bytes_per_row']:.1f} |")
    lines += [
        "",
        f"One writer: {result['rows_per_s']:,.0f} rows/s ({result['seconds']:.1f} s).",
        "",
        "| predictions/s | rows/day | GiB/day | WAL MiB/s | "
        + " | ".join(f"GiB for {days} days" for days in RETENTIONS)
        + " |",
        "|---:|---:|---:|---:|" + "---:|" * len(RETENTIONS),
    ]
    for row in result["sizing"]:
        wal = "-" if row["wal_mib_per_s"] is None else f"{row['wal_mib_per_s']:.2f}"
        kept = " | ".join(f"{row['gib_for_retention'][str(d)]:,.0f}" for d in RETENTIONS)
        lines.append(
            f"| {row['predictions_per_s']:,} | {row['rows_per_day']:,} | "
            f"{row['gib_per_day']:,.1f} | {wal} | {kept} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, help=f"rows to write (default {ROWS:,})")
    smoke.add_arguments(parser)
    args = parser.parse_args(argv)
    rows = args.rows or (SMOKE_ROWS if args.smoke else ROWS)
    if args.smoke:
        args.out = smoke.smoke_out(args.out)
    args.out = args.out or REPO / "bench" / "results"
    batch_size = Settings().log_batch_size

    from persistence.db import upgrade
    from persistence.partitions import day_start, utc_day

    records = make_records(rows, day_start(utc_day(datetime.now(UTC))))
    with Run("bench-log-size-") as run:
        run.database = database = open_database(run.workdir)
        print(f"database: {database.display_url} ({database.how})")
        upgrade(database.url)
        measure = measure_postgres if database.backend == "postgresql" else measure_sqlite
        measured = measure(database.url, records, batch_size, run.workdir)
    per_row = measured["bytes_per_row"]
    result = {
        "when": timestamp(),
        "smoke": args.smoke,
        "machine": machine_info(load_tools=False),
        "database": database.how,
        "rows": rows,
        "batch_size": batch_size,
        "text_chars_mean": sum(len(r.input_text) for r in records) / rows,
        **measured,
        "rows_per_s": rows / measured["seconds"],
        "sizing": sizing(per_row["total"], measured["wal_bytes_per_row"]),
    }
    text = smoke.mark(markdown(result), args.smoke)
    write_results(args.out, "log_size", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    run_main(main)
