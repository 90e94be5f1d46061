"""Reviewing what the labeler produced: how far its labels can be trusted.

``labeler.review.stats`` holds the statistics (spot-check samples, Wilson intervals, precision
per class and overall, precision against the accept threshold); it is pure, with no I/O.
"""

from __future__ import annotations

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
    "ClassPrecision",
    "LabelForStats",
    "PrecisionSummary",
    "SpotCheck",
    "StratifiedEstimate",
    "ThresholdPoint",
    "checks_needed",
    "next_spot_checks",
    "precision_summary",
    "sample_for_spot_check",
    "spot_check_order",
    "threshold_curve",
    "wilson_interval",
]
