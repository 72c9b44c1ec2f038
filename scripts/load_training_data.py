"""Load training CSV files into the database (the library part is dc.data.load_csv)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc.config import get_settings  # noqa: E402
from dc.data import load_csv  # noqa: E402
from dc.errors import DataError  # noqa: E402
from dc.model_config import DEFAULT_REGION  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from persistence.db import make_engine, upgrade  # noqa: E402
from persistence.models import SPLITS  # noqa: E402

log = logging.getLogger("load_training_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        description=(
            "Load labelled phrases from CSV files (UTF-8, a header, columns text and label; "
            "optionally split and a time column) into the training_examples table, as the "
            "training data of one model in one region. The database schema is created or "
            "upgraded first (alembic upgrade head). Each file is checked completely, then "
            "written in one transaction: all its rows or none."
        ),
        epilog=(
            "examples:\n"
            "  # BANKING77's own test set stays the test split; preparation splits the rest\n"
            "  python scripts/load_training_data.py --model banking77 data/banking77/train.csv\n"
            "  python scripts/load_training_data.py --model banking77 \\\n"
            "      --split test data/banking77/test.csv\n"
            "  # load a file again after editing it: its earlier rows are replaced\n"
            "  python scripts/load_training_data.py --model clinc150 \\\n"
            "      --split validation --replace data/clinc150/val.csv\n"
            '  # a regional model: its config says [model] region = "us"\n'
            "  python scripts/load_training_data.py events.csv --model intents --region us \\\n"
            "      --time-column created_at --database-url postgresql+psycopg2://user@db/dc"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("csv", nargs="+", type=Path, help="CSV file(s) to load")
    parser.add_argument("--model", required=True, help="model the rows train (e.g. banking77)")
    parser.add_argument(
        "--region",
        default=DEFAULT_REGION,
        help=f"region the rows belong to (default: {DEFAULT_REGION}, the region of a config "
        "without [model] region)",
    )
    parser.add_argument(
        "--split",
        choices=SPLITS,
        default=None,
        help="tag every row with this split (default: the file's split column if it has one, "
        "else none: data preparation splits the rows)",
    )
    parser.add_argument(
        "--time-column",
        default=None,
        metavar="NAME",
        help="column with each example's time, ISO 8601, no offset meaning UTC (default: a "
        "column named timestamp if present; without one, rows get the load time)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="first delete the rows this model and region have from the same file, so that "
        "loading a file again replaces it instead of doubling it",
    )
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL (default: DC_DATABASE_URL, else the SQLite file var/dc.sqlite)",
    )
    args = parser.parse_args(argv)
    for path in args.csv:
        if not path.is_file():
            parser.error(f"no such file: {path}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Upgrade the schema, then load each file in its own transaction."""
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # set-up chatter
    url = args.database_url or settings.database_url_or_default
    upgrade(url)
    engine = make_engine(url)
    total = 0
    try:
        for path in args.csv:
            total += load_csv(
                engine,
                path,
                model=args.model,
                region=args.region,
                split=args.split,
                time_column=args.time_column,
                replace=args.replace,
            )
    except (DataError, ValueError) as error:
        log.error("%s (files before this one are loaded: %d rows)", error, total)
        return 1
    finally:
        engine.dispose()
    log.info("done: %d rows from %d file(s)", total, len(args.csv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
