"""Fill the inference log with realistic synthetic traffic (and feedback), for benchmarks, demos
of the dashboard, and load tests of the reports.

For each model (default: every model with a promoted version in the region), rows are drawn
from its promoted version's own training phrases and labels: requests of 1-4 texts spread over
the window with a daily cycle, a share of phrases reworded so they were never seen in training,
a served label that is right about 90% of the time with a probability to match, a top-3 list,
lognormal latencies, and cache hits. A share of the predictions (`--feedback`) gets a true
label, as a reviewer would send it. `--shift-from` makes a drifted stream: from that day on,
a third of the traffic goes to two classes.

Rows go in through the inference log's own COPY path (`persistence.inference_log.postgres`) on
PostgreSQL, with the day partitions of the window made first; SQLite takes them by INSERT.
The same seed gives the same rows; request ids carry the seed, so two runs with different seeds
add to each other and a run with the same seed adds nothing twice.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, installed or not

import numpy as np  # noqa: E402
from sqlalchemy import insert  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dc.config import get_settings  # noqa: E402
from dc.serve.state import row_facts  # noqa: E402
from dc.serve.version_files import version_folder  # noqa: E402
from dc.utilities.logging import configure_logging  # noqa: E402
from dc.utilities.times import utc_time  # noqa: E402
from persistence import registry  # noqa: E402
from persistence.db import make_engine, session_factory, upgrade  # noqa: E402
from persistence.models import Feedback, Inference  # noqa: E402

log = logging.getLogger("generate_inferences")

BATCH = 20_000
FINGERPRINT = "synthetic-traffic"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    settings = get_settings()
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=(
            "examples:\n"
            "  python scripts/generate_inferences.py --rows 1000000 --days 30\n"
            "  python scripts/generate_inferences.py --model banking77 --rows 50000 --days 7 \\\n"
            "      --shift-from 2026-11-28 --seed 1\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows in all (default 100,000)")
    parser.add_argument("--days", type=int, default=30, help="window length (default 30)")
    parser.add_argument(
        "--end", type=utc_time, help="end of the window (default: now); ISO 8601, UTC if bare"
    )
    parser.add_argument("--model", action="append", help="a model (repeatable; default: all)")
    parser.add_argument("--region", default=settings.serving_region, help="the region")
    parser.add_argument(
        "--feedback", type=float, default=0.1, help="share of predictions with feedback (0.1)"
    )
    parser.add_argument("--unseen", type=float, default=0.2, help="share of reworded phrases (0.2)")
    parser.add_argument("--shift-from", type=utc_time, help="drift the labels from this time on")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--database-url",
        default=settings.database_url_or_default,
        help="SQLAlchemy URL (default: DC_DATABASE_URL, else the embedded SQLite file)",
    )
    args = parser.parse_args(argv)
    if args.rows < 1 or args.days < 1 or not 0 <= args.feedback <= 1 or not 0 <= args.unseen <= 1:
        parser.error("--rows and --days must be positive, --feedback and --unseen in [0, 1]")
    args.end = args.end or datetime.now(UTC)
    return args


def _promoted(engine, region: str, names: list[str] | None) -> list[dict]:
    with session_factory(engine)() as session:
        rows = [row_facts(row) for row in registry.promoted_versions(session, region)]
    found = [row for row in rows if names is None or row["name"] in names]
    missing = sorted(set(names or []) - {row["name"] for row in found})
    if missing:
        raise SystemExit(f"no promoted version of {', '.join(missing)} in region {region!r}")
    return found


def training_phrases(folder: Path) -> dict[str, list[str]]:
    """The training phrases of a version (its processed/train.csv), by label."""
    by_label: dict[str, list[str]] = {}
    with open(folder / "processed" / "train.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            by_label.setdefault(row["label"], []).append(row["text"])
    return by_label


def generate(rng, model: dict, by_label, n: int, start: datetime, days: int, args, tag: str):
    """`n` rows of one model, and the feedback rows of a share of them."""
    labels = sorted(by_label)
    weights = np.array([len(by_label[label]) for label in labels], dtype=float)
    weights /= weights.sum()
    shifted = weights * (2 / 3)
    shifted[rng.choice(len(labels), size=2, replace=False)] += 1 / 6

    # Times: uniform days, a daily cycle (more traffic in the day than at night), sorted.
    seconds = rng.uniform(0, days * 86_400, size=n)
    seconds += 3_600 * 4 * np.sin(2 * np.pi * (seconds % 86_400) / 86_400)
    seconds = np.sort(np.clip(seconds, 0, days * 86_400 - 1))
    times = [start + timedelta(seconds=float(s)) for s in seconds]
    shift_from = args.shift_from
    true_index = np.where(
        [shift_from is not None and t >= shift_from for t in times],
        rng.choice(len(labels), size=n, p=shifted),
        rng.choice(len(labels), size=n, p=weights),
    )
    right = rng.random(n) < 0.9
    other = (true_index + rng.integers(1, len(labels), size=n)) % len(labels)
    served_index = np.where(right, true_index, other)
    probability = np.where(right, rng.beta(8, 1.5, size=n), rng.beta(2, 3, size=n))
    latency = rng.lognormal(np.log(12), 0.5, size=n)
    hit = rng.random(n) < 0.6
    reword = rng.random(n) < args.unseen
    with_feedback = rng.random(n) < args.feedback
    sizes = rng.integers(1, 5, size=n)

    inferences, feedback = [], []
    k = 0
    request = 0
    while k < n:
        size = int(min(sizes[k], n - k))
        rid = f"{tag}-{model['name']}-{request:08d}"
        for item in range(size):
            j = k + item
            label = labels[served_index[j]]
            truth = labels[true_index[j]]
            phrases = by_label[truth]
            text = phrases[int(rng.integers(len(phrases)))]
            if reword[j]:
                text = f"{text} please {int(rng.integers(1_000_000))}"
            p = float(probability[j])
            runner_up = labels[(served_index[j] + 1) % len(labels)]
            inferences.append(
                {
                    "request_id": rid,
                    "item": item,
                    "created_at": times[k],
                    "model": model["name"],
                    "region": model["region"],
                    "version": model["version"],
                    "model_type": "synthetic",
                    "input_text": text,
                    "predicted_label": label,
                    "probability": p,
                    "top_k": [
                        {"label": label, "probability": p},
                        {"label": runner_up, "probability": (1 - p) * 0.6},
                        {
                            "label": labels[(served_index[j] + 2) % len(labels)],
                            "probability": (1 - p) * 0.2,
                        },
                    ],
                    "latency_ms": float(latency[k]),
                    "cache_hit": bool(hit[j]),
                    "embedder_fingerprint": FINGERPRINT,
                    "client_request_id": None,
                }
            )
            if with_feedback[j]:
                when = times[k] + timedelta(hours=1)
                feedback.append(
                    {
                        "request_id": rid,
                        "item": item,
                        "source": "generator",
                        "label": truth,
                        "model": model["name"],
                        "region": model["region"],
                        "version": model["version"],
                        "feedback_time": when,
                        "recorded_at": when,
                        "prediction_time": times[k],
                        "predicted_label": label,
                        "probability": p,
                    }
                )
        k += size
        request += 1
    return inferences, feedback


def write(engine, inferences: list[dict], feedback: list[dict]) -> None:
    """Store the rows in batches: the log's COPY path on PostgreSQL, INSERT on SQLite."""
    postgres = engine.dialect.name == "postgresql"
    with tqdm(total=len(inferences), unit="row", desc="inferences", disable=None) as bar:
        for offset in range(0, len(inferences), BATCH):
            batch = inferences[offset : offset + BATCH]
            with engine.begin() as connection:
                if postgres:
                    from persistence.inference_log.postgres import copy_batch

                    copy_batch(connection, batch)
                else:
                    connection.execute(insert(Inference).prefix_with("OR IGNORE"), batch)
            bar.update(len(batch))
    for offset in range(0, len(feedback), BATCH):
        with engine.begin() as connection:
            statement = insert(Feedback)
            if postgres:
                from sqlalchemy.dialects.postgresql import insert as pg_insert

                statement = pg_insert(Feedback).on_conflict_do_nothing()
            else:
                statement = statement.prefix_with("OR IGNORE")
            connection.execute(statement, feedback[offset : offset + BATCH])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    upgrade(args.database_url)
    engine = make_engine(args.database_url)
    started = time.perf_counter()
    try:
        models = _promoted(engine, args.region, args.model)
        if not models:
            raise SystemExit(f"no promoted model in region {args.region!r}: train one first")
        start = args.end - timedelta(days=args.days)
        _make_partitions(engine, start, args.days)
        rng = np.random.default_rng(args.seed)
        share = np.full(len(models), args.rows // len(models))
        share[: args.rows % len(models)] += 1
        total_feedback = 0
        for model, n in zip(models, share, strict=True):
            phrases = training_phrases(version_folder(settings, model))
            rows, feedback = generate(
                rng, model, phrases, int(n), start, args.days, args, f"gen{args.seed}"
            )
            write(engine, rows, feedback)
            total_feedback += len(feedback)
            log.info(
                "%s %s: %d predictions, %d with feedback",
                model["name"],
                model["version"],
                len(rows),
                len(feedback),
            )
    finally:
        engine.dispose()
    log.info(
        "wrote %d predictions and %d feedback rows over %d days in %.1f s",
        args.rows,
        total_feedback,
        args.days,
        time.perf_counter() - started,
    )
    return 0


def _make_partitions(engine, start: datetime, days: int) -> None:
    """The day partitions of the window, so the rows land in them and not in the default one."""
    if engine.dialect.name != "postgresql":
        return
    from persistence import partitions

    with engine.begin() as connection:
        partitions.ensure_partitions(connection, start, days + 1)


if __name__ == "__main__":
    sys.exit(main())
