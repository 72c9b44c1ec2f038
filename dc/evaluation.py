"""Evaluation of a classification head: accuracy, weighted and macro F1, per-class scores, top-k.

Weighted F1 is the headline metric (promotion compares it): with 10 to 200 intents of very
different sizes it tracks what users see, while macro F1 shows whether small intents are served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from dc.reports.stats import expected_calibration_error

PER_CLASS_COLUMNS = ["label", "precision", "recall", "f1", "support"]


# eq=False: a DataFrame field makes generated __eq__/__hash__ ambiguous or failing, and two
# evaluations are compared through summary() anyway.
@dataclass(frozen=True, eq=False)
class Evaluation:
    """The scores of one set of predictions against the truth."""

    accuracy: float
    weighted_f1: float
    macro_f1: float
    per_class: pd.DataFrame
    n: int
    # Expected calibration error of the top probability (`dc.reports.stats`), when the
    # probabilities were given: the production reports compare live calibration with it.
    ece: float | None = None

    def summary(self) -> dict:
        """The headline numbers as plain JSON-ready values (floats rounded to 6 places)."""
        summary = {
            "accuracy": round(float(self.accuracy), 6),
            "weighted_f1": round(float(self.weighted_f1), 6),
            "macro_f1": round(float(self.macro_f1), 6),
            "n": int(self.n),
        }
        if self.ece is not None:
            summary["ece"] = round(float(self.ece), 6)
        return summary


def _class_ids(values, n_labels: int, name: str) -> np.ndarray:
    ids = np.asarray(values)
    if ids.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= n_labels):
        raise ValueError(
            f"{name} holds class ids outside 0..{n_labels - 1} (min {ids.min()}, max {ids.max()})"
        )
    return ids.astype(np.int64, copy=False)


def evaluate(y_true, y_pred, labels: Sequence[str], confidence=None) -> Evaluation:
    """Score predicted class ids against true ones.

    Args:
        y_true: true class ids, indices into `labels`.
        y_pred: predicted class ids, same length.
        labels: every class name, in class-id order.
        confidence: optionally, the probability of each predicted class: gives `ece`, the
            expected calibration error (10 equal bins).

    Returns:
        An `Evaluation`. `per_class` has one row per label in `labels` order, including labels
        absent from the data (support 0, scores 0, without warnings). `macro_f1` averages over the
        labels that occur in `y_true` or `y_pred` (scikit-learn's own default), so a class with
        no test examples that is never predicted does not drag it down, while one that is
        wrongly predicted counts with F1 0. `weighted_f1` weights by support, so absent classes
        never count.

    Raises:
        ValueError: lengths differ, there is nothing to score, or an id is not a label index.
    """
    labels = list(labels)
    if not labels:
        raise ValueError("labels is empty")
    y_true = _class_ids(y_true, len(labels), "y_true")
    y_pred = _class_ids(y_pred, len(labels), "y_pred")
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("nothing to evaluate: y_true is empty")

    all_ids = np.arange(len(labels))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=all_ids, zero_division=0
    )
    per_class = pd.DataFrame(
        {
            "label": labels,
            "precision": precision.astype(float),
            "recall": recall.astype(float),
            "f1": f1.astype(float),
            "support": support.astype(int),
        },
        columns=PER_CLASS_COLUMNS,
    )
    return Evaluation(
        accuracy=float(accuracy_score(y_true, y_pred)),
        weighted_f1=float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        macro_f1=float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        per_class=per_class,
        n=len(y_true),
        ece=None
        if confidence is None
        else expected_calibration_error(confidence, np.asarray(y_pred) == np.asarray(y_true)),
    )


def top_k_accuracy(y_true, probabilities, k: int) -> float:
    """Share of examples whose true class is among the `k` highest-scored classes.

    Args:
        y_true: true class ids, indices into the columns of `probabilities`.
        probabilities: scores of shape (n_examples, n_classes), e.g. a head's softmax output.
        k: how many of the best-scored classes count as a hit; k >= n_classes gives 1.0.

    Returns:
        The top-k accuracy in [0, 1].
    """
    scores = np.asarray(probabilities, dtype=float)
    if scores.ndim != 2:
        raise ValueError(f"probabilities must be (n_examples, n_classes), got {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    n_classes = scores.shape[1]
    y_true = _class_ids(y_true, n_classes, "y_true")
    if len(y_true) != scores.shape[0]:
        raise ValueError(f"y_true has {len(y_true)} items but probabilities {scores.shape[0]} rows")
    if len(y_true) == 0:
        raise ValueError("nothing to evaluate: y_true is empty")
    if k >= n_classes:
        return 1.0
    if n_classes == 2:
        # scikit-learn reads a two-column score matrix as a binary problem and wants one column;
        # with k < 2 only top-1 is left, which is plain accuracy.
        return float(np.mean(scores.argmax(axis=1) == y_true))
    # labels= so that classes missing from this sample still map to their columns.
    return float(top_k_accuracy_score(y_true, scores, k=k, labels=np.arange(n_classes)))
