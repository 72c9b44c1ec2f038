"""From class probabilities to predictions: top-k and the `[serving]` fallback rule.

Business rules live here, never in the HTTP layer: `postprocess` turns a head's probabilities
into labelled predictions with their top-k and applies the model's `ServingConfig` (below
`min_probability`, the label becomes `fallback_label`). `choose_threshold` picks that threshold
on held-out data (the validation split, never the test split), and `apply_rule` is the same
rule vectorised, for scoring it over a whole data set.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from cachetools import LRUCache

from dc.model_config import ServingConfig

# A full stable sort beats argpartition (and its few extra NumPy calls) on small inputs: measured
# here, one row of 151 classes sorts in 2.4 us against 13 us; at 2,000 classes, or 32 rows of
# 500, argpartition wins (16 against 23 us; 70 against 435 us) and keeps top-k linear.
FULL_SORT_MAX_CLASSES = 256
FULL_SORT_MAX_SIZE = 1024  # rows x classes
DEFAULT_GRID = tuple(round(0.01 * i, 2) for i in range(0, 96))  # 0.00, 0.01, ..., 0.95


@dataclass(frozen=True, slots=True)
class Prediction:
    """One text's prediction.

    Attributes:
        label: the predicted label (the fallback label when the rule applied).
        probability: the label's probability (for a fallback label that is not one of the
            classes: the top class's probability).
        top_k: (label, probability) of the best classes, best first, as the head scored them
            (the rule does not reorder them).
        fallback: whether the rule replaced the top class.
    """

    label: str
    probability: float
    top_k: list[tuple[str, float]]
    fallback: bool

    def top_k_dicts(self) -> list[dict[str, Any]]:
        """`top_k` as [{label, probability}], best first (the API's and the log's shape)."""
        return [{"label": label, "probability": p} for label, p in self.top_k]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: `label`, `probability`, `top_k` as [{label, probability}], `fallback`."""
        return {
            "label": self.label,
            "probability": self.probability,
            "top_k": self.top_k_dicts(),
            "fallback": self.fallback,
        }


def top_k_indices(probabilities: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the `k` highest scores of each row, best first.

    Ties are broken by the lower class id, so the result never depends on the sort algorithm.

    Args:
        probabilities: [n, classes].
        k: how many; more than `classes` gives all of them.

    Returns:
        int64 [n, min(k, classes)].
    """
    scores = np.asarray(probabilities)
    if scores.ndim != 2:
        raise ValueError(f"probabilities must be [n, classes], got shape {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    classes = scores.shape[1]
    k = min(k, classes)
    if classes <= FULL_SORT_MAX_CLASSES or scores.size <= FULL_SORT_MAX_SIZE or k == classes:
        # A stable sort of the negated scores keeps equal scores in class-id order.
        return np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # the top k, in no order
    values = np.take_along_axis(scores, best, axis=1)
    order = np.lexsort((best, -values), axis=1)  # by score, then class id
    out = np.take_along_axis(best, order, axis=1)
    # argpartition picks arbitrarily among classes tied with the k-th best score: where such a
    # tie crosses the boundary, redo the row with every tied class as a candidate, so the
    # lowest class ids win as in the full sort.
    kth = values.min(axis=1)
    for row in np.flatnonzero((scores >= kth[:, np.newaxis]).sum(axis=1) > k):
        candidates = np.flatnonzero(scores[row] >= kth[row])
        ranked = np.lexsort((candidates, -scores[row, candidates]))
        out[row] = candidates[ranked[:k]]
    return out


def postprocess(
    probabilities: np.ndarray, labels: Sequence[str], k: int, rule: ServingConfig
) -> list[Prediction]:
    """Turn a head's probabilities into predictions with top-k, applying the serving rule.

    Args:
        probabilities: [n, classes], one row per text, columns in `labels` order.
        labels: the class names, in class-id order.
        k: top-k length; `min(k, classes)` entries are returned.
        rule: the model's `[serving]` rule. When a row's top probability is below
            `rule.min_probability`, its label becomes `rule.fallback_label` (and its
            probability that label's, when it is a class; else the top probability).

    Returns:
        One `Prediction` per row, in order.

    Raises:
        ValueError: shapes and labels disagree, or k < 1.
    """
    scores = np.asarray(probabilities, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[1] != len(labels):
        raise ValueError(f"probabilities of shape {scores.shape} do not match {len(labels)} labels")
    best = top_k_indices(scores, k)
    best_scores = np.take_along_axis(scores, best, axis=1).tolist()  # Python floats, once
    labels = list(labels)
    fallback_index = _index_of(labels, rule.fallback_label)
    predictions: list[Prediction] = []
    for row, (ids, values) in enumerate(zip(best.tolist(), best_scores, strict=True)):
        top_k = [(labels[i], p) for i, p in zip(ids, values, strict=True)]
        label, probability = top_k[0]
        fallback = rule.active and probability < rule.min_probability
        if fallback:
            label = rule.fallback_label
            if fallback_index is not None:
                probability = float(scores[row, fallback_index])
        predictions.append(Prediction(label, probability, top_k, bool(fallback)))
    return predictions


def apply_rule(probabilities: np.ndarray, labels: Sequence[str], rule: ServingConfig) -> np.ndarray:
    """The predicted class ids of every row under the serving rule (vectorised `postprocess`).

    Raises:
        ValueError: the rule's fallback label is not one of `labels` (its predictions would
            have no class id).
    """
    scores = np.asarray(probabilities)
    predicted = scores.argmax(axis=1)  # argmax takes the first maximum: the lowest class id
    if not rule.active:
        return predicted
    fallback_index = _index_of(list(labels), rule.fallback_label)
    if fallback_index is None:
        raise ValueError(f"fallback label {rule.fallback_label!r} is not one of the classes")
    low = scores.max(axis=1) < rule.min_probability
    return np.where(low, fallback_index, predicted)


@dataclass(frozen=True)
class ThresholdChoice:
    """What `choose_threshold` found.

    Attributes:
        threshold: the chosen `min_probability` (the best objective; the lowest such threshold
            on a tie, i.e. the least intervention).
        accuracy: the objective at that threshold: accuracy, or the accuracy re-weighted to
            `fallback_share` when one was given.
        baseline: the objective without the rule (threshold 0).
        curve: one dict per grid threshold: `threshold`, `objective`, `accuracy`,
            `fallback_recall` (share of the fallback label's rows predicted as it),
            `fallback_precision`, `in_scope_accuracy` (accuracy on the other rows) and
            `fallback_rate` (share of all rows predicted as the fallback label).
        fallback_share: the share the objective assumed (None: the data's own).
    """

    threshold: float
    accuracy: float
    baseline: float
    curve: list[dict[str, float]] = field(repr=False)
    fallback_share: float | None = None

    def at(self, threshold: float) -> dict[str, float]:
        """The curve's row for `threshold` (the nearest grid point)."""
        return min(self.curve, key=lambda point: abs(point["threshold"] - threshold))


def threshold_scores(
    probabilities: np.ndarray, y_true: Sequence[int] | np.ndarray, fallback_index: int, t: float
) -> dict[str, float]:
    """Accuracy, fallback recall/precision, in-scope accuracy and fallback rate at threshold `t`."""
    scores = np.asarray(probabilities)
    y = np.asarray(y_true)
    predicted = np.where(scores.max(axis=1) < t, fallback_index, scores.argmax(axis=1))
    is_fallback, said_fallback = y == fallback_index, predicted == fallback_index
    correct = predicted == y
    return {
        "threshold": float(t),
        "accuracy": float(correct.mean()),
        "fallback_recall": _share(correct & is_fallback, is_fallback),
        "fallback_precision": _share(correct & said_fallback, said_fallback),
        "in_scope_accuracy": _share(correct & ~is_fallback, ~is_fallback),
        "fallback_rate": float(said_fallback.mean()),
    }


def choose_threshold(
    probabilities: np.ndarray,
    y_true: Sequence[int] | Sequence[str] | np.ndarray,
    labels: Sequence[str],
    fallback_label: str,
    grid: Sequence[float] = DEFAULT_GRID,
    *,
    fallback_share: float | None = None,
) -> ThresholdChoice:
    """Choose `min_probability` for a fallback label by accuracy over a grid of thresholds.

    Run it on held-out data the head was not fitted on, and never on the test split the result
    will be reported on (the threshold would be fitted to the test set).

    Accuracy depends on how often the fallback label occurs: the more often, the higher the
    best threshold. When production sees it at another rate than the held-out data (CLINC150's
    validation split has 3% `oos`, its test split 18%), pass that rate as `fallback_share`: the
    objective becomes `share * fallback_recall + (1 - share) * in_scope_accuracy`, the accuracy
    the held-out data would have at that share. Take the rate from production traffic (the
    inference log), never from the test split.

    Args:
        probabilities: [n, classes] from the head, columns in `labels` order.
        y_true: the true class ids (indices into `labels`) or the true labels themselves.
        labels: the class names, in class-id order; must include `fallback_label`.
        fallback_label: the label predicted below the threshold (e.g. "oos").
        grid: the thresholds to try (default 0.00 to 0.95 by 0.01).
        fallback_share: re-weight the objective to this share of fallback rows (0 < s < 1).

    Returns:
        The best threshold, its objective, the objective without the rule and the whole curve.

    Raises:
        ValueError: `fallback_label` is not a class, lengths differ, there is no data, or a
            `fallback_share` is given but the data has no fallback rows or only those.
    """
    labels = list(labels)
    fallback_index = _index_of(labels, fallback_label)
    if fallback_index is None:
        raise ValueError(f"fallback label {fallback_label!r} is not one of the classes")
    scores = np.asarray(probabilities)
    y = _class_ids(y_true, labels)
    if scores.ndim != 2 or scores.shape != (len(y), len(labels)) or len(y) == 0:
        raise ValueError(
            f"probabilities of shape {scores.shape} do not match {len(y)} rows and "
            f"{len(labels)} labels"
        )
    if fallback_share is not None:
        if not 0 < fallback_share < 1:
            raise ValueError(f"fallback_share must be in (0, 1), got {fallback_share}")
        if not 0 < int(np.sum(y == fallback_index)) < len(y):
            raise ValueError("fallback_share needs rows of the fallback label and of others")
    thresholds = sorted({0.0, *(float(t) for t in grid)})
    curve = []
    for t in thresholds:
        point = threshold_scores(scores, y, fallback_index, t)
        objective = point["accuracy"]
        if fallback_share is not None:
            objective = (
                fallback_share * point["fallback_recall"]
                + (1 - fallback_share) * point["in_scope_accuracy"]
            )
        curve.append({"threshold": point.pop("threshold"), "objective": objective, **point})
    best = max(curve, key=lambda point: (round(point["objective"], 12), -point["threshold"]))
    return ThresholdChoice(
        threshold=best["threshold"],
        accuracy=best["objective"],
        baseline=curve[0]["objective"],
        curve=curve,
        fallback_share=fallback_share,
    )


def _class_ids(y_true: Any, labels: list[str]) -> np.ndarray:
    values = np.asarray(y_true)
    if values.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        index = {label: i for i, label in enumerate(labels)}
        unknown = sorted({str(v) for v in values} - index.keys())
        if unknown:
            raise ValueError(f"y_true holds labels that are not classes: {unknown[:5]}")
        return np.array([index[str(v)] for v in values], dtype=np.int64)
    return values.astype(np.int64, copy=False)


def _index_of(labels: list[str], label: str | None) -> int | None:
    if label is None:
        return None
    try:
        return labels.index(label)
    except ValueError:
        return None


def _share(hits: np.ndarray, of: np.ndarray) -> float:
    total = int(of.sum())
    return float(hits.sum() / total) if total else float("nan")


class PredictionCache:
    """A thread-safe LRU of final predictions per (head, text): the answer to a repeated phrase.

    Phrases repeat, so the API keeps what it answered: a hit skips the embedder's cache, the head
    and the postprocessing (about 0.1 ms of the worker's CPU per request; `bench/bench_api.py`).
    The key holds the `Head` object itself (compared by identity): a promotion, a rollback or a
    reload loads a new `Head`, so an answer of another version is never served. An entry keeps
    the top-k it was computed with; a request for a larger k is a miss and recomputes it.
    `maxsize` 0 disables the cache.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 0:
            raise ValueError("cache maxsize must be >= 0")
        self.maxsize = maxsize
        self._lru = LRUCache(maxsize) if maxsize else None
        self._lock = threading.Lock()

    def get(self, head: object, text: str, k: int) -> Prediction | None:
        """The cached prediction of `text` by `head` with its top-k cut to `k`, or None."""
        if self._lru is None:
            return None
        with self._lock:
            found = self._lru.get((head, text))
        if found is None or len(found.top_k) < k:
            return None
        return found if len(found.top_k) == k else replace(found, top_k=found.top_k[:k])

    def put(self, head: object, text: str, prediction: Prediction) -> None:
        """Remember `prediction` for `text` by `head`."""
        if self._lru is not None:
            with self._lock:
                self._lru[(head, text)] = prediction

    def __len__(self) -> int:
        return len(self._lru) if self._lru is not None else 0
