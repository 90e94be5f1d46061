from __future__ import annotations

import pytest

from labeler.core.exceptions import InputError
from labeler.route import RouteThresholds, Status, route

DEFAULT = RouteThresholds(accept=0.7, reject=0.3)


@pytest.mark.parametrize(
    ("kwargs", "status", "reason_part"),
    [
        ({"verified": False}, Status.ACCEPTED, "detector only"),
        ({"verified": True, "yes_prob": 0.95}, Status.ACCEPTED, "said yes"),
        ({"verified": True, "yes_prob": 0.7}, Status.ACCEPTED, "said yes"),
        ({"verified": True, "yes_prob": 0.05}, Status.REJECTED, "said no"),
        ({"verified": True, "yes_prob": 0.3}, Status.REJECTED, "said no"),
        ({"verified": True, "yes_prob": 0.5}, Status.NEEDS_REVIEW, "uncertain"),
        ({"verified": True, "yes_prob": None}, Status.NEEDS_REVIEW, "could not be parsed"),
        (
            {"verified": True, "yes_prob": None, "error": "HTTP 500"},
            Status.NEEDS_REVIEW,
            "HTTP 500",
        ),
        # An error wins over a stale probability: never silently accepted.
        ({"verified": True, "yes_prob": 0.99, "error": "timeout"}, Status.NEEDS_REVIEW, "timeout"),
    ],
)
def test_route_table(kwargs: dict[str, object], status: Status, reason_part: str) -> None:
    decision = route(detector_score=0.5, thresholds=DEFAULT, **kwargs)  # type: ignore[arg-type]
    assert decision.status is status
    assert reason_part in decision.reason


def test_low_detector_score_goes_to_review_unless_rejected() -> None:
    thresholds = RouteThresholds(review_below_score=0.4)
    assert (
        route(detector_score=0.3, verified=False, thresholds=thresholds).status
        is Status.NEEDS_REVIEW
    )
    assert (
        route(detector_score=0.3, verified=True, yes_prob=0.9, thresholds=thresholds).status
        is Status.NEEDS_REVIEW
    )
    assert (
        route(detector_score=0.3, verified=True, yes_prob=0.1, thresholds=thresholds).status
        is Status.REJECTED
    )
    assert (
        route(detector_score=0.5, verified=False, thresholds=thresholds).status is Status.ACCEPTED
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accept": 1.5}, "--accept-threshold"),
        ({"reject": -0.1}, "--reject-threshold"),
        ({"review_below_score": 2.0}, "--review-below-score"),
        ({"accept": 0.4, "reject": 0.6}, "must not be above"),
    ],
)
def test_invalid_thresholds(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InputError, match=message):
        RouteThresholds(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"verified": False},
        {"verified": True, "yes_prob": 1.0},
        {"verified": True, "yes_prob": None, "error": "timeout"},
    ],
)
def test_a_box_the_dataset_cannot_hold_is_rejected_whatever_the_scores(
    kwargs: dict[str, object],
) -> None:
    loosest = RouteThresholds(accept=0.0, reject=0.0, review_below_score=0.0)
    for thresholds in (DEFAULT, loosest):
        decision = route(
            detector_score=1.0,
            unwritable="too small to export: 0.40x1.00 px",
            thresholds=thresholds,
            **kwargs,  # type: ignore[arg-type]
        )
        assert decision.status is Status.REJECTED
        assert decision.reason == "too small to export: 0.40x1.00 px"
