"""Spot checks over a workspace: a measured precision for every dataset.

Reviewers judge a seeded random sample of the automatic labels, stratified by class, blind: they
see the image, the class and the box, and answer correct or incorrect, never seeing the verdict,
its P(yes) or whether routing accepted or rejected the box. The auto-accepted sample measures the
precision of the accepted labels; the auto-rejected sample the share of rejected boxes that were in
fact right. Everything is measured on the latest run's automatic statuses (the ``labels`` table),
whatever reviewers decided since.

Which labels a spot check speaks for (the "frame"): the automatic labels no reviewer decided in the
review queue. A box a reviewer already decided is not drawn, since its automatic label is no longer
what the dataset holds for it, and it is left out of the population counts too, so the sample and
the population it is weighed against are the same set. A box decided outside its check after it
was drawn and before it was answered leaves the frame the same way (its check is "withdrawn").
A check counts while its box's automatic status in the latest run is still its stratum; after a
re-run that routed the box otherwise it is "outdated" and neither counted nor drawn again (each
box is checked at most once).

An answer also reaches the dataset: "incorrect" on an auto-accepted box records a reject decision,
"correct" on an auto-rejected box an accept decision (``labeler.store.spot_checks``), so the next
export follows the reviewer; the estimates still use the answers about the automatic labels.

Plain functions with keyword-only arguments over a ``Workspace``; the report is JSON-ready.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from labeler.core.exceptions import InputError
from labeler.review.stats import (
    LabelForStats,
    SpotCheck,
    next_spot_checks,
    precision_summary,
    threshold_curve,
)
from labeler.store.spot_checks import (
    SPOT_CHECK_STRATA,
    AutomaticLabel,
    SpotCheckAnswer,
    SpotCheckRecord,
)
from labeler.store.workspace import Workspace

__all__ = [
    "DEFAULT_THRESHOLDS",
    "BlindSpotCheck",
    "answer_spot_check",
    "draw_spot_checks",
    "pending_spot_checks",
    "spot_check_report",
]

# Candidate accept thresholds for the report's precision-against-threshold curve.
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(step / 20, 2) for step in range(21))

# The reasons labeler.route.route gives when the accept/reject thresholds decided a label; only
# those labels move when the accept threshold moves (threshold_curve wants exactly them).
_THRESHOLD_REASONS = ("verifier said ", "verifier uncertain ")


@dataclass(frozen=True)
class BlindSpotCheck:
    """What a reviewer sees of a check: the box and its class, nothing of the verdict. Answer it
    with ``version`` as ``base_version``."""

    proposal_id: int
    image_sha256: str
    class_name: str
    xyxy: tuple[float, float, float, float]
    version: int

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "xyxy": list(self.xyxy)}


@dataclass(frozen=True)
class _View:
    """The latest run's automatic labels and every stored check, each check classified."""

    run_id: int | None
    labels: dict[int, AutomaticLabel]
    checks: dict[int, SpotCheckRecord]
    kind: dict[int, str]  # proposal id → "pending", "answered", "withdrawn" or "outdated"

    def in_frame(self, label: AutomaticLabel) -> bool:
        """Whether the label is one a spot check speaks for (see the module's docstring)."""
        kind = self.kind.get(label.proposal_id)
        return kind == "answered" or (label.decision_version == 0 and kind != "withdrawn")

    def counted(self) -> list[SpotCheck]:
        """The answers that count in the latest run, with the labels' current P(yes)."""
        return [
            SpotCheck(
                label_id=pid,
                class_name=self.labels[pid].class_name,
                stratum=check.stratum,
                yes_prob=self.labels[pid].yes_prob,
                correct=check.answer == "correct",
            )
            for pid, check in self.checks.items()
            if self.kind[pid] == "answered"
        ]


def _view(workspace: Workspace) -> _View:
    run_id = workspace.latest_run_id()
    labels = {} if run_id is None else {
        label.proposal_id: label for label in workspace.automatic_labels(run_id)
    }  # fmt: skip
    checks = workspace.spot_checks()
    kind: dict[int, str] = {}
    for pid, check in checks.items():
        label = labels.get(pid)
        if label is None or label.status != check.stratum:
            kind[pid] = "outdated"
        elif check.answer is not None:
            kind[pid] = "answered"
        elif label.decision_version != check.decision_version:
            kind[pid] = "withdrawn"
        else:
            kind[pid] = "pending"
    return _View(run_id, labels, checks, kind)


def _blind_order(check: SpotCheckRecord) -> bytes:
    # Strata and classes interleaved, so a check's place in the list says nothing about it.
    return hashlib.sha256(f"{check.seed}:{check.proposal_id}".encode()).digest()


def _pending(view: _View, *, skip: set[int] | None = None) -> list[BlindSpotCheck]:
    pending = [
        check
        for pid, check in view.checks.items()
        if view.kind[pid] == "pending" and (skip is None or pid not in skip)
    ]
    return [
        BlindSpotCheck(
            proposal_id=check.proposal_id,
            image_sha256=view.labels[check.proposal_id].image_sha256,
            class_name=view.labels[check.proposal_id].class_name,
            xyxy=view.labels[check.proposal_id].xyxy,
            version=check.version,
        )
        for check in sorted(pending, key=_blind_order)
    ]


def draw_spot_checks(
    workspace: Workspace,
    *,
    per_class: int,
    seed: int,
    strata: Sequence[str] = SPOT_CHECK_STRATA,
) -> list[BlindSpotCheck]:
    """Draw checks until each class of each stratum ("accepted", "rejected") of the latest run has
    ``per_class`` of them (all its eligible labels when it has fewer); store the new ones and
    return every pending check, blind, in an order that mixes strata and classes.

    Each class's checks follow one seeded order (``labeler.review.stats.next_spot_checks``) over
    the class's automatic labels of that stratum, so the same workspace and seed draw the same
    boxes, and asking again with a larger ``per_class`` keeps the earlier picks and adds the next
    ones in that order. Not eligible, and skipped in the order: boxes a reviewer already decided
    (in the review queue or anywhere else: their automatic label is not what a blind check
    measures) and boxes that already have a check. A withdrawn or outdated check does not count
    towards ``per_class``, so a replacement is drawn.

    Raises InputError before the first run, for ``per_class`` below 1, a negative ``seed`` or a
    stratum other than "accepted" and "rejected".
    """
    if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class < 1:
        raise InputError(f"per_class must be a whole number of at least 1, got {per_class!r}")
    if isinstance(strata, str) or not strata or any(s not in SPOT_CHECK_STRATA for s in strata):
        raise InputError(f"strata must list some of {', '.join(SPOT_CHECK_STRATA)}, got {strata!r}")
    view = _view(workspace)
    if view.run_id is None:
        raise InputError("this workspace has no routed labels yet: run a label job first")
    live = Counter(
        (check.stratum, view.labels[pid].class_name)
        for pid, check in view.checks.items()
        if view.kind[pid] in ("pending", "answered")
    )
    picks: list[tuple[int, str, float | None]] = []
    for stratum in dict.fromkeys(strata):
        by_class: dict[str, list[AutomaticLabel]] = {}
        for label in view.labels.values():
            if label.status == stratum:
                by_class.setdefault(label.class_name, []).append(label)
        for class_name, members in sorted(by_class.items()):
            needed = per_class - live[(stratum, class_name)]
            if needed < 1:
                continue
            # The order runs over all of the class's labels of the stratum, eligible or not, so
            # that a decision made between two draws does not reshuffle the rest.
            not_eligible = [
                m.proposal_id
                for m in members
                if m.proposal_id in view.checks or m.decision_version != 0
            ]
            chosen = next_spot_checks(
                [LabelForStats(m.proposal_id, class_name, m.yes_prob, stratum) for m in members],
                not_eligible,
                per_class=needed,
                seed=seed,
            )
            picks.extend((pid, stratum, view.labels[pid].yes_prob) for pid in chosen)
    if picks:
        workspace.add_spot_checks(picks, run_id=view.run_id, seed=seed)
    return _pending(_view(workspace))


def pending_spot_checks(
    workspace: Workspace, *, reviewer: str, limit: int = 50
) -> list[BlindSpotCheck]:
    """Up to ``limit`` unanswered checks for ``reviewer``, blind (box, class, image and version;
    no verdict, P(yes) or stratum), leaving out boxes another reviewer holds a claim on (claim
    what you hand out with ``Workspace.claim``)."""
    if not reviewer:
        raise InputError("reviewer must be named")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit must be a whole number of at least 1, got {limit!r}")
    view = _view(workspace)
    return _pending(view, skip=workspace.claimed_by_others(reviewer))[:limit]


def answer_spot_check(
    workspace: Workspace,
    proposal_id: int,
    *,
    correct: bool,
    base_version: int,
    reviewer: str,
) -> SpotCheckAnswer:
    """Record ``reviewer``'s answer on a check, made on its ``base_version``, with the decision it
    stands for (reject an auto-accepted box answered incorrect, accept an auto-rejected box
    answered correct), in one transaction: a refused answer records nothing.

    Raises StaleDecision (``current``: the check's ``SpotCheckAnswer``) when another answer came
    first, StaleDecision (``current``: the box's ``HumanState``) when a reviewer decided the box
    outside the check meanwhile, and InputError for a box without a check or one whose
    automatic status changed in a later run (an outdated check).
    """
    return workspace.answer_spot_check(
        proposal_id, correct=correct, base_version=base_version, reviewer=reviewer
    )


def _plain(value: Any) -> Any:
    """Dataclass results as JSON-ready values: dicts, lists, numbers, strings and None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def spot_check_report(
    workspace: Workspace,
    *,
    confidence: float = 0.95,
    target_half_width: float = 0.05,
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> dict[str, Any]:
    """The numbers the spot checks give for the latest run, as plain JSON-ready values.

    ``precision`` (over the auto-accepted labels) and ``rejected_share_correct`` (over the
    auto-rejected ones) are ``labeler.review.stats.precision_summary``'s stratified estimates,
    ``classes`` its per-class results, weighed against the population counts of the frame (see
    the module's docstring); ``threshold_curve`` is ``labeler.review.stats.threshold_curve`` over
    the frame's labels that the accept threshold decides. ``checks`` counts the stored checks by
    kind ("answered" are the ones that count), ``left_out`` the automatic labels of each stratum
    that reviewers decided outside spot checks. Before the first run, every count is 0.
    """
    view = _view(workspace)
    frame = [label for label in view.labels.values() if view.in_frame(label)]
    population: dict[str, Counter[str]] = {stratum: Counter() for stratum in SPOT_CHECK_STRATA}
    left_out: Counter[str] = Counter()
    for label in view.labels.values():
        if label.status in population:
            if view.in_frame(label):
                population[label.status][label.class_name] += 1
            else:
                left_out[label.status] += 1
    counted = view.counted()
    summary = precision_summary(
        counted,
        accepted_per_class=population["accepted"],
        rejected_per_class=population["rejected"],
        confidence=confidence,
        target_half_width=target_half_width,
    )
    by_threshold = [
        LabelForStats(label.proposal_id, label.class_name, label.yes_prob, label.status)
        for label in frame
        if label.yes_prob is not None and label.reason.startswith(_THRESHOLD_REASONS)
    ]
    curve_ids = {label.label_id for label in by_threshold}
    curve = threshold_curve(
        by_threshold,
        [check for check in counted if check.label_id in curve_ids],
        thresholds=thresholds,
        confidence=confidence,
    )
    kinds = Counter(view.kind.values())
    return {
        "run_id": view.run_id,
        "confidence": summary.confidence,
        "target_half_width": summary.target_half_width,
        "checks": {
            "drawn": len(view.checks),
            **{kind: kinds[kind] for kind in ("answered", "pending", "withdrawn", "outdated")},
        },
        "left_out": {stratum: left_out[stratum] for stratum in SPOT_CHECK_STRATA},
        "precision": _plain(summary.precision),
        "rejected_share_correct": _plain(summary.rejected_share_correct),
        "classes": _plain(summary.classes),
        "threshold_curve": _plain(curve),
    }
