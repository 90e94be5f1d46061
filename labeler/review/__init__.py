"""Reviewing what the labeler produced: how far its labels can be trusted.

``labeler.review.stats`` holds the statistics (spot-check samples, Wilson intervals, precision
per class and overall, precision against the accept threshold); it is pure, with no I/O.
``labeler.review.spot_checks`` draws, shows (blind) and answers spot checks stored in a workspace,
and reports the numbers they give.
"""

from __future__ import annotations

from labeler.review.spot_checks import (
    BlindSpotCheck,
    answer_spot_check,
    draw_spot_checks,
    pending_spot_checks,
    spot_check_report,
)
from labeler.review.stats import (
    ClassPrecision,
    LabelForStats,
    PrecisionSummary,
    SpotCheck,
    StratifiedEstimate,
    ThresholdPoint,
    checks_needed,
    next_spot_checks,
    precision_summary,
    sample_for_spot_check,
    spot_check_order,
    threshold_curve,
    wilson_interval,
)

__all__ = [
    "BlindSpotCheck",
    "ClassPrecision",
    "LabelForStats",
    "PrecisionSummary",
    "SpotCheck",
    "StratifiedEstimate",
    "ThresholdPoint",
    "answer_spot_check",
    "checks_needed",
    "draw_spot_checks",
    "next_spot_checks",
    "pending_spot_checks",
    "precision_summary",
    "sample_for_spot_check",
    "spot_check_order",
    "spot_check_report",
    "threshold_curve",
    "wilson_interval",
]
