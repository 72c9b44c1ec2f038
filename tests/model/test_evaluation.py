"""Evaluation metrics against hand-computed values, and the report figures."""

import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from dc.evaluation import evaluate, top_k_accuracy
from dc.plots import plot_confusion_matrix, plot_per_class_f1
from tests.conftest import REPO

LABELS = ["greet", "bye", "thanks", "refund", "never_seen"]
# "refund" is predicted once but never true; "never_seen" is neither true nor predicted.
Y_TRUE = [0, 0, 0, 1, 1, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 3]


def test_evaluate_matches_hand_computed_scores():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # absent classes must not warn
        result = evaluate(Y_TRUE, Y_PRED, LABELS)

    # greet: P 2/2, R 2/3, F1 0.8 | bye: P 1/2, R 1/2, F1 0.5 | thanks: P 1/2, R 1/2, F1 0.5
    # refund: P 0/1, R 0/0 -> 0, F1 0, support 0 | never_seen: all 0
    assert result.accuracy == pytest.approx(4 / 7)
    assert result.weighted_f1 == pytest.approx((3 * 0.8 + 2 * 0.5 + 2 * 0.5) / 7)  # 0.628571
    # Macro over the labels seen in y_true or y_pred: never_seen does not count, refund does.
    assert result.macro_f1 == pytest.approx((0.8 + 0.5 + 0.5 + 0.0) / 4)  # 0.45
    assert result.summary() == {
        "accuracy": 0.571429,
        "weighted_f1": 0.628571,
        "macro_f1": 0.45,
        "n": 7,
    }


def test_with_confidences_the_summary_has_the_calibration_error():
    # Correct: 1 1 0 1 0 1 0. Bins of 0.1: .95 and .91 right (gap |1 - .93| = .07, 2 of 7);
    # .85 wrong (.85); .72 right (.28); .65 wrong (.65); .55 right (.45); .15 wrong (.15).
    confidence = [0.95, 0.91, 0.85, 0.72, 0.65, 0.55, 0.15]
    result = evaluate(Y_TRUE, Y_PRED, LABELS, confidence)
    expected = (2 * 0.07 + 0.85 + 0.28 + 0.65 + 0.45 + 0.15) / 7
    assert result.ece == pytest.approx(expected)
    assert result.summary()["ece"] == round(expected, 6)


def test_per_class_has_one_row_per_label_in_label_order():
    per_class = evaluate(Y_TRUE, Y_PRED, LABELS).per_class

    assert list(per_class.columns) == ["label", "precision", "recall", "f1", "support"]
    expected = pd.DataFrame(
        {
            "label": LABELS,
            "precision": [1.0, 0.5, 0.5, 0.0, 0.0],
            "recall": [2 / 3, 0.5, 0.5, 0.0, 0.0],
            "f1": [0.8, 0.5, 0.5, 0.0, 0.0],
            "support": [3, 2, 2, 0, 0],
        }
    )
    pd.testing.assert_frame_equal(per_class, expected, check_dtype=False)
    assert per_class["support"].dtype.kind == "i"


def test_evaluate_rejects_ids_that_are_not_label_indices():
    with pytest.raises(ValueError, match=r"outside 0\.\.4"):
        evaluate([0, 5], [0, 1], LABELS)
    with pytest.raises(ValueError, match="2 items but y_pred has 1"):
        evaluate([0, 1], [0], LABELS)


def test_top_k_accuracy():
    probabilities = np.array(
        [
            [0.6, 0.3, 0.1],  # true 0: rank 1
            [0.5, 0.4, 0.1],  # true 1: rank 2
            [0.5, 0.4, 0.1],  # true 2: rank 3
            [0.2, 0.2, 0.6],  # true 2: rank 1
        ]
    )
    y_true = [0, 1, 2, 2]
    assert top_k_accuracy(y_true, probabilities, 1) == pytest.approx(2 / 4)
    assert top_k_accuracy(y_true, probabilities, 2) == pytest.approx(3 / 4)
    assert top_k_accuracy(y_true, probabilities, 3) == 1.0
    # A class missing from this sample still maps to its column.
    assert top_k_accuracy([0, 0], probabilities[:2], 1) == pytest.approx(1.0)


def synthetic(n_classes: int, n: int = 1500, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = [f"intent_{i:03d}_with_a_fairly_long_descriptive_name" for i in range(n_classes)]
    y_true = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    wrong = rng.random(n) < 0.2
    y_pred = np.where(wrong, (y_true + rng.integers(1, 4, n)) % n_classes, y_true)
    return y_true, y_pred, labels


@pytest.mark.parametrize("n_classes", [5, 150])
def test_plots_write_png_files(n_classes, tmp_path):
    y_true, y_pred, labels = synthetic(n_classes)
    per_class = evaluate(y_true, y_pred, labels).per_class

    matrix = plot_confusion_matrix(
        y_true, y_pred, labels, tmp_path / "reports" / "confusion.png", title="test"
    )
    bars = plot_per_class_f1(per_class, tmp_path / "reports" / "f1.png")

    for path in (matrix, bars):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_per_class_plot_handles_classes_without_test_examples(tmp_path):
    per_class = evaluate(Y_TRUE, Y_PRED, LABELS).per_class
    path = plot_per_class_f1(per_class, tmp_path / "f1.png")
    assert path.stat().st_size > 0


def test_importing_the_modules_does_nothing_global():
    # No pyplot (global figure state, backend selection) and no client on import.
    code = (
        "import sys, dc.evaluation, dc.plots, dc.backup; "
        "assert 'matplotlib.pyplot' not in sys.modules; "
        "import dc.backup as b; assert b._session is None"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
