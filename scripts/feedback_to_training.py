"""Turn one model's feedback (ground truth of served predictions) into training examples.

The next `scripts/train.py` run for that model and region then learns from production: each
text with feedback and one agreed label becomes a training example (source "feedback"; data
preparation puts it in the train split, never in the test split). Running it again replaces
the previous run's examples. Texts whose feedback disagrees, and texts the training data
already holds with another label, are not added: they are reported, for a person to settle.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

from dc import feedback  # noqa: E402
from dc.config import get_settings  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from persistence.db import make_engine, session_factory, upgrade  # noqa: E402

log = logging.getLogger("feedback_to_training")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=(
            "examples:\n"
            "  python scripts/feedback_to_training.py --model banking77\n"
            "  python scripts/feedback_to_training.py --model banking77 --since 2026-11-01 "
            "--report var/feedback-banking77.json\n"
            "  python scripts/train.py --config banking77 --promote   # then retrain\n"
            "\n"
            "exit status: 0 (conflicts are reported, not errors)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="the model whose feedback to use")
    parser.add_argument(
        "--region",
        default=settings.serving_region,
        help="its region (default: DC_SERVING_REGION, %(default)s)",
    )
    parser.add_argument(
        "--since",
        type=datetime.fromisoformat,
        help="only feedback from this time on (ISO 8601; default: all)",
    )
    parser.add_argument(
        "--report", type=Path, help="also write the report (counts and every conflict) as JSON"
    )
    parser.add_argument(
        "--database-url",
        default=settings.database_url_or_default,
        help="SQLAlchemy URL (default: DC_DATABASE_URL, else the embedded SQLite file)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(get_settings().log_level)
    upgrade(args.database_url)
    engine = make_engine(args.database_url)
    try:
        report = feedback.to_training(
            session_factory(engine), args.model, args.region, since=args.since
        )
    finally:
        engine.dispose()
    result = report.as_dict()
    log.info(
        "%s/%s: %d feedback rows on %d texts: %d added as training examples, %d already there, "
        "%d disagreeing, %d conflicting with the training labels",
        args.region,
        args.model,
        report.feedback_rows,
        report.texts,
        report.added,
        report.already_in_training,
        len(result["disagreeing"]),
        len(result["conflicts"]),
    )
    for conflict in result["conflicts"][:10]:
        log.warning(
            "conflict: %r: feedback says %r, training says %s",
            conflict["text"],
            conflict["feedback_label"],
            conflict["training_labels"],
        )
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        log.info("report: %s", args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
