"""Raw extract -> processed training data: clean texts, resolve duplicates, check and split classes.

The raw extract is a DataFrame with columns `text`, `label`, optionally `split` ("train",
"validation", "test"; blank means "train") and `example_time`. `prepare` runs the steps below
in order and returns a `PreparedData` whose `report` counts everything dropped or kept:

1. `normalise_texts`: collapse whitespace runs to one space and strip; drop texts left empty.
2. `exclude_labels`: drop the configured labels (e.g. CLINC150's `oos` for its in-scope protocol).
3. `drop_conflicts`: a text carrying two or more labels is dropped from training and validation
   (there is no right answer to learn); the texts are listed in the report. Then exact
   duplicates (same text and label) are dropped, keeping the copy in the test split first, then
   validation, then train, so a test phrase never leaks into training. The test split is kept
   exactly as given, so that scores compare with published ones on the same test set.
4. `check_class_counts`: every class needs `min_examples_per_class` rows outside the test
   split; otherwise `InvalidInput` names the classes, unless `drop_rare_classes` drops them.
5. Labels are encoded with a `LabelEncoder` (sorted class names).
6. `split_data`: rows tagged "test" are the test set as given, rows tagged "validation" the
   validation set. Without validation rows, a stratified `validation_fraction` of each class of
   the training rows is held out (seeded). Without test rows, a stratified test set of the same
   fraction is held out first (so 0.1 gives 80/10/10), and a model is always scored on rows it
   never saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.preprocessing import LabelEncoder

from dc.errors import InvalidInput
from dc.model_config import DataConfig

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
# When the same text+label occurs in several splits, the copy in the first split listed is kept.
_KEEP_ORDER = {TEST: 0, VALIDATION: 1, TRAIN: 2}
_WHITESPACE = r"\s+"


@dataclass
class PreparedData:
    """Processed data ready to embed and train on.

    Attributes:
        train, validation, test: DataFrames with `text`, `label`, `label_id` (and
            `example_time` when the extract had it), index reset.
        label_encoder: fitted on the kept classes; `label_id` is its encoding.
        report: counts of every row dropped and kept, per step and split, and the conflicting
            texts (JSON-ready).
    """

    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    label_encoder: LabelEncoder
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """Class names in encoding order (index = label id)."""
        return [str(label) for label in self.label_encoder.classes_]


def validate_extract(raw: pd.DataFrame) -> pd.DataFrame:
    """Check the extract's columns and return a copy with `text`, `label` and `split` as strings.

    Missing or blank splits become "train"; "val" and "valid" are read as "validation".

    Raises:
        InvalidInput: `text` or `label` is missing, a label is blank, or a split is unknown.
    """
    missing = {"text", "label"} - set(raw.columns)
    if missing:
        raise InvalidInput(f"the raw extract lacks the column(s) {sorted(missing)}")
    data = raw.copy()
    data["text"] = data["text"].fillna("").astype(str)
    data["label"] = data["label"].fillna("").astype(str).str.strip()
    if (data["label"] == "").any():
        raise InvalidInput(f"{int((data['label'] == '').sum())} row(s) have no label")
    if "split" not in data.columns:
        data["split"] = TRAIN
    split = data["split"].fillna("").astype(str).str.strip().str.lower()
    split = split.replace({"": TRAIN, "val": VALIDATION, "valid": VALIDATION})
    unknown = sorted(set(split) - set(SPLITS))
    if unknown:
        raise InvalidInput(f"unknown split value(s) {unknown}; expected one of {list(SPLITS)}")
    data["split"] = split
    return data.reset_index(drop=True)


def normalise_texts(texts: pd.Series) -> pd.Series:
    """Collapse every run of whitespace (spaces, tabs, newlines) to one space and strip the ends."""
    return texts.astype(str).str.replace(_WHITESPACE, " ", regex=True).str.strip()


def drop_empty_texts(data: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop rows whose (normalised) text is empty; return the rest and how many were dropped."""
    empty = data["text"] == ""
    return data[~empty].reset_index(drop=True), int(empty.sum())


def exclude_labels(data: pd.DataFrame, labels: Iterable[str]) -> tuple[pd.DataFrame, dict]:
    """Drop the rows of `labels`; return the rest and the rows dropped per label."""
    labels = set(labels)
    excluded = data["label"].isin(labels)
    counts = data.loc[excluded, "label"].value_counts().sort_index()
    return data[~excluded].reset_index(drop=True), {str(k): int(v) for k, v in counts.items()}


def drop_conflicts(data: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Drop the training and validation rows of a text that carries more than one label.

    Test rows are kept as given (the test set is the benchmark, and scores must stay comparable
    with published ones); a conflicting text's test rows are counted in the report.

    Returns:
        The remaining rows, and one entry per conflicting text: `text`, its sorted `labels`,
        how many `rows` were dropped and how many were `kept_in_test`.
    """
    label_counts = data.groupby("text")["label"].nunique()
    conflicting = data["text"].isin(label_counts.index[label_counts > 1])
    in_test = _in_test(data)
    conflicts = [
        {
            "text": str(text),
            "labels": sorted(group["label"].unique()),
            "rows": int((~in_test[group.index]).sum()),
            "kept_in_test": int(in_test[group.index].sum()),
        }
        for text, group in data[conflicting].groupby("text", sort=True)
    ]
    return data[~conflicting | in_test].reset_index(drop=True), conflicts


def drop_duplicates(data: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop repeated (text, label) rows, keeping the test copy first, then validation, then train.

    Test rows are never dropped, not even repeats within the test split: it is kept as given.

    Returns:
        The remaining rows (in their original order) and the rows dropped per split.
    """
    order = data["split"].map(_KEEP_ORDER)
    ranked = data.assign(_order=order).sort_values("_order", kind="stable")
    duplicated = ranked.duplicated(["text", "label"], keep="first") & (ranked["split"] != TEST)
    dropped = ranked.loc[duplicated, "split"].value_counts()
    kept = ranked[~duplicated].drop(columns="_order").sort_index()
    return kept.reset_index(drop=True), {s: int(dropped.get(s, 0)) for s in SPLITS}


def _in_test(data: pd.DataFrame) -> pd.Series:
    if "split" not in data:
        return pd.Series(False, index=data.index)
    return data["split"] == TEST


RARE_NAMED = 5  # classes the "too few examples" error names (the ones with the fewest)


def check_class_counts(
    data: pd.DataFrame, min_examples: int, drop_rare: bool = False
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Require `min_examples` rows per class outside the test split (the rows it can learn from).

    A class seen only in the test split counts 0.

    Returns:
        The data (without the rare classes when `drop_rare`), and the rare classes dropped with
        their counts (empty unless `drop_rare`).

    Raises:
        InvalidInput: some class has fewer rows and `drop_rare` is false; the message is one
            line: how many classes, and the `RARE_NAMED` with the fewest rows, with their counts.
    """
    learnable = data.loc[data["split"] != TEST, "label"].value_counts()
    counts = {label: int(learnable.get(label, 0)) for label in sorted(data["label"].unique())}
    rare = {label: n for label, n in counts.items() if n < min_examples}
    if not rare:
        return data, {}
    if not drop_rare:
        fewest = sorted(rare.items(), key=lambda item: (item[1], item[0]))
        listed = ", ".join(f"{label!r} ({n})" for label, n in fewest[:RARE_NAMED])
        more = f" and {len(rare) - RARE_NAMED} more" if len(rare) > RARE_NAMED else ""
        raise InvalidInput(
            f"{len(rare)} of {len(counts)} classes have fewer than {min_examples} training "
            f"examples, e.g. {listed}{more}. Add examples, lower [data] "
            "min_examples_per_class, or set drop_rare_classes = true."
        )
    return data[~data["label"].isin(rare)].reset_index(drop=True), rare


def encode_labels(labels: Iterable[str]) -> LabelEncoder:
    """Fit a `LabelEncoder` on the class names (ids follow the sorted names)."""
    return LabelEncoder().fit(sorted(set(labels)))


def stratified_holdout(
    data: pd.DataFrame, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out round(`fraction` x class size) rows of every class, drawn with `seed`.

    At least one row of each class stays in the kept part, so a class with one row is never
    lost to training. Classes are visited in sorted order, so the result depends only on the
    data and the seed.

    Returns:
        (kept, held_out), each in the original row order.
    """
    rng = np.random.default_rng(seed)
    held: list[np.ndarray] = []
    for _, index in sorted(data.groupby("label").indices.items()):
        size = min(int(np.floor(len(index) * fraction + 0.5)), len(index) - 1)
        if size > 0:
            held.append(rng.choice(index, size=size, replace=False))
    held_index = np.sort(np.concatenate(held)) if held else np.array([], dtype=int)
    is_held = np.zeros(len(data), dtype=bool)
    is_held[held_index] = True
    return data[~is_held].reset_index(drop=True), data[is_held].reset_index(drop=True)


def split_data(
    data: pd.DataFrame, validation_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """Split into train, validation and test, honouring the splits the rows already carry.

    Rows tagged "test" are the test set as given and rows tagged "validation" the validation
    set. Missing sets are held out of the training rows with `stratified_holdout`: the test set
    first (seed), then the validation set (seed + 1), each `validation_fraction` of the
    training rows of every class (so 0.1 without either split gives 80/10/10).

    Returns:
        (train, validation, test, origin) where origin says per set "given" or "held out".
    """
    test = data[data["split"] == TEST]
    validation = data[data["split"] == VALIDATION]
    train = data[data["split"] == TRAIN].reset_index(drop=True)
    origin = {TRAIN: "given", VALIDATION: "given", TEST: "given"}
    if test.empty:
        train, test = stratified_holdout(train, validation_fraction, seed)
        origin[TEST] = "held out"
    if validation.empty:
        # A share of all the rows, not of what the test hold-out left: 80/10/10 at 0.1.
        share = validation_fraction
        if origin[TEST] == "held out":
            share = validation_fraction / (1 - validation_fraction)
        train, validation = stratified_holdout(train, share, seed + 1)
        origin[VALIDATION] = "held out"
    sets = [frame.drop(columns="split").reset_index(drop=True) for frame in (train, validation)]
    return sets[0], sets[1], test.drop(columns="split").reset_index(drop=True), origin


def prepare(raw: pd.DataFrame, config: DataConfig, seed: int) -> PreparedData:
    """Turn a raw extract into train/validation/test sets with encoded labels and a report.

    Args:
        raw: columns `text`, `label`, optional `split` and `example_time`.
        config: the model config's `[data]` section.
        seed: seeds the held-out splits (the `[training] seed`).

    Raises:
        InvalidInput: bad columns or splits, a class under `min_examples_per_class` (unless
            `drop_rare_classes`), fewer than two classes left, or an empty training set.
    """
    data = validate_extract(raw)
    report: dict[str, Any] = {"raw_rows": len(data), "raw_rows_per_split": _per_split(data)}
    data["text"] = normalise_texts(data["text"])
    data, report["empty_texts_dropped"] = drop_empty_texts(data)
    data, report["excluded_labels_dropped"] = exclude_labels(data, config.exclude_labels)
    data, conflicts = drop_conflicts(data)
    report["conflicting_texts"] = conflicts
    report["conflicting_rows_dropped"] = sum(item["rows"] for item in conflicts)
    data, report["duplicates_dropped"] = drop_duplicates(data)
    data, report["rare_classes_dropped"] = check_class_counts(
        data, config.min_examples_per_class, config.drop_rare_classes
    )
    classes = sorted(data["label"].unique())
    if len(classes) < 2:
        raise InvalidInput(f"at least two classes are needed to train; found {classes}")

    encoder = encode_labels(classes)
    data["label_id"] = encoder.transform(data["label"])
    columns = ["text", "label", "label_id", "split"]
    columns += ["example_time"] if "example_time" in data.columns else []
    train, validation, test, origin = split_data(data[columns], config.validation_fraction, seed)
    if train.empty or validation.empty or test.empty:
        raise InvalidInput(
            f"too few rows to split: train {len(train)}, validation {len(validation)}, "
            f"test {len(test)}"
        )
    report.update(
        classes=len(classes),
        split_origin=origin,
        rows={TRAIN: len(train), VALIDATION: len(validation), TEST: len(test)},
        class_counts={
            label: {
                name: int((frame["label"] == label).sum())
                for name, frame in ((TRAIN, train), (VALIDATION, validation), (TEST, test))
            }
            for label in classes
        },
    )
    return PreparedData(train, validation, test, encoder, report)


def _per_split(data: pd.DataFrame) -> dict[str, int]:
    counts = data["split"].value_counts()
    return {split: int(counts.get(split, 0)) for split in SPLITS}
