"""Temperature scaling: calibrated probabilities from a head's (or an ensemble's) softmax.

A head trained with label smoothing is under-confident, a seed ensemble averaged in probability
more so, and the `[serving]` fallback rule reads the top probability: the rule is only as good as
that probability is honest. Temperature scaling (Guo et al. 2017, "On Calibration of Modern
Neural Networks") divides every member's logits by one scalar T fitted to minimise the
negative log-likelihood on the validation split. It never changes a member's ranking of the
classes; `dc.keras_head.build_ensemble` folds 1/T into the output layers, so the saved head
gives the calibrated probabilities itself.

Only softmax outputs are needed: log(p) is the logits up to a per-row constant, which softmax
ignores, so softmax(log(p) / T) = softmax(z / T).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# The search interval for T: far wider than any head here needs (0.3-1.5 seen on this project's
# heads), and bounded so that a degenerate validation split cannot produce 0 or infinity.
MIN_TEMPERATURE = 0.05
MAX_TEMPERATURE = 20.0
_TINY = 1e-12


def scale_probabilities(members: Sequence[np.ndarray], temperature: float) -> np.ndarray:
    """The ensemble's probabilities with every member's logits divided by `temperature`.

    Args:
        members: each member's softmax probabilities, [n, classes] each.
        temperature: T > 0 (1: unchanged).

    Returns:
        float64 [n, classes]: the mean over members of softmax(log(p_k) / T).
    """
    total = None
    for probabilities in members:
        logits = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _TINY, None))
        logits /= temperature
        logits -= logits.max(axis=1, keepdims=True)
        scaled = np.exp(logits)
        scaled /= scaled.sum(axis=1, keepdims=True)
        total = scaled if total is None else total + scaled
    if total is None:
        raise ValueError("no member probabilities to scale")
    return total / len(members)


def negative_log_likelihood(probabilities: np.ndarray, y_true: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class ids."""
    picked = np.asarray(probabilities)[np.arange(len(y_true)), np.asarray(y_true)]
    return float(-np.log(np.clip(picked, _TINY, None)).mean())


def fit_temperature(members: Sequence[np.ndarray], y_true: np.ndarray) -> float:
    """The temperature minimising the ensemble's validation NLL (bounded scalar search on log T).

    Args:
        members: each member's softmax probabilities on the validation split.
        y_true: the validation split's class ids.

    Returns:
        T in [MIN_TEMPERATURE, MAX_TEMPERATURE], rounded to 4 decimals (it is recorded in the
        manifest, and the same data gives the same T).
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true)
    if len(y) == 0:
        raise ValueError("temperature scaling needs validation rows")
    result = minimize_scalar(
        lambda log_t: negative_log_likelihood(scale_probabilities(members, np.exp(log_t)), y),
        bounds=(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)),
        method="bounded",
        options={"xatol": 1e-4},
    )
    return round(float(np.exp(result.x)), 4)
