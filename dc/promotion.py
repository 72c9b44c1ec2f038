"""The promotion rule: when may a newly trained version replace the promoted one?

A candidate is refused when its weighted F1 is below the promoted version's by more than the
tolerance (`DC_PROMOTION_TOLERANCE`, absolute). Within the tolerance it is accepted, so a
retrain on fresher data is not blocked by evaluation noise; equal to the limit is accepted.
`promote` applies it inside the registry's locked promotion; `force=True` promotes anyway
(logged as a warning).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from dc.errors import NotFound, PromotionRefused
from persistence import registry
from persistence.errors import RecordNotFound

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from persistence.models import ModelVersion

log = logging.getLogger(__name__)

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


def promote(
    session: Session,
    name: str,
    region: str,
    version: str,
    *,
    tolerance: float,
    force: bool = False,
) -> ModelVersion:
    """Promote `version` of `name`/`region` under the rule, in one transaction.

    Refused when the candidate's ``metrics["weighted_f1"]`` is below the promoted version's by
    more than `tolerance` (`check_promotion`). `force=True` promotes anyway (logged as a
    warning). Promoting the version that is promoted already changes nothing. An archived
    version may be promoted again (a rollback). Two promotions of one model run one after the
    other (`persistence.registry.promotion` locks its versions).

    Args:
        session: a session with no transaction in progress.
        tolerance: the largest accepted drop in weighted F1 (settings: `promotion_tolerance`).
        force: promote even when the rule refuses.

    Returns:
        The promoted version.

    Raises:
        NotFound: no such version.
        PromotionRefused: the rule refuses (the message names both F1 values and the tolerance).
    """
    try:
        with registry.promotion(session, name, region, version) as step:
            current = step.current
            if current is not None and current is not step.candidate:
                try:
                    check_promotion(
                        _weighted_f1(step.candidate), current.metrics.get("weighted_f1"), tolerance
                    )
                except PromotionRefused as refusal:
                    if not force:
                        raise PromotionRefused(
                            f"{region}/{name} {version} not promoted over {current.version}: "
                            f"{refusal}"
                        ) from None
                    log.warning("forced promotion of %s/%s %s: %s", region, name, version, refusal)
    except RecordNotFound as missing:
        raise NotFound(str(missing)) from None
    return step.candidate


def _weighted_f1(row: ModelVersion) -> float:
    value = (row.metrics or {}).get("weighted_f1")
    if value is None:
        raise PromotionRefused(f"version {row.version} has no weighted_f1 metric")
    return float(value)
