"""Bulk-load ground truth from a CSV file into the feedback table (the library part: dc.feedback).

The same checks as POST /feedback: each row names a served prediction (request_id, item) that
the inference log holds, and its label must be a class of the version that served it (read
from the version's manifest under DC_ARTIFACTS_DIR; a version whose files are not here is not
checked). Rows are recorded in batches of --batch-size, each all or nothing; a refused batch
is reported line by line and the others are kept. Loading the same file again changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from tqdm import tqdm  # noqa: E402

from dc import feedback  # noqa: E402
from dc.config import get_settings  # noqa: E402
from dc.errors import DataError, DCError  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from persistence.db import make_engine, session_factory, upgrade  # noqa: E402

log = logging.getLogger("load_feedback")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=(
            "the CSV: a header with request_id,item,label and optionally source and time (ISO "
            "8601 with an offset); one row per prediction:\n"
            "  request_id,item,label\n"
            "  0192f3a1c2d4e5f60718293a4b5c6d7e,0,card_arrival\n"
            "\n"
            "examples:\n"
            "  python scripts/load_feedback.py --csv reviews.csv --source reviewer\n"
            "  python scripts/load_feedback.py --csv crm.csv --database-url "
            "postgresql+psycopg2://user@db/dc\n"
            "\n"
            "exit status: 0 when every row was recorded, 1 when some batch was refused or the "
            "file is malformed (nothing of it recorded then)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--csv", type=Path, required=True, help="the CSV file to load")
    parser.add_argument(
        "--source",
        default="csv",
        help="the source of rows whose CSV has no source column (default: csv)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=settings.max_feedback_items,
        help="rows per all-or-nothing batch (default: DC_MAX_FEEDBACK_ITEMS, %(default)s)",
    )
    parser.add_argument(
        "--database-url",
        default=settings.database_url_or_default,
        help="SQLAlchemy URL (default: DC_DATABASE_URL, else the embedded SQLite file)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    try:
        items = feedback.read_csv(args.csv.read_text(encoding="utf-8"), source=args.source)
    except (OSError, UnicodeDecodeError, DataError) as exc:
        log.error("%s: %s", args.csv, getattr(exc, "message", exc))
        return 1
    upgrade(args.database_url)
    engine = make_engine(args.database_url)
    sessions = session_factory(engine)
    classes_of = feedback.manifest_classes(settings.artifacts_dir)
    counts = {"created": 0, "updated": 0, "unchanged": 0, "refused": 0}
    try:
        with tqdm(total=len(items), unit="row", desc="feedback", disable=None) as progress:
            for start in range(0, len(items), args.batch_size):
                batch = items[start : start + args.batch_size]
                try:
                    for answer in feedback.record(sessions, batch, classes_of):
                        counts[answer["status"]] += 1
                except DCError as exc:
                    counts["refused"] += len(batch)
                    for problem in exc.items or []:
                        # CSV line: the header is line 1, the first row line 2.
                        line = start + problem["index"] + 2
                        log.error("line %d: %s", line, problem["message"])
                    if not exc.items:
                        log.error("rows %d-%d: %s", start + 2, start + len(batch) + 1, exc.message)
                progress.update(len(batch))
    finally:
        engine.dispose()
    log.info(
        "%s: %d rows: %d created, %d updated, %d unchanged, %d refused (their batches wrote "
        "nothing)",
        args.csv,
        len(items),
        counts["created"],
        counts["updated"],
        counts["unchanged"],
        counts["refused"],
    )
    return 1 if counts["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
