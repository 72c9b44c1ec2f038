"""The promotion rule: when may a newly trained version replace the promoted one?

A candidate is refused when its weighted F1 is below the promoted version's by more than the
tolerance (`DC_PROMOTION_TOLERANCE`, absolute). Within the tolerance it is accepted, so a
retrain on fresher data is not blocked by evaluation noise; equal to the limit is accepted.
Forcing past the rule is the registry's decision (`persistence.registry.promote(force=True)`).
"""

from __future__ import annotations

import math

from dc.errors import PromotionRefused

# Weighted F1 values come out of float arithmetic: 0.9 - 0.005 is 0.8950000000000001, and a
# candidate at exactly 0.895 must not be refused for it.
_EPSILON = 1e-9


def check_promotion(candidate_f1: float, promoted_f1: float | None, tolerance: float) -> None:
    """Raise `PromotionRefused` unless the candidate may replace the promoted version.

    Args:
        candidate_f1: the candidate's weighted F1 on its test split.
        promoted_f1: the promoted version's weighted F1, or None when nothing is promoted yet
            (then any candidate is accepted; so is it when the promoted F1 is NaN).
        tolerance: the largest drop in weighted F1 accepted (absolute, >= 0).

    Raises:
        PromotionRefused: the candidate is worse by more than `tolerance`, or its F1 is not a
            number; the message names both values and the tolerance.
        ValueError: `tolerance` is negative.
    """
    if tolerance < 0:
        raise ValueError(f"tolerance must not be negative, got {tolerance}")
    if candidate_f1 is None or math.isnan(candidate_f1):
        raise PromotionRefused(f"candidate weighted F1 is {candidate_f1}, not a number")
    if promoted_f1 is None or math.isnan(promoted_f1):
        return
    if candidate_f1 < promoted_f1 - tolerance - _EPSILON:
        raise PromotionRefused(
            f"candidate weighted F1 {candidate_f1:.4f} is below the promoted version's "
            f"{promoted_f1:.4f} by {promoted_f1 - candidate_f1:.4f}, more than the tolerance "
            f"{tolerance:.4f}"
        )
