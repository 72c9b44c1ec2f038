"""What a trained version knew, read from its files: the reference a production report compares
the live figures with.

- the training distribution: the label counts of its `processed/train.csv`;
- the training phrases (the same file), to count live phrases never seen in training;
- its test-set figures: accuracy, weighted and macro F1 (and ECE where recorded) from
  `manifest.json`, per-class F1 from `models/<architecture>/reports/test_report.csv`;
- its fallback rule (`[serving]` of the config it was trained with: label and threshold).

Versions never change once written, so a read reference is kept (a few, least recently used).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from dc.config import Settings
from persistence import registry

TEST_FIGURES = ("accuracy", "weighted_f1", "macro_f1", "ece", "n")


@dataclass(frozen=True)
class VersionReference:
    """One version's training distribution, training phrases and test-set figures."""

    version: str
    training_counts: dict[str, int]
    training_texts: frozenset[str] = field(repr=False)
    test: dict[str, float | None]
    test_f1: dict[str, float]
    fallback_label: str | None = None
    # The fallback rule's threshold (0: the rule is off).
    min_probability: float = 0.0


# version -> its reference, or None when its files cannot be read here.
ReferenceLookup = Callable[[str], "VersionReference | None"]


def read_reference(folder: Path) -> VersionReference:
    """The reference of the version stored in `folder`.

    Raises:
        OSError, ValueError, KeyError: the folder is not a complete version.
    """
    return _read_reference(str(Path(folder).resolve()))


@lru_cache(maxsize=16)
def _read_reference(folder: str) -> VersionReference:
    root = Path(folder)
    manifest = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    counts: Counter[str] = Counter()
    texts: set[str] = set()
    with open(root / "processed" / "train.csv", newline="", encoding="utf-8") as file:
        for row in csv.DictReader(file):
            counts[row["label"]] += 1
            texts.add(row["text"])
    test_f1: dict[str, float] = {}
    report = root / "models" / manifest["architecture"] / "reports" / "test_report.csv"
    if report.is_file():
        with open(report, newline="", encoding="utf-8") as file:
            test_f1 = {row["label"]: float(row["f1"]) for row in csv.DictReader(file)}
    test = manifest.get("metrics", {}).get("test", {})
    serving: dict[str, Any] = manifest.get("config", {}).get("serving", {}) or {}
    threshold = float(serving.get("min_probability") or 0.0)
    rule_active = bool(serving.get("fallback_label")) and threshold > 0
    return VersionReference(
        version=manifest["version"],
        training_counts=dict(counts),
        training_texts=frozenset(texts),
        test={name: test.get(name) for name in TEST_FIGURES},
        test_f1=test_f1,
        fallback_label=serving["fallback_label"] if rule_active else None,
        min_probability=threshold if rule_active else 0.0,
    )


def registry_references(
    settings: Settings, sessions: sessionmaker[Session], model: str, region: str
) -> ReferenceLookup:
    """A `ReferenceLookup` for the versions of `model` in `region`: each version's folder comes
    from its registry row (restored from the S3 backup when it is not on this machine, as
    serving does); None where the version is unknown or its files cannot be had. A report asks
    for a version several times: each is looked up once."""
    from dc.serve.state import row_facts
    from dc.serve.version_files import version_folder

    found: dict[str, VersionReference | None] = {}

    def lookup(version: str) -> VersionReference | None:
        if version not in found:
            with sessions() as session:
                row = registry.find_version(session, model, region, version)
                facts = None if row is None else row_facts(row)
            try:
                found[version] = (
                    None if facts is None else read_reference(version_folder(settings, facts))
                )
            except Exception:  # missing, partial or unreadable files: the report says so
                found[version] = None
        return found[version]

    return lookup


def served_version(sessions: sessionmaker[Session], model: str, region: str) -> str | None:
    """The promoted version of `model` in `region`, if any."""
    with sessions() as session:
        row = registry.promoted_version(session, model, region)
        return None if row is None else row.version
