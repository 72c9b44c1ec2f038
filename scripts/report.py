"""Write the production report of one or more models for a time window, as files.

For each model: report.json (every figure, as GET /reports/<model> answers), report.html (the
dashboard's page, charts inline), one PNG per chart (traffic, drift, labels, confidence,
live_f1) and the tables as CSV (buckets, labels, per_class, confusions), into
<artifacts>/<region>/<model>/reports/<start>_<end>_<granularity>/. With DC_S3_BUCKET set, the
folder is also backed up to s3://<bucket>/<prefix>/<region>/<model>/reports/<window>/.

The default window is the last 7 complete UTC days, so a daily run (cron or the scheduled task)
writes one folder per day and a re-run rewrites the same folder with the same figures.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from sqlalchemy import select  # noqa: E402

from dc.config import get_settings  # noqa: E402
from dc.errors import DCError  # noqa: E402
from dc.reports import ReportRequest  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from dc.utilities.times import utc_time  # noqa: E402
from persistence.db import make_engine, session_factory, upgrade  # noqa: E402
from persistence.models import ModelVersion  # noqa: E402

log = logging.getLogger("report")

EXIT_FAILED, EXIT_DRIFT = 1, 3


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=(
            "examples:\n"
            "  python scripts/report.py --model banking77         # the last 7 days\n"
            "  python scripts/report.py --all --days 1            # yesterday, every model\n"
            "  python scripts/report.py --model banking77 --start 2026-11-01 --end 2026-12-01 \\\n"
            "      --granularity week --compare 20261101T120000Z\n"
            "\n"
            "schedule (cron, daily at 00:30 UTC, yesterday's report of every model):\n"
            "  30 0 * * * cd /srv/dc && .venv/bin/python scripts/report.py --all --days 1\n"
            "\n"
            "exit status: 0; 1 when a model's report failed; 3 with --fail-on-drift when a\n"
            "model's label distribution drifted (PSI and chi-square, see dc/reports/stats.py)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", action="append", help="a model to report on (repeatable)")
    which.add_argument(
        "--all", action="store_true", help="every model the registry knows in the region"
    )
    parser.add_argument(
        "--region",
        default=settings.serving_region,
        help="the region (default: DC_SERVING_REGION, %(default)s)",
    )
    parser.add_argument(
        "--days", type=int, default=7, help="the window: this many days up to --end (default 7)"
    )
    parser.add_argument(
        "--start", type=utc_time, help="start of the window (ISO 8601; UTC if bare)"
    )
    parser.add_argument(
        "--end",
        type=utc_time,
        help="end of the window, excluded (default: the start of the current UTC day)",
    )
    parser.add_argument(
        "--granularity", choices=("hour", "day", "week"), default="day", help="bucket size"
    )
    parser.add_argument("--version", help="only the predictions of this version")
    parser.add_argument("--compare", help="a second version to set beside the first")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(settings.artifacts_dir),
        help="the artifact store to write under (default: DC_ARTIFACTS_DIR, %(default)s)",
    )
    parser.add_argument("--no-backup", action="store_true", help="do not back the files up to S3")
    parser.add_argument(
        "--fail-on-drift", action="store_true", help="exit 3 when a model's labels drifted"
    )
    parser.add_argument(
        "--database-url",
        default=settings.database_url_or_default,
        help="SQLAlchemy URL (default: DC_DATABASE_URL, else the embedded SQLite file)",
    )
    args = parser.parse_args(argv)
    if args.end is None:
        args.end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if args.start is None:
        if args.days < 1:
            parser.error("--days must be at least 1")
        args.start = args.end - timedelta(days=args.days)
    return args


def window_name(start: datetime, end: datetime, granularity: str) -> str:
    """The report folder's name: `<start>_<end>_<granularity>`, times in compact UTC."""
    stamp = "%Y%m%dT%H%MZ"
    return f"{start.astimezone(UTC):{stamp}}_{end.astimezone(UTC):{stamp}}_{granularity}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings().model_copy(
        update={"database_url": args.database_url, "artifacts_dir": str(args.out)}
    )
    configure_logging(settings.log_level)
    from dc.backup import backup_report
    from dc.reports.render import write_bundle
    from dc.reports.service import production_report

    upgrade(args.database_url)
    engine = make_engine(args.database_url)
    sessions = session_factory(engine)
    status, rows = 0, []
    try:
        models = args.model or _registry_models(sessions, args.region)
        if not models:
            log.warning("no model is recorded in region %r: nothing to report", args.region)
        window = window_name(args.start, args.end, args.granularity)
        for model in models:
            request = ReportRequest(
                model,
                args.region,
                args.start,
                args.end,
                args.granularity,
                args.version,
                args.compare,
            )
            try:
                report = production_report(sessions, settings, request)
            except DCError as exc:
                log.error("%s: no report: %s", model, exc.message)
                status = EXIT_FAILED
                continue
            folder = args.out / args.region / model / "reports" / window
            files = write_bundle(report, folder)
            log.info("%s: wrote %d files to %s", model, len(files), folder)
            if settings.s3_bucket and not args.no_backup:
                backup_report(folder, settings, region=args.region, model=model, window=window)
            if report["predictions"]["drift"] and args.fail_on_drift:
                status = max(status, EXIT_DRIFT)
            rows.append((model, report, folder))
    finally:
        engine.dispose()
    _summary(rows)
    return status


def _registry_models(sessions, region: str) -> list[str]:
    with sessions() as session:
        return sorted(
            session.scalars(
                select(ModelVersion.name).where(ModelVersion.region == region).distinct()
            )
        )


def _summary(rows) -> None:
    if not rows:
        return
    print(
        f"{'model':<20} {'texts':>9} {'PSI':>7} {'drift':>5} {'live wF1':>8} "
        f"{'test wF1':>8}  folder"
    )
    for model, report, folder in rows:
        feedback = report["feedback"]
        test = (feedback["test"] or {}).get("weighted_f1")
        print(
            f"{model:<20} {report['traffic']['texts']:>9,} {_num(report['predictions']['psi']):>7} "
            f"{'yes' if report['predictions']['drift'] else 'no':>5} "
            f"{_num(feedback['weighted_f1']):>8} {_num(test):>8}  {folder}"
        )


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    sys.exit(main())
