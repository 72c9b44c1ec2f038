"""Keep the inference log's daily partitions: make the coming days', drop the expired ones.

The library part is `persistence.partitions`. The API's log writers do the same work at their
start and hourly; this script is for a cron entry or a scheduled job (one that runs whether or
not an API is up), for a retention changed by hand, and for looking at what would be done
(--dry-run). Safe to run at any time and any number of times at once: the work is done under
a PostgreSQL advisory lock, and a run that finds it taken leaves the work to its holder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from sqlalchemy.exc import DBAPIError  # noqa: E402

from dc.config import get_settings  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from persistence.db import make_engine  # noqa: E402
from persistence.models import to_utc, utcnow  # noqa: E402
from persistence.partitions import DEFAULT_PARTITION, Maintenance, maintain, plan  # noqa: E402

log = logging.getLogger("maintain_partitions")


def non_negative(value: str) -> int:
    """An argparse type: an integer of 0 or more."""
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {number}")
    return number


def moment(value: str) -> datetime:
    """An argparse type: an ISO 8601 date or time (UTC when it has no offset)."""
    try:
        return to_utc(datetime.fromisoformat(value))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=(
            "Maintain the daily partitions of the inferences table on PostgreSQL (one "
            "partition per UTC day, inferences_pYYYYMMDD, and the default partition "
            f"{DEFAULT_PARTITION} for rows no day covers): drop the days entirely older than "
            "the retention (rows and all; rows older than it in the default partition are "
            "deleted), then make the missing partitions from today to --days-ahead days later "
            "(rows of those days waiting in the default partition move into them). The API's "
            "log writers do the same at their start and hourly; run this from cron or a "
            "scheduled job as well, so that the days ahead exist whatever the API does. "
            "Nothing to do on SQLite, whose table is not partitioned."
        ),
        epilog=(
            "examples:\n"
            "  python scripts/maintain_partitions.py\n"
            "  python scripts/maintain_partitions.py --retention-days 90 --dry-run\n"
            "  python scripts/maintain_partitions.py --database-url "
            "postgresql+psycopg2://user@db/dc\n"
            "\n"
            "exit status: 0 when done (also when another process held the maintenance lock, or "
            "there was nothing to do), 1 when the database could not be reached or refused "
            "the work (nothing was changed)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL (default: DC_DATABASE_URL, else the SQLite file var/dc.sqlite)",
    )
    parser.add_argument(
        "--days-ahead",
        type=non_negative,
        default=settings.partitions_ahead_days,
        metavar="DAYS",
        help="make the partitions up to this many days after today "
        "(default: DC_PARTITIONS_AHEAD_DAYS, %(default)s)",
    )
    parser.add_argument(
        "--retention-days",
        type=non_negative,
        default=settings.inference_retention_days,
        metavar="DAYS",
        help="drop the days entirely older than this many days; 0 keeps everything "
        "(default: DC_INFERENCE_RETENTION_DAYS, %(default)s)",
    )
    parser.add_argument(
        "--now",
        type=moment,
        default=None,
        metavar="TIME",
        help="take this ISO 8601 time (UTC without an offset) as now instead of the clock, "
        "e.g. to make the partitions of a day to come for a backfill",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be made, moved, dropped and deleted; change nothing",
    )
    return parser.parse_args(argv)


def report(done: Maintenance, dry_run: bool) -> None:
    """Print what was done (or, with `dry_run`, what would be), one line per partition."""
    for name in done.dropped:
        print(f"would drop {name}" if dry_run else f"dropped {name}")
    for name in done.created:
        print(f"would make {name}" if dry_run else f"made {name}")
    made, dropped = len(done.created), len(done.dropped)
    if dry_run:
        print(
            f"would make {made} partition(s) and drop {dropped}; would move {done.moved_rows} "
            f"row(s) out of {DEFAULT_PARTITION} and delete {done.purged_rows} expired row(s) "
            "from it"
        )
    else:
        print(
            f"made {made} partition(s), dropped {dropped}; moved {done.moved_rows} row(s) out "
            f"of {DEFAULT_PARTITION}, deleted {done.purged_rows} expired row(s) from it"
        )


def main(argv: list[str] | None = None) -> int:
    """Maintain (or with --dry-run, plan) the partitions; print what was done."""
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    url = args.database_url or settings.database_url_or_default
    now = args.now or utcnow()
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            if args.dry_run:
                done = plan(
                    connection,
                    now,
                    days_ahead=args.days_ahead,
                    retention_days=args.retention_days,
                )
            else:
                done = maintain(
                    connection,
                    now,
                    days_ahead=args.days_ahead,
                    retention_days=args.retention_days,
                )
    except DBAPIError as error:
        log.error(
            "partition maintenance failed, nothing changed: %s",
            str(error.orig).strip().splitlines()[0],
        )
        return 1
    finally:
        engine.dispose()
    if not done.partitioned:
        log.info("the inferences table is not partitioned (SQLite, or before migration 0005)")
        print("nothing to do: inferences is not partitioned here")
        return 0
    if done.busy:
        print(
            "another process holds the partition maintenance lock: it does the work; nothing done"
        )
        return 0
    report(done, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
