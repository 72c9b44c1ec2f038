"""Ground truth for served predictions: check feedback against the inference log, then store it.

A feedback item names one served prediction (`request_id`, `item`: the inference log's key), its
true label, a source (who says so) and optionally when it was known. A batch is all or nothing:
every item is checked first (the prediction exists; the label is one of the classes of the
version that served it; no item twice), and a batch with any refused item writes nothing and
raises with one error per refused item. Stored rows are keyed on (request_id, item, source):
sending the same feedback again changes nothing, a new label from the same source replaces the
old one. Both the API (`POST /feedback`) and `scripts/load_feedback.py` (CSV) call `record`;
`to_training` (scripts/feedback_to_training.py) turns stored feedback into training examples.

Writing feedback touches only the `feedback` table and reads `inferences` by its primary key: the
prediction path (its caches, its log writer) is never involved.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from dc.errors import DataError, InvalidInput, NotFound
from persistence.models import Feedback, Inference, TrainingExample, to_utc, utcnow

DEFAULT_SOURCE = "api"
# (model, region, version) -> its classes, or None when they cannot be known here.
ClassesOf = Callable[[str, str, str], "set[str] | None"]


@dataclass(frozen=True)
class FeedbackItem:
    """One true label for one served prediction."""

    request_id: str
    item: int
    label: str
    source: str = DEFAULT_SOURCE
    time: datetime | None = None


class FeedbackRefused(InvalidInput):
    """A batch with at least one refused item (nothing was written); `items` says which and why."""


class FeedbackNotFound(NotFound):
    """Every refused item names a prediction the inference log does not hold (nothing written)."""


def record(
    sessions: sessionmaker[Session], items: Sequence[FeedbackItem], classes_of: ClassesOf
) -> list[dict[str, Any]]:
    """Check every item, then store them all in one transaction.

    Returns one entry per item, in order: `request_id`, `item`, `source`, `label`, `model`,
    `version` and `status` ("created", "updated": a new label from the same source,
    "unchanged": the same label again).

    Raises:
        FeedbackNotFound: (404) every refused item names an unknown prediction.
        FeedbackRefused: (422) some item has a label outside its version's classes, or
            appears twice in the batch (and maybe others are unknown).
    """
    with sessions() as session, session.begin():
        keys = {(it.request_id, it.item) for it in items}
        served = {
            (row.request_id, row.item): row
            for row in session.execute(
                select(
                    Inference.request_id,
                    Inference.item,
                    Inference.model,
                    Inference.region,
                    Inference.version,
                    Inference.created_at,
                    Inference.predicted_label,
                    Inference.probability,
                ).where(tuple_(Inference.request_id, Inference.item).in_(keys))
            )
        }
        problems = _problems(items, served, classes_of)
        if problems:
            codes = {problem["code"] for problem in problems}
            kind = FeedbackNotFound if codes == {"not_found"} else FeedbackRefused
            raise kind(
                f"{len(problems)} of {len(items)} feedback item(s) refused; nothing was recorded",
                items=problems,
            )
        existing = {
            (row.request_id, row.item, row.source): row.label
            for row in session.execute(
                select(Feedback.request_id, Feedback.item, Feedback.source, Feedback.label).where(
                    tuple_(Feedback.request_id, Feedback.item).in_(keys)
                )
            )
        }
        now = utcnow()
        rows, answers = [], []
        for it in items:
            inference = served[(it.request_id, it.item)]
            before = existing.get((it.request_id, it.item, it.source))
            status = (
                "created" if before is None else "unchanged" if before == it.label else "updated"
            )
            rows.append(
                {
                    "request_id": it.request_id,
                    "item": it.item,
                    "source": it.source,
                    "label": it.label,
                    "model": inference.model,
                    "region": inference.region,
                    "version": inference.version,
                    "feedback_time": to_utc(it.time) if it.time else now,
                    "recorded_at": now,
                    "prediction_time": inference.created_at,
                    "predicted_label": inference.predicted_label,
                    "probability": inference.probability,
                }
            )
            answers.append(
                {
                    "request_id": it.request_id,
                    "item": it.item,
                    "source": it.source,
                    "label": it.label,
                    "model": inference.model,
                    "version": inference.version,
                    "status": status,
                }
            )
        if rows:
            session.execute(_upsert(session, rows))
    return answers


def _problems(
    items: Sequence[FeedbackItem], served: dict[tuple[str, int], Any], classes_of: ClassesOf
) -> list[dict[str, Any]]:
    problems: list[dict[str, Any]] = []
    seen: set[tuple[str, int, str]] = set()
    classes_cache: dict[tuple[str, str, str], set[str] | None] = {}
    for index, it in enumerate(items):
        key = (it.request_id, it.item, it.source)
        inference = served.get((it.request_id, it.item))
        if key in seen:
            problems.append(
                _problem(
                    index,
                    "invalid_input",
                    "the same request_id, item and source appear twice in the batch",
                )
            )
        elif inference is None:
            problems.append(
                _problem(
                    index,
                    "not_found",
                    f"no served prediction {it.request_id!r} item {it.item} in the inference "
                    "log (a prediction's row is written within a second of its answer: retry "
                    "a just-made one shortly)",
                )
            )
        else:
            version = (inference.model, inference.region, inference.version)
            if version not in classes_cache:
                classes_cache[version] = classes_of(*version)
            classes = classes_cache[version]
            if classes is not None and it.label not in classes:
                problems.append(
                    _problem(
                        index,
                        "invalid_input",
                        f"label {it.label!r} is not a class of {inference.model} version "
                        f"{inference.version} ({len(classes)} classes; GET /models/"
                        f"{inference.model} lists them)",
                    )
                )
        seen.add(key)
    return problems


def _problem(index: int, code: str, message: str) -> dict[str, Any]:
    return {"index": index, "code": code, "message": message}


def _upsert(session: Session, rows: list[dict[str, Any]]):
    """INSERT ... ON CONFLICT (request_id, item, source) DO UPDATE: PostgreSQL and SQLite."""
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise RuntimeError(f"feedback needs PostgreSQL or SQLite, not {dialect}")
    statement = insert(Feedback).values(rows)
    return statement.on_conflict_do_update(
        index_elements=["request_id", "item", "source"],
        set_={
            "label": statement.excluded.label,
            "feedback_time": statement.excluded.feedback_time,
            "recorded_at": statement.excluded.recorded_at,
            # Fills them in on a row recorded before they were copied (migration 0006).
            "prediction_time": statement.excluded.prediction_time,
            "predicted_label": statement.excluded.predicted_label,
            "probability": statement.excluded.probability,
        },
    )


def manifest_labels(artifacts_dir: str, region: str, model: str, version: str) -> set[str] | None:
    """The labels of one version from its manifest (<artifacts_dir>/<region>/<model>/<version>/
    manifest.json), or None when its files are not here."""
    path = Path(artifacts_dir) / region / model / version / "manifest.json"
    try:
        return {str(label) for label in json.loads(path.read_text("utf-8"))["labels"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def manifest_classes(artifacts_dir: str) -> ClassesOf:
    """A `ClassesOf` that reads each version's labels from its manifest (`manifest_labels`),
    once per version; None (label not checked) where the files are absent."""
    found: dict[tuple[str, str, str], set[str] | None] = {}

    def classes_of(model: str, region: str, version: str) -> set[str] | None:
        key = (model, region, version)
        if key not in found:
            found[key] = manifest_labels(artifacts_dir, region, model, version)
        return found[key]

    return classes_of


def read_csv(text: str, *, source: str, max_items: int | None = None) -> list[FeedbackItem]:
    """Feedback items from CSV text with the header `request_id,item,label` (and optionally
    `source` and `time`, ISO 8601); a row without a source gets `source`.

    Raises:
        DataError: a missing column, an item that is not a non-negative integer, an empty
            label, a bad time, or more than `max_items` rows (the message names the line).
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = {"request_id", "item", "label"} - set(reader.fieldnames or ())
    if missing:
        raise DataError(
            "the CSV needs the columns request_id,item,label "
            f"(missing: {', '.join(sorted(missing))})"
        )
    items = []
    for line, row in enumerate(reader, start=2):
        if max_items is not None and len(items) >= max_items:
            raise DataError(f"more than {max_items} rows: split the file")
        items.append(_csv_item(row, line, source))
    return items


def _csv_item(row: dict[str, str], line: int, source: str) -> FeedbackItem:
    request_id, label = (row.get("request_id") or "").strip(), (row.get("label") or "").strip()
    if not request_id or not label:
        raise DataError(f"line {line}: request_id and label must not be empty")
    try:
        item = int(row.get("item") or "")
        if item < 0:
            raise ValueError
    except ValueError:
        raise DataError(f"line {line}: item must be a non-negative integer") from None
    when = (row.get("time") or "").strip()
    try:
        time = datetime.fromisoformat(when) if when else None
    except ValueError:
        raise DataError(f"line {line}: time {when!r} is not ISO 8601") from None
    return FeedbackItem(request_id, item, label, (row.get("source") or "").strip() or source, time)


# --- back into training ---------------------------------------------------------------------

TRAINING_SOURCE = "feedback"


@dataclass
class TrainingReport:
    """What `to_training` did for one model and region."""

    model: str
    region: str
    feedback_rows: int = 0
    texts: int = 0
    added: int = 0
    already_in_training: int = 0
    # The same text with different true labels from different feedback (none of them added).
    disagreeing: list[dict[str, Any]] | None = None
    # Texts whose feedback label differs from a label the training data already has (not added:
    # which one is right is a person's call; the training data wins until it is fixed).
    conflicts: list[dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "region": self.region,
            "feedback_rows": self.feedback_rows,
            "texts": self.texts,
            "added": self.added,
            "already_in_training": self.already_in_training,
            "disagreeing": self.disagreeing or [],
            "conflicts": self.conflicts or [],
        }


def to_training(
    sessions: sessionmaker[Session], model: str, region: str, *, since: datetime | None = None
) -> TrainingReport:
    """Turn one model's feedback into training examples (split left to data preparation, which
    puts them in train), so the next retraining learns from production.

    Each text with feedback (the prediction's input text) and one agreed label becomes one
    example with source "feedback" and the latest feedback time. Idempotent: the examples of a
    previous run are replaced, never doubled. Not added, and reported: texts whose feedback
    disagrees, and texts the training data already holds with another label.
    """
    report = TrainingReport(model, region, disagreeing=[], conflicts=[])
    with sessions() as session, session.begin():
        query = (
            select(Inference.input_text, Feedback.label, Feedback.feedback_time)
            .join(
                Inference,
                (Inference.request_id == Feedback.request_id) & (Inference.item == Feedback.item),
            )
            .where(Feedback.model == model, Feedback.region == region)
        )
        if since is not None:
            query = query.where(Feedback.feedback_time >= to_utc(since))
        labels: dict[str, dict[str, datetime]] = {}
        for text, label, when in session.execute(query):
            report.feedback_rows += 1
            seen = labels.setdefault(text, {})
            seen[label] = max(when, seen.get(label, when))
        report.texts = len(labels)
        session.execute(
            TrainingExample.__table__.delete().where(
                TrainingExample.model == model,
                TrainingExample.region == region,
                TrainingExample.source == TRAINING_SOURCE,
            )
        )
        existing: dict[str, set[str]] = {}
        texts = list(labels)
        for start in range(0, len(texts), 1000):
            chunk = texts[start : start + 1000]
            for text, label in session.execute(
                select(TrainingExample.text, TrainingExample.label).where(
                    TrainingExample.model == model,
                    TrainingExample.region == region,
                    TrainingExample.text.in_(chunk),
                )
            ):
                existing.setdefault(text, set()).add(label)
        now, rows = utcnow(), []
        for text, by_label in labels.items():
            if len(by_label) > 1:
                report.disagreeing.append({"text": text, "labels": sorted(by_label)})
                continue
            ((label, when),) = by_label.items()
            known = existing.get(text, set())
            if label in known:
                report.already_in_training += 1
            elif known:
                report.conflicts.append(
                    {"text": text, "feedback_label": label, "training_labels": sorted(known)}
                )
            else:
                rows.append(
                    {
                        "model": model,
                        "region": region,
                        "text": text,
                        "label": label,
                        "split": None,
                        "example_time": when,
                        "loaded_at": now,
                        "source": TRAINING_SOURCE,
                    }
                )
        if rows:
            session.execute(TrainingExample.__table__.insert(), rows)
        report.added = len(rows)
    return report
