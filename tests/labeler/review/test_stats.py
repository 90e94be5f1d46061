from __future__ import annotations

import math
import random
from collections import Counter
from statistics import NormalDist

import pytest

from labeler.core.exceptions import InputError
from labeler.review.stats import (
    LabelForStats,
    SpotCheck,
    checks_needed,
    next_spot_checks,
    precision_summary,
    sample_for_spot_check,
    spot_check_order,
    threshold_curve,
    wilson_interval,
)


def label(
    label_id: int, class_name: str = "cat", yes_prob: float | None = 0.9, status: str = "accepted"
) -> LabelForStats:
    return LabelForStats(
        label_id=label_id, class_name=class_name, yes_prob=yes_prob, auto_status=status
    )


def check(
    label_id: int,
    correct: bool,
    class_name: str = "cat",
    stratum: str = "accepted",
    yes_prob: float | None = 0.9,
) -> SpotCheck:
    return SpotCheck(
        label_id=label_id,
        class_name=class_name,
        stratum=stratum,
        yes_prob=yes_prob,
        correct=correct,
    )


def checks_of(
    class_name: str, stratum: str, checked: int, correct: int, first_id: int
) -> list[SpotCheck]:
    return [
        check(first_id + i, i < correct, class_name=class_name, stratum=stratum)
        for i in range(checked)
    ]


def closed_form_wilson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """The textbook Wilson score interval, independent of scipy (z from the standard library)."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    share = successes / trials
    denominator = 1 + z * z / trials
    centre = (share + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials**2)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def half_width(successes: int, trials: int) -> float:
    low, high = wilson_interval(successes, trials)
    return (high - low) / 2


def projected_half_width(successes: int, trials: int, total: int) -> float:
    """The half-width at ``total`` checks if successes/trials holds (0.5 with no trials), rounded
    half up to whole successes, as checks_needed documents."""
    share_successes = math.floor(successes * total / trials + 0.5) if trials else (total + 1) // 2
    return half_width(share_successes, total)


# --- wilson_interval ------------------------------------------------------------------------


def test_wilson_reference_value_for_8_of_10() -> None:
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=5e-5)
    assert high == pytest.approx(0.9433, abs=5e-5)


@pytest.mark.parametrize(
    ("successes", "trials", "expected"),
    [
        (0, 10, (0.0, 0.2775)),
        (10, 10, (0.7225, 1.0)),
        (1, 1, (0.2065, 1.0)),
    ],
)
def test_wilson_reference_values_at_the_edges(
    successes: int, trials: int, expected: tuple[float, float]
) -> None:
    low, high = wilson_interval(successes, trials)
    assert low == pytest.approx(expected[0], abs=5e-5)
    assert high == pytest.approx(expected[1], abs=5e-5)


@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
@pytest.mark.parametrize(
    ("successes", "trials"), [(8, 10), (0, 10), (10, 10), (1, 1), (3, 7), (37, 100), (999, 1000)]
)
def test_wilson_matches_the_closed_form(successes: int, trials: int, confidence: float) -> None:
    assert wilson_interval(successes, trials, confidence) == pytest.approx(
        closed_form_wilson(successes, trials, confidence), abs=1e-9
    )


def test_wilson_with_no_trials_is_the_whole_range() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_returns_python_floats_within_the_unit_range() -> None:
    low, high = wilson_interval(3, 7, 0.9)
    assert type(low) is float and type(high) is float
    assert 0.0 <= low < 3 / 7 < high <= 1.0


@pytest.mark.parametrize(
    ("successes", "trials", "confidence", "field"),
    [
        (-1, 10, 0.95, "successes"),
        (1.5, 10, 0.95, "successes"),
        (True, 10, 0.95, "successes"),
        (1, -2, 0.95, "trials"),
        (11, 10, 0.95, "successes"),
        (1, 10, 0.0, "confidence"),
        (1, 10, 1.0, "confidence"),
        (1, 10, 95, "confidence"),
        (1, 10, float("nan"), "confidence"),
    ],
)
def test_wilson_rejects_bad_input_naming_the_field(
    successes: object, trials: object, confidence: object, field: str
) -> None:
    with pytest.raises(InputError, match=field):
        wilson_interval(successes, trials, confidence)  # type: ignore[arg-type]


# --- checks_needed --------------------------------------------------------------------------

BOUNDARY_CASES = [(8, 10, 0.05), (9, 10, 0.03), (97, 100, 0.03), (3, 10, 0.05), (10, 10, 0.05)]


@pytest.mark.parametrize(("successes", "trials", "target"), BOUNDARY_CASES)
def test_checks_needed_boundary(successes: int, trials: int, target: float) -> None:
    needed = checks_needed(successes, trials, target)
    assert needed > 0
    assert projected_half_width(successes, trials, trials + needed) <= target
    assert projected_half_width(successes, trials, trials + needed - 1) > target


@pytest.mark.parametrize(("successes", "trials", "target"), BOUNDARY_CASES)
def test_checks_needed_is_where_the_interval_stays_narrow(
    successes: int, trials: int, target: float
) -> None:
    """Brute force over every total up to three times the answer: the last one too wide is
    the one just before trials + needed."""
    needed = checks_needed(successes, trials, target)
    totals = range(trials, 3 * (trials + needed))
    too_wide = [n for n in totals if projected_half_width(successes, trials, n) > target]
    assert max(too_wide) + 1 == trials + needed


def test_checks_needed_is_not_the_first_crossing_when_rounding_jitters() -> None:
    # At 9/10 and ±0.03 a projected 384 checks are already narrow enough but 388 are not: the
    # answer is the point after which the interval stays narrow.
    needed = checks_needed(9, 10, 0.03)
    assert projected_half_width(9, 10, 384) <= 0.03 < projected_half_width(9, 10, 388)
    assert 10 + needed == 389


@pytest.mark.parametrize(("successes", "trials"), [(8, 10), (1, 3), (0, 0), (20, 20)])
def test_checks_needed_never_falls_as_the_target_narrows(successes: int, trials: int) -> None:
    targets = [0.2, 0.1, 0.07, 0.05, 0.04, 0.03, 0.02]
    needed = [checks_needed(successes, trials, target) for target in targets]
    assert needed == sorted(needed)
    assert needed[-1] > needed[0]


def test_checks_needed_counts_down_as_checks_come_in_at_the_same_share() -> None:
    totals = {trials + checks_needed(4 * trials // 5, trials, 0.05) for trials in (10, 20, 50)}
    assert len(totals) == 1
    assert checks_needed(40, 50, 0.05) < checks_needed(8, 10, 0.05)


def test_checks_needed_assumes_a_half_before_any_check() -> None:
    # Same share (1/2), two checks further along.
    assert checks_needed(0, 0, 0.05) == checks_needed(1, 2, 0.05) + 2


def test_checks_needed_is_zero_when_already_narrow_enough() -> None:
    assert half_width(950, 1000) <= 0.05
    assert checks_needed(950, 1000, 0.05) == 0
    assert checks_needed(0, 0, 0.5) == 0


@pytest.mark.parametrize(
    ("successes", "trials", "target", "field"),
    [
        (1, 10, 0.0, "half_width"),
        (1, 10, -0.1, "half_width"),
        (1, 10, 0.6, "half_width"),
        (1, 10, float("nan"), "half_width"),
        (11, 10, 0.05, "successes"),
        (-1, 10, 0.05, "successes"),
    ],
)
def test_checks_needed_rejects_bad_input(
    successes: int, trials: int, target: float, field: str
) -> None:
    with pytest.raises(InputError, match=field):
        checks_needed(successes, trials, target)


# --- spot-check samples ---------------------------------------------------------------------


def three_classes() -> list[LabelForStats]:
    return (
        [label(i, "cat") for i in range(100, 130)]
        + [label(i, "dog") for i in range(200, 202)]
        + [label(i, "eel") for i in range(300, 310)]
    )


def by_class(ids: list[int], labels: list[LabelForStats]) -> dict[str, list[int]]:
    class_of = {item.label_id: item.class_name for item in labels}
    grouped: dict[str, list[int]] = {}
    for label_id in ids:
        grouped.setdefault(class_of[label_id], []).append(label_id)
    return grouped


def test_sample_is_stratified_by_class() -> None:
    labels = three_classes()
    picks = sample_for_spot_check(labels, per_class=5, seed=7)
    assert len(picks) == len(set(picks))
    grouped = by_class(picks, labels)
    # dog has only two labels: both.
    assert {name: len(ids) for name, ids in grouped.items()} == {"cat": 5, "dog": 2, "eel": 5}
    assert sorted(grouped["dog"]) == [200, 201]


def test_sample_is_deterministic_whatever_the_input_order() -> None:
    labels = three_classes()
    shuffled = labels.copy()
    random.Random(1).shuffle(shuffled)
    assert shuffled != labels
    assert sample_for_spot_check(shuffled, per_class=5, seed=7) == sample_for_spot_check(
        labels, per_class=5, seed=7
    )


def test_another_seed_gives_another_sample() -> None:
    labels = three_classes()
    assert sample_for_spot_check(labels, per_class=5, seed=7) != sample_for_spot_check(
        labels, per_class=5, seed=8
    )


def test_sample_is_random_not_the_first_ids() -> None:
    labels = [label(i) for i in range(10)]
    first_picks = Counter(
        sample_for_spot_check(labels, per_class=1, seed=s)[0] for s in range(2000)
    )
    # Each id first about 200 times in 2000 seeds (sd about 13): bounds at more than 5 sd.
    assert set(first_picks) == set(range(10))
    assert all(130 <= count <= 270 for count in first_picks.values())


def test_a_smaller_sample_is_a_prefix_of_a_larger_one() -> None:
    labels = three_classes()
    small = by_class(sample_for_spot_check(labels, per_class=3, seed=11), labels)
    large = by_class(sample_for_spot_check(labels, per_class=8, seed=11), labels)
    for class_name, ids in small.items():
        assert large[class_name][: len(ids)] == ids
    assert len(large["cat"]) == 8


def test_next_spot_checks_keeps_the_earlier_picks() -> None:
    labels = three_classes()
    first = sample_for_spot_check(labels, per_class=3, seed=11)
    more = next_spot_checks(labels, first, per_class=5, seed=11)
    assert not set(first) & set(more)
    combined = by_class(first + more, labels)
    grown = by_class(sample_for_spot_check(labels, per_class=8, seed=11), labels)
    assert {name: sorted(ids) for name, ids in combined.items()} == {
        name: sorted(ids) for name, ids in grown.items()
    }
    # dog was used up by the first sample.
    assert "dog" not in by_class(more, labels)


def test_next_spot_checks_ignores_unknown_ids_and_ends_when_all_are_checked() -> None:
    labels = three_classes()
    every_id = [item.label_id for item in labels]
    assert next_spot_checks(labels, [*every_id, 99999], per_class=4, seed=3) == []
    assert next_spot_checks(labels, [99999], per_class=4, seed=3) == sample_for_spot_check(
        labels, per_class=4, seed=3
    )


def test_one_class_order_does_not_depend_on_the_others() -> None:
    labels = three_classes()
    alone = spot_check_order([item for item in labels if item.class_name == "cat"], seed=5)
    assert spot_check_order(labels, seed=5)["cat"] == alone["cat"]
    assert sorted(alone["cat"]) == list(range(100, 130))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"per_class": 0, "seed": 1}, "per_class"),
        ({"per_class": 2.5, "seed": 1}, "per_class"),
        ({"per_class": 2, "seed": -1}, "seed"),
    ],
)
def test_sample_rejects_bad_options(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InputError, match=field):
        sample_for_spot_check(three_classes(), **kwargs)  # type: ignore[arg-type]


def test_sample_rejects_a_label_given_twice() -> None:
    with pytest.raises(InputError, match="label_id 3 appears twice"):
        sample_for_spot_check([label(3), label(3, "dog")], per_class=1, seed=0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"yes_prob": 1.5}, "yes_prob"),
        ({"yes_prob": float("nan")}, "yes_prob"),
        ({"status": "maybe"}, "auto_status"),
        ({"class_name": ""}, "class_name"),
    ],
)
def test_label_record_rejects_bad_fields(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InputError, match=field):
        label(1, **kwargs)  # type: ignore[arg-type]


def test_spot_check_record_rejects_bad_fields() -> None:
    with pytest.raises(InputError, match="stratum"):
        check(1, True, stratum="human")
    with pytest.raises(InputError, match="correct"):
        check(1, 1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="label_id"):
        check(-1, True)


# --- precision_summary ----------------------------------------------------------------------


def hand_worked_checks() -> list[SpotCheck]:
    return (
        checks_of("cat", "accepted", checked=10, correct=9, first_id=0)
        + checks_of("dog", "accepted", checked=10, correct=5, first_id=100)
        + checks_of("cat", "rejected", checked=5, correct=1, first_id=200)
        + checks_of("dog", "rejected", checked=5, correct=0, first_id=300)
    )


def test_precision_summary_hand_worked() -> None:
    summary = precision_summary(
        hand_worked_checks(),
        accepted_per_class={"cat": 900, "dog": 100},
        rejected_per_class={"cat": 50, "dog": 150},
    )
    cat = summary.classes["cat"]
    assert (cat.accepted_count, cat.accepted_checked, cat.accepted_correct) == (900, 10, 9)
    assert cat.precision == pytest.approx(0.9)
    assert cat.precision_interval == pytest.approx(closed_form_wilson(9, 10, 0.95))
    assert cat.checks_to_target == checks_needed(9, 10, 0.05) > 0
    assert cat.rejected_share_correct == pytest.approx(0.2)
    assert cat.rejected_interval == pytest.approx(closed_form_wilson(1, 5, 0.95))
    assert summary.classes["dog"].precision == pytest.approx(0.5)

    # Weighted by accepted counts: 0.9 * 0.9 + 0.1 * 0.5, not the pooled 14 / 20.
    overall = summary.precision
    assert overall.share_correct == pytest.approx(0.86)
    assert (overall.population, overall.checked, overall.correct) == (1000, 20, 14)
    # Kish: 1 / (0.9**2 / 10 + 0.1**2 / 10) = 12.195 effective checks; Wilson on 12 of them at
    # 0.86 * 12 = 10.32 successes, between the whole counts 10 and 11.
    assert overall.effective_checks == pytest.approx(10 / 0.82)
    ten, eleven = closed_form_wilson(10, 12, 0.95), closed_form_wilson(11, 12, 0.95)
    assert overall.interval == pytest.approx(
        (ten[0] + 0.32 * (eleven[0] - ten[0]), ten[1] + 0.32 * (eleven[1] - ten[1]))
    )
    assert overall.unchecked_strata == ()

    # Rejected: 0.25 * 0.2 + 0.75 * 0.0.
    assert summary.rejected_share_correct.share_correct == pytest.approx(0.05)
    assert summary.rejected_share_correct.population == 200


def test_overall_with_proportional_checks_is_the_pooled_wilson() -> None:
    checks = checks_of("cat", "accepted", 30, 27, first_id=0) + checks_of(
        "dog", "accepted", 10, 6, first_id=100
    )
    summary = precision_summary(
        checks, accepted_per_class={"cat": 300, "dog": 100}, rejected_per_class={}
    )
    # Checks spread as the populations are: 0.75 * 0.9 + 0.25 * 0.6 = 33 / 40 on 40 checks.
    assert summary.precision.share_correct == pytest.approx(33 / 40)
    assert summary.precision.effective_checks == pytest.approx(40)
    assert summary.precision.interval == pytest.approx(closed_form_wilson(33, 40, 0.95))


def test_overall_with_one_class_is_that_class() -> None:
    summary = precision_summary(
        checks_of("cat", "accepted", 20, 17, first_id=0),
        accepted_per_class={"cat": 500},
        rejected_per_class={"cat": 10},
        confidence=0.9,
    )
    assert summary.precision.share_correct == pytest.approx(0.85)
    assert summary.precision.interval == pytest.approx(closed_form_wilson(17, 20, 0.9))
    # Rejected labels exist but none was checked: no estimate, and it says which class.
    assert summary.rejected_share_correct.share_correct is None
    assert summary.rejected_share_correct.unchecked_strata == ("cat",)


def test_overall_is_none_while_a_class_with_labels_is_unchecked() -> None:
    summary = precision_summary(
        checks_of("cat", "accepted", 10, 9, first_id=0),
        accepted_per_class={"cat": 90, "dog": 10, "eel": 0},
        rejected_per_class={},
    )
    assert summary.precision.share_correct is None
    assert summary.precision.interval is None
    assert summary.precision.unchecked_strata == ("dog",)
    dog = summary.classes["dog"]
    assert dog.precision is None
    assert dog.precision_interval == (0.0, 1.0)
    assert summary.classes["eel"].checks_to_target == 0


def test_checks_to_target_stops_at_the_unchecked_labels() -> None:
    summary = precision_summary(
        checks_of("cat", "accepted", 2, 1, first_id=0),
        accepted_per_class={"cat": 12},
        rejected_per_class={},
    )
    assert checks_needed(1, 2, 0.05) > 10
    assert summary.classes["cat"].checks_to_target == 10


def test_needs_review_checks_are_not_part_of_the_summary() -> None:
    accepted, rejected = {"cat": 900, "dog": 100}, {"cat": 50}
    base = precision_summary(
        hand_worked_checks()[:20], accepted_per_class=accepted, rejected_per_class=rejected
    )
    more = hand_worked_checks()[:20] + checks_of("cat", "needs_review", 5, 0, first_id=500)
    assert precision_summary(more, accepted_per_class=accepted, rejected_per_class=rejected) == base


@pytest.mark.parametrize(
    ("checks", "kwargs", "message"),
    [
        ([check(1, True), check(1, False)], {}, "label_id 1 is checked twice"),
        (checks_of("cat", "accepted", 3, 3, first_id=0), {}, "accepted_per_class gives 2"),
        ([check(1, True, class_name="cow")], {}, "class 'cow'"),
        ([], {"accepted_per_class": {"cat": -1}}, r"accepted_per_class\['cat'\]"),
        ([], {"rejected_per_class": {"": 1}}, "rejected_per_class key"),
        ([], {"target_half_width": 0.0}, "target_half_width"),
        ([], {"confidence": 1.0}, "confidence"),
        (["not a check"], {}, "SpotCheck"),
    ],
)
def test_precision_summary_rejects_bad_input(
    checks: list[SpotCheck], kwargs: dict[str, object], message: str
) -> None:
    options: dict[str, object] = {
        "accepted_per_class": {"cat": 2},
        "rejected_per_class": {"cat": 0},
        **kwargs,
    }
    with pytest.raises(InputError, match=message):
        precision_summary(checks, **options)  # type: ignore[arg-type]


# --- threshold_curve ------------------------------------------------------------------------


def curve_labels() -> list[LabelForStats]:
    return [
        label(1, "cat", 0.95, "accepted"),
        label(2, "cat", 0.9, "accepted"),
        label(3, "cat", 0.8, "accepted"),
        label(4, "cat", 0.75, "accepted"),
        label(5, "cat", 0.6, "needs_review"),
        label(6, "cat", 0.5, "needs_review"),
        label(7, "cat", 0.2, "rejected"),
        label(8, "cat", 0.1, "rejected"),
        # The verifier gave no answer: never accepted by a threshold.
        label(9, "cat", None, "needs_review"),
        label(10, "dog", 0.9, "accepted"),
        label(11, "dog", 0.5, "needs_review"),
        # Not verified at all: no curve.
        label(20, "bird", None, "accepted"),
    ]


def curve_checks() -> list[SpotCheck]:
    return [
        check(1, True, "cat", "accepted", 0.95),
        check(3, False, "cat", "accepted", 0.8),
        check(5, True, "cat", "needs_review", 0.6),
        check(7, True, "cat", "rejected", 0.2),
        check(9, False, "cat", "needs_review", None),
        check(10, True, "dog", "accepted", 0.9),
    ]


def test_threshold_curve_hand_worked() -> None:
    thresholds = [0.96, 0.85, 0.8, 0.7, 0.55, 0.45, 0.15, 0.05]
    curve = threshold_curve(curve_labels(), curve_checks(), thresholds=thresholds)
    assert set(curve) == {"cat", "dog"}
    cat = curve["cat"]
    assert [point.threshold for point in cat] == thresholds
    assert [point.accepted_count for point in cat] == [0, 2, 3, 4, 5, 6, 7, 8]
    assert [point.checked_count for point in cat] == [0, 1, 2, 2, 3, 3, 4, 4]
    expected = [
        None,  # nothing accepted
        1.0,  # accepted stratum only: id 1 right
        0.5,  # P(yes) >= t takes id 3 (0.8) in: wrong
        0.5,  # ids 1 right, 3 wrong
        (4 * 0.5 + 1 * 1.0) / 5,  # + needs_review 0.6 (checked, right)
        (4 * 0.5 + 2 * 1.0) / 6,  # + needs_review 0.5, its stratum's share from id 5
        (4 * 0.5 + 2 * 1.0 + 1 * 1.0) / 7,  # + rejected 0.2 (checked, right)
        (4 * 0.5 + 2 * 1.0 + 2 * 1.0) / 8,  # + rejected 0.1, its stratum's share from id 7
    ]
    for point, value in zip(cat, expected, strict=True):
        assert point.unchecked_strata == ()
        if value is None:
            assert point.precision is None and point.precision_interval is None
        else:
            assert point.precision == pytest.approx(value)
    # One stratum, two checks: exactly the Wilson interval of 1 of 2.
    assert cat[3].precision_interval == pytest.approx(closed_form_wilson(1, 2, 0.95))
    # Stratified, not pooled: at 0.55 the pooled share of checks would be 2 / 3.
    assert cat[4].precision != pytest.approx(2 / 3)


def test_threshold_curve_says_which_stratum_has_no_checks() -> None:
    curve = threshold_curve(curve_labels(), curve_checks(), thresholds=[0.8, 0.4])
    high, low = curve["dog"]
    assert (high.accepted_count, high.precision, high.unchecked_strata) == (1, 1.0, ())
    assert low.accepted_count == 2
    assert low.precision is None and low.precision_interval is None
    assert low.unchecked_strata == ("needs_review",)


@pytest.mark.parametrize(
    ("checks", "thresholds", "message"),
    [
        ([check(99, True)], [0.5], "label_id 99 is not among labels"),
        ([check(1, True, "cat", "rejected", 0.95)], [0.5], "stratum 'rejected' vs 'accepted'"),
        ([check(1, True, "dog", "accepted", 0.95)], [0.5], "class_name 'dog' vs 'cat'"),
        ([check(1, True, "cat", "accepted", 0.5)], [0.5], "yes_prob 0.5 vs 0.95"),
        ([], [], "thresholds"),
        ([], [1.5], "thresholds"),
        ([], "0.5", "thresholds"),
    ],
)
def test_threshold_curve_rejects_bad_input(
    checks: list[SpotCheck], thresholds: list[float], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        threshold_curve(curve_labels(), checks, thresholds=thresholds)


def test_threshold_curve_rejects_a_label_given_twice() -> None:
    with pytest.raises(InputError, match="label_id 1 appears twice"):
        threshold_curve([label(1), label(1)], [], thresholds=[0.5])
