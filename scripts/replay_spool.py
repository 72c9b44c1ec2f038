"""Replay the inference-log spool into the database (the library part is persistence.inference_log).

The spool is the workers' journals: rows kept through a database outage, and the rows a worker
killed without a shutdown (SIGKILL, the OOM killer) had not written yet. The API's writers
replay them themselves when the database comes back and when a worker starts; this script is
for the other cases: a machine whose API is gone, a spool copied from another machine, or
checking by hand that nothing is left behind.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from sqlalchemy.exc import DBAPIError  # noqa: E402

from dc.config import get_settings  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from persistence.db import upgrade  # noqa: E402
from persistence.inference_log import InferenceLog  # noqa: E402

log = logging.getLogger("replay_spool")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=(
            "Insert the rows of the inference-log spool (spool-*.jsonl files: the journals of "
            "API workers, holding predictions that were not written to the database when they "
            "were served, because it was away or because the worker died) into the inferences "
            "table, then delete each file whose rows are all stored. The database schema is "
            "created or upgraded first (alembic upgrade head). Rows already in the database are "
            "skipped (unique request_id and item), so replaying twice is harmless. Files still "
            "locked by a running API worker are left alone: that worker replays them itself. "
            "Rows the database refuses for their values, and rows whose key already holds a "
            "different row (a conflict), go to rejected-*.jsonl beside them."
        ),
        epilog=(
            "examples:\n"
            "  python scripts/replay_spool.py\n"
            "  python scripts/replay_spool.py --spool-dir /mnt/old-host/spool \\\n"
            "      --database-url postgresql+psycopg2://user@db/dc\n"
            "\n"
            "exit status: 0 when every unlocked file was replayed, 1 when the database could "
            "not be reached (the files are kept)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--spool-dir",
        type=Path,
        default=Path(settings.spool_dir),
        metavar="DIR",
        help="folder of the spool files (default: DC_SPOOL_DIR, else var/spool: %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL (default: DC_DATABASE_URL, else the SQLite file var/dc.sqlite)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Upgrade the schema, replay every unlocked spool file, print the rows replayed."""
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # set-up chatter
    url = args.database_url or settings.database_url_or_default
    if not args.spool_dir.is_dir():
        log.info("no spool folder at %s: nothing to replay", args.spool_dir)
        print("replayed 0 rows")
        return 0
    try:
        upgrade(url)
    except DBAPIError as error:
        log.error("cannot reach the database: %s", str(error.orig).strip().splitlines()[0])
        return 1
    inference_log = InferenceLog(url, args.spool_dir)
    try:
        replayed = inference_log.replay_spool()
        stats = inference_log.stats()
    finally:
        inference_log.close()
    print(f"replayed {replayed} rows")
    if not stats.database_available:
        log.error("the database went away during the replay; the remaining files are kept")
        return 1
    if stats.spool_files:
        log.info("%d spool file(s) left: locked by running writers", stats.spool_files)
    if stats.dropped:
        log.error("%d rows were refused by the database: see rejected-*.jsonl", stats.dropped)
    if stats.conflicts:
        log.error(
            "%d rows conflict with different rows stored under their keys: see rejected-*.jsonl",
            stats.conflicts,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
