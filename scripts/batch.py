"""Batch embedding and scoring on Apache Spark: score, embed or replay (see dc/batch/).

  score   phrases -> the embedder -> one or more heads -> Parquet (by model) and/or a
          PostgreSQL table, a row per (input key, model)
  embed   phrases -> vectors, Parquet keyed on (embedder fingerprint, text): the embedding
          cache training reads (DC_EMBEDDING_CACHE_DIR)
  replay  the inference log's predictions of a window re-scored by a candidate version:
          agreement with what was served, accuracy and weighted F1 on feedback; the report
          goes to the version's folder (replay/<start>_<end>.json)

Input: --sql (a query on the project's PostgreSQL, read over JDBC) or --input (Parquet or CSV
files, a local path or s3://), with --key and --text naming the columns. Runs on
DC_BATCH_MASTER (local[*]) or under spark-submit (EMR) unchanged. Re-running with the same
inputs rewrites the same output; rows that break the API's rules are reported and left out.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.config import get_settings  # noqa: E402
from dc.errors import DCError  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from dc.utilities.times import utc_time  # noqa: E402

log = logging.getLogger("batch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=(
            "examples:\n"
            "  python scripts/batch.py score --input phrases.parquet --model banking77 "
            "--output var/batch/scores\n"
            "  python scripts/batch.py score --sql 'SELECT id, text FROM tickets' --key id \\\n"
            "      --model banking77 --model clinc150@20261201T212314Z --output-table scores\n"
            "  python scripts/batch.py embed --input data/banking77/train.csv --output "
            "var/embedding-cache\n"
            "  python scripts/batch.py replay --model banking77 --version 20261201T212145Z "
            "--days 7\n"
            "\n"
            "exit status: 0; 1 when the job failed (bad arguments, no such model, Spark)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jobs = parser.add_subparsers(dest="job", required=True, metavar="{score,embed,replay}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--master", default=settings.batch_master, help="Spark master (DC_BATCH_MASTER)"
    )
    common.add_argument("--region", default=settings.serving_region, help="the models' region")
    common.add_argument(
        "--report",
        help="also write the job's report as JSON to this file or s3://bucket/key (on a "
        "cluster: replay's copy in the version's folder is on a worker's disk)",
    )
    source = argparse.ArgumentParser(add_help=False)
    given = source.add_mutually_exclusive_group(required=True)
    given.add_argument("--sql", help="a query on the project's PostgreSQL (over JDBC)")
    given.add_argument("--input", help="Parquet or CSV files (a path or s3://...)")
    source.add_argument("--format", choices=("parquet", "csv"), help="default: by the name")
    source.add_argument("--key", default="id", help="the key column (default id)")
    source.add_argument("--text", default="text", help="the text column (default text)")

    score = jobs.add_parser(
        "score", parents=[common, source], help="score phrases with one or more heads"
    )
    score.add_argument(
        "--model",
        action="append",
        required=True,
        help="MODEL (its promoted version) or MODEL@VERSION; repeatable",
    )
    score.add_argument("--output", help="Parquet output folder (partitioned by model)")
    score.add_argument("--output-table", help="PostgreSQL table to write (replaced)")
    embed = jobs.add_parser("embed", parents=[common, source], help="embed phrases to Parquet")
    embed.add_argument(
        "--output",
        default=settings.embedding_cache_dir or None,
        help="the cache folder (default: DC_EMBEDDING_CACHE_DIR)",
    )
    replay = jobs.add_parser("replay", parents=[common], help="re-score a window of the log")
    replay.add_argument("--model", required=True, help="the model")
    replay.add_argument("--version", help="the candidate version (default: the promoted one)")
    replay.add_argument("--days", type=int, default=7, help="the window: the last N days (7)")
    replay.add_argument("--start", type=utc_time, help="start of the window (ISO 8601)")
    replay.add_argument("--end", type=utc_time, help="end of the window (default: now)")
    args = parser.parse_args(argv)
    if args.job == "score" and not (args.output or args.output_table):
        parser.error("score needs --output and/or --output-table")
    if args.job == "embed" and not args.output:
        parser.error("embed needs --output (or DC_EMBEDDING_CACHE_DIR)")
    if args.job == "replay":
        args.end = args.end or datetime.now(UTC)
        args.start = args.start or args.end - timedelta(days=args.days)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    from dc.batch import jobs
    from dc.batch.session import spark_session, with_secret_password

    try:
        settings = with_secret_password(settings)
        if args.job == "score":
            heads = [
                jobs.resolve_head(settings, *_model_and_version(value), region=args.region)
                for value in args.model
            ]
        elif args.job == "replay":
            candidate = jobs.resolve_head(settings, args.model, args.version, region=args.region)
        spark = spark_session(settings, args.master, app_name=f"dc-batch-{args.job}")
    except (DCError, RuntimeError) as exc:
        log.error("%s", getattr(exc, "message", exc))
        return 1
    try:
        if args.job == "replay":
            report = jobs.replay(
                spark, settings, candidate, region=args.region, start=args.start, end=args.end
            )
        else:
            phrases = jobs.read_phrases(
                spark,
                settings,
                sql=args.sql,
                path=args.input,
                fmt=args.format,
                key=args.key,
                text=args.text,
            )
            if args.job == "score":
                report = jobs.score(
                    spark,
                    settings,
                    phrases,
                    heads,
                    output=args.output,
                    output_table=args.output_table,
                )
            else:
                report = jobs.embed(spark, settings, phrases, output=args.output)
    except DCError as exc:
        log.error("%s", exc.message)
        return 1
    finally:
        spark.stop()
    result = report.as_dict()
    log.info(
        "%s: %d rows in, %d out, %d rejected, %.1f s (%.0f rows/s) -> %s",
        args.job,
        report.rows_in,
        report.rows_out,
        report.rejected,
        report.seconds,
        report.rows_per_s,
        ", ".join(report.outputs),
    )
    if args.report:
        _write_report(args.report, json.dumps(result, indent=2) + "\n", settings)
    print(json.dumps(result, indent=2))
    return 0


def _write_report(where: str, text: str, settings) -> None:
    """The report to a local file, or to S3 (s3://bucket/key: where a cluster's workers' disks
    are gone when the job ends)."""
    if where.startswith("s3://"):
        from dc.backup import s3_client

        bucket, _, key = where.removeprefix("s3://").partition("/")
        s3_client(settings).put_object(
            Bucket=bucket, Key=key, Body=text.encode(), ContentType="application/json"
        )
        log.info("report written to %s", where)
        return
    path = Path(where)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _model_and_version(value: str) -> tuple[str, str | None]:
    model, _, version = value.partition("@")
    return model, version or None


if __name__ == "__main__":
    sys.exit(main())
