"""Load labelled phrases from CSV files into the `training_examples` table.

A file is checked completely before anything is written, then written in ONE transaction:
either all its rows are in the database or none are. Rows are stored raw (texts unchanged,
labels stripped); cleaning and splitting belong to `dc.preparation`.

CSV format: UTF-8, a header, columns `text` and `label`; optionally `split` ("train",
"validation" (or "val", "valid"), "test", blank: NULL, to be split by preparation) and a time
column (`timestamp` unless another is named), ISO 8601, without an offset meaning UTC.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from sqlalchemy import Engine, delete, insert
from tqdm import tqdm

from dc.errors import DataError
from persistence.models import SPLITS, TrainingExample, utcnow

log = logging.getLogger(__name__)

BATCH_ROWS = 5000
DEFAULT_TIME_COLUMN = "timestamp"
# A progress bar only where it helps; tqdm also stays silent when stderr is not a terminal.
PROGRESS_MIN_ROWS = 50_000
_SPLIT_ALIASES = {"val": "validation", "valid": "validation"}

_examples = TrainingExample.__table__
_MAX_LABEL = _examples.c.label.type.length
_MAX_MODEL = _examples.c.model.type.length
_MAX_REGION = _examples.c.region.type.length


def load_csv(
    engine: Engine,
    path: str | Path,
    *,
    model: str,
    region: str,
    split: str | None = None,
    time_column: str | None = None,
    replace: bool = False,
) -> int:
    """Insert the rows of one CSV file as training examples of `model` in `region`.

    Args:
        engine: database with the schema in place (`persistence.db.upgrade`).
        path: the CSV file; its resolved absolute path is stored as each row's `source`.
        split: tag every row with this split, overriding any `split` column; default: the
            file's `split` column, or NULL without one.
        time_column: column holding each example's time; default: `timestamp` if present,
            else every row gets the load time.
        replace: first delete the rows this model and region already have from this same file,
            so loading a file again replaces it instead of doubling it.

    Returns:
        The number of rows inserted.

    Raises:
        DataError: the file cannot be read, lacks `text`/`label`/the named time column, or has
            a blank or too long label, an unknown split or an unreadable time (nothing is
            written then).
        ValueError: `model`, `region` or `split` is invalid.
    """
    _check_name("model", model, _MAX_MODEL)
    _check_name("region", region, _MAX_REGION)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)} or None, got {split!r}")
    start = time.perf_counter()
    source = str(Path(path).expanduser().resolve())
    frame = read_examples(source, split=split, time_column=time_column)
    loaded_at = utcnow()
    rows = [
        {
            "model": model,
            "region": region,
            "text": text,
            "label": label,
            "split": split_value,
            "example_time": loaded_at if pd.isna(example_time) else example_time.to_pydatetime(),
            "loaded_at": loaded_at,
            "source": source,
        }
        for text, label, split_value, example_time in zip(
            frame["text"],
            frame["label"],
            frame["split"],
            frame["example_time"],
            strict=True,
        )
    ]

    with engine.begin() as connection:
        if replace:
            deleted = connection.execute(
                delete(_examples).where(
                    _examples.c.model == model,
                    _examples.c.region == region,
                    _examples.c.source == source,
                )
            ).rowcount
            log.info("replacing %d earlier rows of %s/%s from %s", deleted, model, region, source)
        with tqdm(
            total=len(rows),
            unit="rows",
            desc=Path(source).name,
            disable=True if len(rows) < PROGRESS_MIN_ROWS else None,
        ) as progress:
            for first in range(0, len(rows), BATCH_ROWS):
                batch = rows[first : first + BATCH_ROWS]
                connection.execute(insert(_examples), batch)  # executemany
                progress.update(len(batch))

    log.info(
        "loaded %d rows for %s/%s from %s in %.2f s",
        len(rows),
        model,
        region,
        source,
        time.perf_counter() - start,
    )
    return len(rows)


def read_examples(
    path: str | Path, *, split: str | None = None, time_column: str | None = None
) -> pd.DataFrame:
    """Read and check a training CSV (see the module docstring for its format).

    Returns:
        Columns text, label, split (None where unassigned) and example_time (datetime64 in
        UTC; NaT everywhere when the file has no time column).

    Raises:
        DataError: see `load_csv`.
    """
    try:
        # Every cell as a string, and no NA guessing: "NA", "null" or "None" are phrases too.
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"cannot read {path}: {e}") from e

    missing = [column for column in ("text", "label") if column not in raw.columns]
    if time_column is not None and time_column not in raw.columns:
        missing.append(time_column)
    if missing:
        raise DataError(f"{path} lacks the column(s) {missing}; it has {list(raw.columns)}")

    frame = pd.DataFrame({"text": raw["text"], "label": raw["label"].str.strip()})
    _refuse(path, frame["label"] == "", "blank label")
    _refuse(path, frame["label"].str.len() > _MAX_LABEL, f"label over {_MAX_LABEL} characters")

    if split is not None:
        frame["split"] = split
    elif "split" in raw.columns:
        splits = raw["split"].str.strip().str.lower().replace(_SPLIT_ALIASES)
        _refuse(path, ~splits.isin([*SPLITS, ""]), f"split not one of {list(SPLITS)}")
        frame["split"] = splits.where(splits != "", None)
    else:
        frame["split"] = None

    column = time_column or (DEFAULT_TIME_COLUMN if DEFAULT_TIME_COLUMN in raw.columns else None)
    if column is None:
        frame["example_time"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[ns, UTC]")
    else:
        times = pd.to_datetime(raw[column], utc=True, format="ISO8601", errors="coerce")
        _refuse(path, times.isna(), f"time in {column!r} missing or not ISO 8601")
        frame["example_time"] = times
    return frame


def _refuse(path: str | Path, bad: pd.Series, problem: str) -> None:
    """Raise DataError naming the first few CSV lines where `bad` holds."""
    if bad.any():
        # Record numbers counting the header as 1: the line numbers, unless a quoted text
        # spans several lines.
        lines = [str(index + 2) for index in bad[bad].index[:5]]
        more = f" (and {int(bad.sum()) - len(lines)} more)" if bad.sum() > len(lines) else ""
        raise DataError(f"{path}: {problem} on line(s) {', '.join(lines)}{more}")


def _check_name(kind: str, value: str, max_length: int) -> None:
    if not value or not value.strip() or len(value) > max_length:
        raise ValueError(f"{kind} must be 1 to {max_length} characters, got {value!r}")


def write_subset(source: Path, dest: Path, labels: Sequence[str], per_label: int) -> Path:
    """Write the first `per_label` rows of each of `labels` in the `text,label` CSV `source`
    to a new CSV `dest` (a small real dataset for smoke runs and tests).

    Returns:
        `dest`.
    """
    counts = dict.fromkeys(labels, 0)
    with open(source, newline="", encoding="utf-8") as src, open(dest, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "label"])
        for row in csv.DictReader(src):
            if counts.get(row["label"], per_label) < per_label:
                counts[row["label"]] += 1
                writer.writerow([row["text"], row["label"]])
    return dest
