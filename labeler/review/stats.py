"""The statistics behind "can I trust these labels?": spot-check samples, Wilson intervals,
precision per class and overall, and precision against the accept threshold.

Reviewers spot-check a seeded random sample of the auto-accepted labels of each class, shown blind
and answered correct/incorrect, and a sample of the auto-rejected ones the same way. This module
draws those samples (:func:`sample_for_spot_check`, :func:`next_spot_checks`) and turns the answers
into estimates (:func:`precision_summary`, :func:`threshold_curve`). It is pure: no files, no
database, no clock; records in, records out.

Every interval is a Wilson score interval computed by SciPy
(``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``); this module adds the
bookkeeping around it, not the formula.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from labeler.core.exceptions import InputError
from labeler.route import Status

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

# The auto statuses routing gives (labeler.route.Status), in the order results list them.
STRATA: tuple[str, ...] = (Status.ACCEPTED, Status.REJECTED, Status.NEEDS_REVIEW)


# ---------------------------------------------------------------------------------------------
# Input records


@dataclass(frozen=True)
class LabelForStats:
    """One routed label as the statistics see it.

    ``yes_prob`` is the verifier's stored P(yes) in [0, 1], None when the class was not verified
    or the verifier gave no usable answer; ``auto_status`` is the status routing gave it
    ("accepted", "rejected" or "needs_review"), whatever a reviewer did since.
    """

    label_id: int
    class_name: str
    yes_prob: float | None
    auto_status: str

    def __post_init__(self) -> None:
        _require_count("label_id", self.label_id)
        _require_class_name("class_name", self.class_name)
        if self.yes_prob is not None:
            _require_probability("yes_prob", self.yes_prob)
        _require_stratum("auto_status", self.auto_status)


@dataclass(frozen=True)
class SpotCheck:
    """One reviewer's blind answer about one sampled label.

    ``stratum`` is the auto status the label was sampled from ("accepted", "rejected" or
    "needs_review"); ``yes_prob`` is its stored P(yes) (None when it has none); ``correct`` is
    True when the reviewer judged the box right for its class.
    """

    label_id: int
    class_name: str
    stratum: str
    yes_prob: float | None
    correct: bool

    def __post_init__(self) -> None:
        _require_count("label_id", self.label_id)
        _require_class_name("class_name", self.class_name)
        _require_stratum("stratum", self.stratum)
        if self.yes_prob is not None:
            _require_probability("yes_prob", self.yes_prob)
        if not isinstance(self.correct, bool):
            raise InputError(f"correct must be True or False, got {self.correct!r}")


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class StratifiedEstimate:
    """A share correct over a population split into strata, each sampled on its own.

    ``population``, ``checked`` and ``correct`` are plain totals over the strata; ``share_correct``
    weights each stratum's share correct by its population (Σ N_h·q_h / Σ N_h), so a class with
    many labels counts for more than one with few, however many checks each got. It is None when
    the population is empty, or when a stratum with labels has no checks (``unchecked_strata``
    names them): an estimate that silently skipped them would not be one of the population.
    ``interval`` is a Wilson interval on ``effective_checks`` (see ``_stratified_estimate``).
    """

    population: int
    checked: int
    correct: int
    share_correct: float | None
    interval: tuple[float, float] | None
    effective_checks: float | None
    unchecked_strata: tuple[str, ...]


@dataclass(frozen=True)
class ClassPrecision:
    """Spot-check results of one class.

    Auto-accepted sample: ``precision`` = ``accepted_correct / accepted_checked`` with its Wilson
    ``precision_interval`` ((0.0, 1.0) before any check), and ``checks_to_target``, the further
    checks after which the interval's half-width should be at most the target if the observed
    precision holds, never more than the accepted labels still unchecked (checking them all gives
    the exact precision). Auto-rejected sample: ``rejected_share_correct`` is the share of checked
    rejected boxes that were in fact correct (boxes the verifier threw away wrongly).
    """

    class_name: str
    accepted_count: int
    accepted_checked: int
    accepted_correct: int
    precision: float | None
    precision_interval: tuple[float, float]
    checks_to_target: int
    rejected_count: int
    rejected_checked: int
    rejected_correct: int
    rejected_share_correct: float | None
    rejected_interval: tuple[float, float]


@dataclass(frozen=True)
class PrecisionSummary:
    """Per class (``classes``, by name) and overall.

    ``precision`` is over every auto-accepted label, classes weighted by their accepted counts;
    ``rejected_share_correct`` is over every auto-rejected label, classes weighted by their
    rejected counts. Their ``unchecked_strata`` are class names.
    """

    classes: dict[str, ClassPrecision]
    precision: StratifiedEstimate
    rejected_share_correct: StratifiedEstimate
    confidence: float
    target_half_width: float


@dataclass(frozen=True)
class ThresholdPoint:
    """What accepting every label of a class with P(yes) ≥ ``threshold`` would give.

    ``accepted_count`` labels would be accepted; ``checked_count`` of them were spot-checked.
    ``precision`` is the stratified estimate Σ_s N_s(t)·q_s(t) / Σ_s N_s(t) over the auto-status
    strata (see :func:`threshold_curve`) with its Wilson ``precision_interval``; both are None when
    nothing would be accepted or when a stratum with labels at this threshold has no checks there
    (``unchecked_strata`` names those strata).
    """

    threshold: float
    accepted_count: int
    checked_count: int
    precision: float | None
    precision_interval: tuple[float, float] | None
    unchecked_strata: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Wilson intervals


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The two-sided Wilson score interval (low, high) for ``successes`` out of ``trials``, at
    ``confidence`` (in (0, 1)), both within [0, 1]; (0.0, 1.0) when ``trials`` is 0.

    Raises InputError, naming the field, for a negative or fractional count, successes above
    trials, or a confidence outside (0, 1).
    """
    successes = _require_count("successes", successes)
    trials = _require_count("trials", trials)
    if successes > trials:
        raise InputError(f"successes ({successes}) must not exceed trials ({trials})")
    return _wilson(successes, trials, _require_confidence(confidence))


def checks_needed(successes: int, trials: int, half_width: float, confidence: float = 0.95) -> int:
    """How many more checks until the Wilson interval's half-width ((high - low) / 2) is at most
    ``half_width`` (in (0, 0.5]), assuming the observed share ``successes / trials`` holds (0.5
    when ``trials`` is 0); 0 when the current interval is already that narrow.

    The promise, with ``needed`` the result and n = ``trials``: if ``needed`` > 0, the projected
    interval at n + ``needed`` checks, and at every larger number, has a half-width of at most
    ``half_width``, and at n + ``needed`` - 1 it does not. "Projected" means successes =
    round(share * checks), halves up, since a reviewer's answers come in whole checks.
    """
    successes = _require_count("successes", successes)
    trials = _require_count("trials", trials)
    if successes > trials:
        raise InputError(f"successes ({successes}) must not exceed trials ({trials})")
    confidence = _require_confidence(confidence)
    if (
        isinstance(half_width, bool)
        or not isinstance(half_width, int | float)
        or not 0.0 < half_width <= 0.5
    ):
        raise InputError(f"half_width must be within (0, 0.5], got {half_width!r}")

    def width_at(k: int, n: int) -> float:
        low, high = _wilson(k, n, confidence)
        return (high - low) / 2

    if width_at(successes, trials) <= half_width:
        return 0
    share = Fraction(successes, trials) if trials else Fraction(1, 2)

    def projected(total: int) -> float:
        return width_at(math.floor(share * total + Fraction(1, 2)), total)

    # Rounding successes to whole checks makes the projected half-width jitter over a few checks
    # (at a share of 0.9 and ±0.03, 384 checks are narrow enough but 388 are not), so a plain
    # binary search would find *a* crossing, not the last one. `bound` is safe instead: if
    # bound(total) <= half_width, every total from there on is narrow enough (proof in
    # _projected_width_bound). Search it for a safe total, then walk down to the last one that
    # is not narrow enough.
    def bound(total: int) -> float:
        return _projected_width_bound(share, total, width_at)

    unsafe = trials
    safe = max(2 * trials, 1)
    while bound(safe) > half_width:
        unsafe, safe = safe, 2 * safe
    while safe - unsafe > 1:
        middle = (unsafe + safe) // 2
        if bound(middle) <= half_width:
            safe = middle
        else:
            unsafe = middle
    last_too_wide = next(n for n in range(safe - 1, trials - 1, -1) if projected(n) > half_width)
    return last_too_wide + 1 - trials


def _projected_width_bound(
    share: Fraction, total: int, width_at: Callable[[int, int], float]
) -> float:
    """An upper bound on the projected half-width at every number of checks n ≥ ``total``.

    Why it holds: the Wilson half-width w(p, n) = z/(n+z²)·sqrt(n·p(1-p) + z²/4) falls as n grows
    for a fixed p, and for a fixed n grows as p nears 1/2. At n ≥ total the projected share is
    round(share·n)/n, within 1/(2n) ≤ 1/(2·total) of ``share``, so w ≤ w(p, total) for some p
    with p·total in [share·total - 1/2, share·total + 1/2] ⊂ [low_k, high_k] (whole numbers).
    Over that range w(·, total) peaks at the point nearest total/2: one of the whole ends, or
    total/2 itself when inside, which is whole for an even total; for an odd one,
    w(1/2, total) ≤ w(1/2, total - 1) and (total - 1)/2 is whole.
    """
    if share in (0, 1):
        # Every projection is exact (0 or all successes): the half-width itself falls with n.
        return width_at(int(share * total), total)
    low_k = max(0, math.floor(share * total - Fraction(1, 2)))
    high_k = min(total, math.ceil(share * total + Fraction(1, 2)))
    if total % 2 == 1 and low_k < Fraction(total, 2) < high_k:
        return width_at((total - 1) // 2, total - 1)
    return max(width_at(k, total) for k in range(low_k, high_k + 1))


def _wilson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """wilson_interval without the checks, for inputs already checked."""
    if trials == 0:
        return (0.0, 1.0)
    # Imported here: scipy comes with the 'label' extra, and importing scipy.stats takes a
    # noticeable fraction of a second that `import labeler.review` need not pay.
    from scipy.stats import binomtest

    interval = binomtest(successes, trials).proportion_ci(
        confidence_level=confidence, method="wilson"
    )
    return (float(interval.low), float(interval.high))


# ---------------------------------------------------------------------------------------------
# Spot-check samples


def spot_check_order(labels: Iterable[LabelForStats], *, seed: int) -> dict[str, list[int]]:
    """Each class's label ids (by class name, sorted) in the order spot checks draw them.

    The order is a permutation of the class's ids, sorted first, drawn by a numpy Generator seeded
    from ``seed`` and the class name: the same labels and seed give the same order whatever the
    input order, and one class's order does not change when other classes gain or lose labels.
    The same seed gives the same order on the same numpy version (numpy does not promise its
    streams across versions; :func:`next_spot_checks` stays correct regardless).
    """
    seed = _require_count("seed", seed)
    ids_by_class: dict[str, list[int]] = {}
    seen_ids: set[int] = set()
    for label in labels:
        if label.label_id in seen_ids:
            raise InputError(f"label_id {label.label_id} appears twice in labels")
        seen_ids.add(label.label_id)
        ids_by_class.setdefault(label.class_name, []).append(label.label_id)
    order: dict[str, list[int]] = {}
    for class_name in sorted(ids_by_class):
        generator = np.random.default_rng(_class_seed(seed, class_name))
        shuffled = generator.permutation(np.array(sorted(ids_by_class[class_name]), np.int64))
        order[class_name] = [int(label_id) for label_id in shuffled]
    return order


def sample_for_spot_check(
    labels: Iterable[LabelForStats], *, per_class: int, seed: int
) -> list[int]:
    """A seeded random sample of label ids, stratified by class: the first ``per_class`` ids of
    each class's :func:`spot_check_order` (all of a class's ids when it has fewer), classes in
    name order.

    Pass the labels of one stratum (e.g. only the auto-accepted ones). The sample for n is a
    prefix, per class, of the sample for any larger n with the same labels and seed.
    """
    return next_spot_checks(labels, (), per_class=per_class, seed=seed)


def next_spot_checks(
    labels: Iterable[LabelForStats],
    already_checked_ids: Iterable[int],
    *,
    per_class: int,
    seed: int,
) -> list[int]:
    """The next ``per_class`` label ids of each class to check: the first ids of its
    :func:`spot_check_order` not in ``already_checked_ids``, classes in name order.

    A reviewer who checked ``sample_for_spot_check(labels, per_class=20, seed=s)`` and asks for
    20 more gets the next 20 of the same order, so the union is what a first sample of 40 would
    have been. Ids in ``already_checked_ids`` that are not among ``labels`` are ignored.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise InputError(f"per_class must be a whole number of at least 1, got {per_class!r}")
    checked = {_require_count("already_checked_ids", label_id) for label_id in already_checked_ids}
    picks: list[int] = []
    for ordered_ids in spot_check_order(labels, seed=seed).values():
        picks.extend([label_id for label_id in ordered_ids if label_id not in checked][:per_class])
    return picks


def _class_seed(seed: int, class_name: str) -> np.random.SeedSequence:
    # A digest, not hash(): Python salts str hashes per process.
    digest = hashlib.sha256(class_name.encode("utf-8")).digest()
    return np.random.SeedSequence([seed, int.from_bytes(digest[:16], "big")])


# ---------------------------------------------------------------------------------------------
# Estimates


def precision_summary(
    checks: Iterable[SpotCheck],
    *,
    accepted_per_class: Mapping[str, int],
    rejected_per_class: Mapping[str, int],
    confidence: float = 0.95,
    target_half_width: float = 0.05,
) -> PrecisionSummary:
    """Precision per class and overall from the spot checks of auto-accepted labels, and the share
    of auto-rejected labels that were correct, from those of auto-rejected ones.

    ``accepted_per_class`` / ``rejected_per_class`` are the population counts: how many labels of
    each class routing accepted / rejected (checked or not). The overall precision is a stratified
    estimate that weights each class by its accepted count, Σ_c N_c·precision_c / Σ_c N_c, not a
    pooled share of all checks, so a small class checked as often as a big one does not count as
    much; it is None while a class with accepted labels has no checks (named in its
    ``unchecked_strata``). The overall rejected share is weighted by the rejected counts the same
    way. Checks of the "needs_review" stratum are not part of this summary (see
    :func:`threshold_curve`).

    Raises InputError for a label checked twice, a count below zero, or more checks of a class
    and stratum than it has labels.
    """
    confidence = _require_confidence(confidence)
    if (
        isinstance(target_half_width, bool)
        or not isinstance(target_half_width, int | float)
        or not 0.0 < target_half_width <= 0.5
    ):
        raise InputError(f"target_half_width must be within (0, 0.5], got {target_half_width!r}")
    populations = {
        Status.ACCEPTED.value: _require_population("accepted_per_class", accepted_per_class),
        Status.REJECTED.value: _require_population("rejected_per_class", rejected_per_class),
    }
    tallies = _tally(_unique_checks(checks))
    class_names = sorted(
        set(populations[Status.ACCEPTED])
        | set(populations[Status.REJECTED])
        | {class_name for stratum, class_name in tallies if stratum in populations}
    )
    strata_by_stratum: dict[str, dict[str, tuple[int, int, int]]] = {}
    for stratum, population_by_class in populations.items():
        strata: dict[str, tuple[int, int, int]] = {}
        for class_name in class_names:
            population = population_by_class.get(class_name, 0)
            checked, correct = tallies.get((stratum, class_name), (0, 0))
            if checked > population:
                raise InputError(
                    f"{checked} checks of {stratum} labels of class {class_name!r}, but "
                    f"{_population_field(stratum)} gives {population}: pass the counts of the "
                    "same run the checks came from"
                )
            strata[class_name] = (population, checked, correct)
        strata_by_stratum[stratum] = strata

    classes: dict[str, ClassPrecision] = {}
    for class_name in class_names:
        accepted_count, accepted_checked, accepted_correct = strata_by_stratum[Status.ACCEPTED][
            class_name
        ]
        rejected_count, rejected_checked, rejected_correct = strata_by_stratum[Status.REJECTED][
            class_name
        ]
        checks_to_target = min(
            checks_needed(accepted_correct, accepted_checked, target_half_width, confidence),
            accepted_count - accepted_checked,
        )
        classes[class_name] = ClassPrecision(
            class_name=class_name,
            accepted_count=accepted_count,
            accepted_checked=accepted_checked,
            accepted_correct=accepted_correct,
            precision=_share(accepted_correct, accepted_checked),
            precision_interval=_wilson(accepted_correct, accepted_checked, confidence),
            checks_to_target=checks_to_target,
            rejected_count=rejected_count,
            rejected_checked=rejected_checked,
            rejected_correct=rejected_correct,
            rejected_share_correct=_share(rejected_correct, rejected_checked),
            rejected_interval=_wilson(rejected_correct, rejected_checked, confidence),
        )
    return PrecisionSummary(
        classes=classes,
        precision=_stratified_estimate(strata_by_stratum[Status.ACCEPTED], confidence),
        rejected_share_correct=_stratified_estimate(strata_by_stratum[Status.REJECTED], confidence),
        confidence=confidence,
        target_half_width=float(target_half_width),
    )


def threshold_curve(
    labels: Iterable[LabelForStats],
    checks: Iterable[SpotCheck],
    *,
    thresholds: Sequence[float],
    confidence: float = 0.95,
) -> dict[str, tuple[ThresholdPoint, ...]]:
    """For each verified class (one with at least one label that has a P(yes)), by name, one
    :class:`ThresholdPoint` per candidate accept threshold t, in the order of ``thresholds``.

    ``accepted_count`` counts ALL labels of the class with P(yes) ≥ t, whatever their auto status
    (a label without a P(yes) is never counted). The precision at t is stratified over the auto
    statuses the checks were sampled from: precision(t) = Σ_s N_s(t)·q_s(t) / Σ_s N_s(t), where
    N_s(t) counts the labels of stratum s with P(yes) ≥ t and q_s(t) is the share correct among
    the checked labels of stratum s with P(yes) ≥ t. It is None where a stratum with N_s(t) > 0
    has no checks at t (``unchecked_strata`` says which), e.g. needs_review labels when only the
    accepted and rejected samples were checked.

    Pass the labels the accept threshold decides: leave out boxes that routing sends elsewhere
    whatever their scores (boxes the dataset cannot hold, or below the detector-score review
    threshold). Each check must be of one of ``labels``, with the same class, stratum (= auto
    status) and P(yes); InputError otherwise.
    """
    confidence = _require_confidence(confidence)
    if isinstance(thresholds, str | bytes) or len(thresholds) == 0:
        raise InputError("thresholds must list at least one threshold in [0, 1]")
    threshold_values = [_require_probability("thresholds", t) for t in thresholds]
    labels_by_id: dict[int, LabelForStats] = {}
    for label in labels:
        if label.label_id in labels_by_id:
            raise InputError(f"label_id {label.label_id} appears twice in labels")
        labels_by_id[label.label_id] = label
    checks_by_class: dict[str, list[SpotCheck]] = {}
    for check in _unique_checks(checks):
        _require_matching_label(check, labels_by_id.get(check.label_id))
        if check.yes_prob is not None:
            checks_by_class.setdefault(check.class_name, []).append(check)

    # Sorted P(yes) per class and stratum: the count at t is one binary search.
    yes_probs: dict[str, dict[str, list[float]]] = {}
    for label in labels_by_id.values():
        if label.yes_prob is not None:
            by_stratum = yes_probs.setdefault(label.class_name, {})
            by_stratum.setdefault(label.auto_status, []).append(label.yes_prob)
    curve: dict[str, tuple[ThresholdPoint, ...]] = {}
    for class_name in sorted(yes_probs):
        sorted_probs = {
            stratum: np.sort(np.array(probs, np.float64))
            for stratum, probs in yes_probs[class_name].items()
        }
        class_checks = checks_by_class.get(class_name, [])
        points: list[ThresholdPoint] = []
        for threshold in threshold_values:
            strata: dict[str, tuple[int, int, int]] = {}
            for stratum in STRATA:
                probs = sorted_probs.get(stratum)
                above = 0 if probs is None else len(probs) - int(np.searchsorted(probs, threshold))
                answers = [
                    c.correct
                    for c in class_checks
                    if c.stratum == stratum and c.yes_prob is not None and c.yes_prob >= threshold
                ]
                strata[stratum] = (above, len(answers), sum(answers))
            estimate = _stratified_estimate(strata, confidence)
            points.append(
                ThresholdPoint(
                    threshold=threshold,
                    accepted_count=estimate.population,
                    checked_count=estimate.checked,
                    precision=estimate.share_correct,
                    precision_interval=estimate.interval,
                    unchecked_strata=estimate.unchecked_strata,
                )
            )
        curve[class_name] = tuple(points)
    return curve


def _stratified_estimate(
    strata: Mapping[str, tuple[int, int, int]], confidence: float
) -> StratifiedEstimate:
    """The population-weighted share correct over ``strata`` (name → (population, checked,
    correct)), with its interval.

    The interval: Wilson on the Kish effective sample size. Stratum h has weight W_h = N_h / N;
    n_eff = 1 / Σ_h W_h² / n_h is the number of simple-random checks whose estimate would be as
    precise (it equals the total checks when they are spread in proportion to the populations,
    and is smaller when they are not). The Wilson interval for the stratified share p_st on
    n_eff checks keeps Wilson's good behaviour near 0 and 1 (where most precisions live), which a
    normal interval on the stratified variance loses: that variance is 0 when every class's
    checks are all correct. Korn & Graubard (1998) and Dean & Pagano (2015) recommend such
    effective-sample intervals for survey proportions. SciPy takes whole counts, so n_eff is
    rounded down (wider, never narrower), and the bounds are interpolated between the whole
    success counts around p_st·n_eff, so the interval stays centred on p_st. With one stratum
    this is exactly that stratum's Wilson interval. Sampling without replacement from small
    strata would make the truth narrower; this ignores that, erring wide.
    """
    population = sum(stratum[0] for stratum in strata.values())
    checked = sum(stratum[1] for stratum in strata.values())
    correct = sum(stratum[2] for stratum in strata.values())
    unchecked = tuple(name for name, (size, n, _) in strata.items() if size > 0 and n == 0)
    if population == 0 or unchecked:
        return StratifiedEstimate(population, checked, correct, None, None, None, unchecked)
    # Exact fractions: all inputs are counts, and a one-stratum estimate must land on whole
    # numbers exactly to reproduce that stratum's own interval.
    share = Fraction(0)
    inverse_effective_checks = Fraction(0)
    for size, n, k in strata.values():
        if size == 0:
            continue
        weight = Fraction(size, population)
        share += weight * Fraction(k, n)
        inverse_effective_checks += weight * weight / n
    effective_checks = 1 / inverse_effective_checks
    # n_eff >= 1: each W_h^2 / n_h <= W_h^2 and the W_h^2 sum to at most 1.
    trials = math.floor(effective_checks)
    successes = share * trials
    low_k = math.floor(successes)
    low, high = _wilson(low_k, trials, confidence)
    if successes != low_k:
        fraction = float(successes - low_k)
        next_low, next_high = _wilson(low_k + 1, trials, confidence)
        low = low + fraction * (next_low - low)
        high = high + fraction * (next_high - high)
    return StratifiedEstimate(
        population=population,
        checked=checked,
        correct=correct,
        share_correct=float(share),
        interval=(low, high),
        effective_checks=float(effective_checks),
        unchecked_strata=(),
    )


def _tally(checks: Iterable[SpotCheck]) -> dict[tuple[str, str], tuple[int, int]]:
    """(stratum, class name) → (checked, correct)."""
    tallies: dict[tuple[str, str], tuple[int, int]] = {}
    for check in checks:
        checked, correct = tallies.get((check.stratum, check.class_name), (0, 0))
        tallies[(check.stratum, check.class_name)] = (checked + 1, correct + int(check.correct))
    return tallies


def _unique_checks(checks: Iterable[SpotCheck]) -> list[SpotCheck]:
    unique: list[SpotCheck] = []
    seen_ids: set[int] = set()
    for check in checks:
        if not isinstance(check, SpotCheck):
            raise InputError(f"checks must be SpotCheck records, got {type(check).__name__}")
        if check.label_id in seen_ids:
            raise InputError(
                f"label_id {check.label_id} is checked twice in checks: keep one answer per label"
            )
        seen_ids.add(check.label_id)
        unique.append(check)
    return unique


def _require_matching_label(check: SpotCheck, label: LabelForStats | None) -> None:
    if label is None:
        raise InputError(f"checks: label_id {check.label_id} is not among labels")
    mismatches = [
        f"{field} {checked!r} vs {stored!r}"
        for field, checked, stored in (
            ("class_name", check.class_name, label.class_name),
            ("stratum", check.stratum, label.auto_status),
            ("yes_prob", check.yes_prob, label.yes_prob),
        )
        if checked != stored
    ]
    if mismatches:
        raise InputError(
            f"checks: label_id {check.label_id} disagrees with labels "
            f"({'; '.join(mismatches)}): pass checks and labels of the same run"
        )


def _share(correct: int, checked: int) -> float | None:
    return correct / checked if checked else None


def _population_field(stratum: str) -> str:
    return f"{'accepted' if stratum == Status.ACCEPTED else 'rejected'}_per_class"


# ---------------------------------------------------------------------------------------------
# Input checks: each raises InputError naming the field.


def _require_count(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InputError(f"{field} must be a whole number, got {value!r}")
    if value < 0:
        raise InputError(f"{field} must not be negative, got {value}")
    return int(value)


def _require_confidence(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value < 1.0:
        raise InputError(f"confidence must be within (0, 1), e.g. 0.95, got {value!r}")
    return float(value)


def _require_probability(field: str, value: object) -> float:
    # `not 0 <= value <= 1` is also True for NaN.
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InputError(f"{field} must be within [0, 1], got {value!r}")
    return float(value)


def _require_class_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise InputError(f"{field} must be a non-empty string, got {value!r}")
    return value


def _require_stratum(field: str, value: object) -> str:
    if value not in STRATA:
        raise InputError(f"{field} must be one of {', '.join(STRATA)}; got {value!r}")
    return str(value)


def _require_population(field: str, counts: Mapping[str, int]) -> dict[str, int]:
    if not isinstance(counts, Mapping):
        raise InputError(f"{field} must map class names to label counts")
    return {
        _require_class_name(f"{field} key", name): _require_count(f"{field}[{name!r}]", count)
        for name, count in counts.items()
    }
