"""Routing: every proposal ends accepted, rejected or needs_review; nothing is silently dropped.

A proposal the dataset cannot hold (see ``labeler.export.dataset.writable_boxes``) is rejected
whatever its scores, so every accepted box is a box in the export.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from labeler.core.detections import box_iou
from labeler.core.exceptions import InputError

__all__ = [
    "STUDENT_DISAGREES",
    "STUDENT_MATCH_IOU",
    "RouteDecision",
    "RouteThresholds",
    "Status",
    "route",
    "student_disagreement",
]

# The reason (a prefix: the rest says which way) of proposals the deployed student and the
# teacher disagree on: they go to review whatever the verifier said.
STUDENT_DISAGREES = "student_disagrees"
# A student box and a proposal of the same class are the same object from this IoU (COCO's 0.5).
STUDENT_MATCH_IOU = 0.5


class Status(StrEnum):
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    NEEDS_REVIEW = "needs_review"


@dataclass(frozen=True)
class RouteThresholds:
    """``accept``/``reject`` apply to the verifier's yes-probability; ``review_below_score`` sends
    proposals whose detector score is lower to review even when the verifier (or no verifier)
    agrees."""

    accept: float = 0.7
    reject: float = 0.3
    review_below_score: float = 0.0

    def __post_init__(self) -> None:
        options = {
            "--accept-threshold": self.accept,
            "--reject-threshold": self.reject,
            "--review-below-score": self.review_below_score,
        }
        for option, value in options.items():
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{option} must be within [0, 1], got {value}")
        if self.reject > self.accept:
            raise InputError(
                f"--reject-threshold ({self.reject}) must not be above "
                f"--accept-threshold ({self.accept})"
            )


@dataclass(frozen=True)
class RouteDecision:
    status: Status
    reason: str


def route(
    *,
    detector_score: float,
    verified: bool,
    yes_prob: float | None = None,
    error: str | None = None,
    unwritable: str | None = None,
    thresholds: RouteThresholds,
) -> RouteDecision:
    """Decide one proposal's status from stored scores; pure, so re-routing needs no model.

    ``verified`` is False when the class (or the whole run) skips verification; then ``yes_prob``
    and ``error`` are ignored. ``unwritable`` says why the exporter could not write the box (None
    when it can); such a box is rejected with that reason, whatever its scores and thresholds.
    """
    if unwritable is not None:
        return RouteDecision(Status.REJECTED, unwritable)
    low_score = detector_score < thresholds.review_below_score
    if not verified:
        if low_score:
            return RouteDecision(Status.NEEDS_REVIEW, "detector score below review threshold")
        return RouteDecision(Status.ACCEPTED, "detector only")
    if error is not None:
        return RouteDecision(Status.NEEDS_REVIEW, f"verifier error: {error}")
    if yes_prob is None:
        return RouteDecision(Status.NEEDS_REVIEW, "verifier answer could not be parsed")
    if yes_prob <= thresholds.reject:
        return RouteDecision(Status.REJECTED, f"verifier said no (p_yes={yes_prob:.3f})")
    if yes_prob >= thresholds.accept:
        if low_score:
            return RouteDecision(Status.NEEDS_REVIEW, "detector score below review threshold")
        return RouteDecision(Status.ACCEPTED, f"verifier said yes (p_yes={yes_prob:.3f})")
    return RouteDecision(Status.NEEDS_REVIEW, f"verifier uncertain (p_yes={yes_prob:.3f})")


def student_disagreement(
    *,
    class_name: str,
    xyxy: Sequence[float],
    decision: RouteDecision,
    student: Sequence[tuple[str, Sequence[float]]],
    unwritable: str | None = None,
    iou: float = STUDENT_MATCH_IOU,
) -> RouteDecision:
    """``decision`` unless the student that ran on the image disagrees with it: it has no box of
    this class over an accepted proposal (it missed what the teacher accepted), or it has one over
    a rejected proposal (it found what the teacher rejected). Then the proposal goes to review
    with reason ``student_disagrees``. Proposals already in review keep their reason; a box the
    dataset cannot hold (``unwritable``) stays rejected: no reviewer could accept it as it is."""
    if decision.status is Status.NEEDS_REVIEW or unwritable is not None:
        return decision
    found = any(name == class_name and box_iou(xyxy, box) >= iou for name, box in student)
    if decision.status is Status.ACCEPTED and not found:
        why = f"{STUDENT_DISAGREES}: the student missed this {class_name} (teacher: accepted)"
    elif decision.status is Status.REJECTED and found:
        why = f"{STUDENT_DISAGREES}: the student found this {class_name} (teacher: rejected)"
    else:
        return decision
    return RouteDecision(Status.NEEDS_REVIEW, why)
