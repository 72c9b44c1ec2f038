"""The statistics of the production reports, on plain counts and label lists.

- Population stability index (PSI) of a label distribution against a reference (the served
  version's training labels): ``sum((p - q) * ln(p / q))`` over the reference's classes, with
  proportions floored at `PSI_FLOOR` so that a class absent on one side counts as rare, not
  infinite. Read as: < 0.1 stable, 0.1-0.25 a moderate shift, > 0.25 a large one.
- Pearson's chi-square goodness-of-fit of the served counts against the counts the reference's
  proportions expect (scipy), over the reference's classes.
- Drift is flagged when both say so: PSI at or above `PSI_DRIFT` (the size of the shift) and the
  chi-square p-value below `DRIFT_ALPHA` (that it is not chance). On the large windows of a
  production log, chi-square alone flags shifts too small to matter; PSI alone flags the noise
  of a window with few predictions.
- Expected calibration error (ECE): the confidence range [0, 1] cut into `ECE_BINS` equal bins,
  ``sum(n_bin / n * |accuracy_bin - mean_confidence_bin|)``.
- Classification figures from scikit-learn: accuracy, weighted F1 (the headline), macro F1,
  per-class precision/recall/F1/support, and the most frequent confusions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

PSI_FLOOR = 1e-4
PSI_DRIFT = 0.2
DRIFT_ALPHA = 0.01
ECE_BINS = 10
TOP_CONFUSIONS = 10


def proportions(counts: Mapping[str, float], classes: Sequence[str]) -> np.ndarray:
    """The share of each of `classes` in `counts` (missing classes count 0), in class order."""
    values = np.array([float(counts.get(label, 0)) for label in classes])
    total = values.sum()
    return values / total if total > 0 else values


def psi(observed: Mapping[str, float], reference: Mapping[str, float]) -> float | None:
    """Population stability index of `observed` counts against `reference` counts, over the
    reference's classes (see the module docstring); None when either side is empty."""
    classes = sorted(reference)
    p = proportions(observed, classes)
    q = proportions(reference, classes)
    if p.sum() == 0 or q.sum() == 0:
        return None
    p, q = np.maximum(p, PSI_FLOOR), np.maximum(q, PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


def chi_square(
    observed: Mapping[str, float], reference: Mapping[str, float]
) -> dict[str, float] | None:
    """Pearson's chi-square test of `observed` counts against the counts that `reference`'s
    proportions expect, over the reference's classes with a non-zero reference count.

    Returns:
        {"statistic", "p_value", "dof"}, or None with fewer than two such classes or no
        observation among them.
    """
    from scipy.stats import chisquare

    classes = sorted(label for label, n in reference.items() if n > 0)
    counts = np.array([float(observed.get(label, 0)) for label in classes])
    if len(classes) < 2 or counts.sum() == 0:
        return None
    expected = proportions(reference, classes) * counts.sum()
    result = chisquare(counts, expected)
    return {
        "statistic": float(result.statistic),
        "p_value": float(result.pvalue),
        "dof": len(classes) - 1,
    }


def drifted(psi_value: float | None, test: Mapping[str, float] | None) -> bool:
    """Whether a shift is both large (PSI) and significant (chi-square): the module's rule."""
    return (
        psi_value is not None
        and test is not None
        and psi_value >= PSI_DRIFT
        and test["p_value"] < DRIFT_ALPHA
    )


def expected_calibration_error(
    confidence: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> float | None:
    """ECE over `bins` equal confidence bins (the last includes 1.0); None without samples."""
    conf = np.asarray(confidence, dtype=float)
    hit = np.asarray(correct, dtype=bool)
    index = np.minimum((np.clip(conf, 0.0, 1.0) * bins).astype(int), bins - 1)
    sums = [
        (b, ok, int(mask.sum()), float(conf[mask].sum()))
        for b in range(bins)
        for ok in (False, True)
        if (mask := (index == b) & (hit == ok)).any()
    ]
    return calibration_error_of_bins(sums)


def calibration_error_of_bins(bins: Sequence[tuple[int, bool, int, float]]) -> float | None:
    """ECE from binned sums, as the database gives them (`dc.queries.reports.calibration_bins`):
    (bin, right, count, sum of confidence) rows; equal to `expected_calibration_error` over the
    same predictions. None without any."""
    count: dict[int, int] = {}
    right: dict[int, int] = {}
    confidence: dict[int, float] = {}
    for b, ok, n, total in bins:
        count[b] = count.get(b, 0) + n
        right[b] = right.get(b, 0) + (n if ok else 0)
        confidence[b] = confidence.get(b, 0.0) + total
    everything = sum(count.values())
    if everything == 0:
        return None
    return float(
        sum(
            count[b] / everything * abs(right[b] / count[b] - confidence[b] / count[b])
            for b in count
        )
    )


def classification(counts: Mapping[tuple[str, str], int]) -> dict[str, Any] | None:
    """Accuracy, weighted and macro F1, per-class figures and the top confusions of labelled
    predictions given as {(true label, served label): count}; None without any.

    The classes are those either side names: a served label the truth never uses (a fallback
    label, say) counts as a class with no support. scikit-learn computes the figures, each
    distinct pair weighted by its count: the same as over the predictions one by one.
    """
    from sklearn.metrics import accuracy_score, precision_recall_fscore_support

    if not (columns := _columns(counts)):
        return None
    true, predicted, weight = columns
    labels = sorted(set(true) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        true, predicted, labels=labels, zero_division=0, sample_weight=weight
    )
    confusions = sorted(
        ((t, p, n) for (t, p), n in counts.items() if t != p and n > 0),
        key=lambda c: (-c[2], c[:2]),
    )
    return {
        "n": int(weight.sum()),
        "accuracy": float(accuracy_score(true, predicted, sample_weight=weight)),
        "weighted_f1": _f1(true, predicted, labels, weight, "weighted"),
        "macro_f1": _f1(true, predicted, labels, weight, "macro"),
        "per_class": [
            {
                "label": label,
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "support": round(float(support[k])),
            }
            for k, label in enumerate(labels)
        ],
        "confusions": [
            {"true": t, "predicted": p, "count": n} for t, p, n in confusions[:TOP_CONFUSIONS]
        ],
    }


def weighted_f1(counts: Mapping[tuple[str, str], int]) -> float | None:
    """Weighted F1 alone of {(true, served): count} (the figure over time); None without any."""
    if not (columns := _columns(counts)):
        return None
    true, predicted, weight = columns
    return _f1(true, predicted, sorted(set(true) | set(predicted)), weight, "weighted")


def _columns(counts: Mapping[tuple[str, str], int]) -> tuple[list, list, np.ndarray] | None:
    """{(true, served): count} as scikit-learn's inputs: true labels, served labels and each
    distinct pair's count as its sample weight (pairs in sorted order); None without any."""
    pairs = [(pair, n) for pair, n in sorted(counts.items()) if n > 0]
    if not pairs:
        return None
    true = [t for (t, _), _ in pairs]
    predicted = [p for (_, p), _ in pairs]
    return true, predicted, np.array([n for _, n in pairs], dtype=float)


def _f1(true, predicted, labels, weight, average: str) -> float:
    from sklearn.metrics import f1_score

    return float(
        f1_score(
            true, predicted, labels=labels, average=average, zero_division=0, sample_weight=weight
        )
    )
