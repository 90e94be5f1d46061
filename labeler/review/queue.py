"""The review queue over a workspace: what a reviewer is handed next, what they see of an image,
and how their decisions (batched) and added boxes are checked and recorded.

Pure functions of a ``Workspace`` and the ontology's class names; every answer is JSON-ready
(dicts of str, int, float, lists and None). The HTTP service's review routes and the local review
page are thin layers over them. A box's *effective* status is the pipeline's: a reviewer's
decision where there is one, else the run's automatic route (``labeler.pipeline._route``).
Nothing here builds markup: class names, questions and the verifier's answers go out as data.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from labeler.core.exceptions import InputError, StaleDecision
from labeler.export.dataset import unwritable_reasons
from labeler.route import RouteThresholds, Status
from labeler.segment.spec import mask_key
from labeler.segment.stage import box_text
from labeler.store.decisions import Action, HumanState, ReviewBox
from labeler.store.workspace import Workspace

__all__ = [
    "MAX_DECISIONS",
    "DecisionOutcome",
    "DecisionRequest",
    "add_box",
    "apply_decisions",
    "box_masks",
    "check_decisions",
    "image_boxes",
    "next_items",
    "review_summary",
    "state_dict",
]

# The most decisions one batch may carry.
MAX_DECISIONS = 500
# Decision actions a batch may carry: adding a box is ``add_box``'s.
_BATCH_ACTIONS = frozenset(action.value for action in Action if action is not Action.ADD)


@dataclass(frozen=True)
class DecisionRequest:
    """One reviewer decision on a box, made on its ``base_version`` (0: never decided)."""

    proposal_id: int
    action: str
    base_version: int
    class_id: int | None = None
    xyxy: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class DecisionOutcome:
    """What became of a batch: one result per decision, in order (``state`` where applied;
    ``stale`` and ``current`` where refused), and whether any was refused."""

    results: list[dict[str, Any]]
    refused: int

    @property
    def all_applied(self) -> bool:
        return self.refused == 0


def state_dict(state: HumanState | None, class_names: Sequence[str]) -> dict[str, Any] | None:
    """A box's state after its latest decision, as JSON (None stays None). ``status`` null:
    every decision was undone, the automatic route decides; ``class_id``/``xyxy`` null: the
    proposal's own."""
    if state is None:
        return None
    return {
        "proposal_id": state.proposal_id,
        "version": state.version,
        "action": state.action,
        "status": state.status,
        "class_id": state.class_id,
        "class": _name(state.class_id, class_names),
        "xyxy": None if state.xyxy is None else list(state.xyxy),
        "reviewer": state.reviewer,
        "made_at": state.made_at,
    }


def _name(class_id: int | None, class_names: Sequence[str]) -> str | None:
    if class_id is None:
        return None
    return class_names[class_id] if 0 <= class_id < len(class_names) else None


def _box_view(
    box: ReviewBox,
    state: HumanState | None,
    class_names: Sequence[str],
    image_wh: tuple[int, int] | None,
) -> dict[str, Any] | None:
    """One box as it stands now (None: an added box whose add was undone, so no box)."""
    decided = state is not None and state.status is not None
    if box.added and not decided:
        return None
    class_id, xyxy = box.class_id, box.xyxy
    status, reason, decided_by = box.auto_status, box.reason, "auto"
    if state is not None and state.status is not None:
        class_id = state.class_id if state.class_id is not None else class_id
        xyxy = state.xyxy if state.xyxy is not None else xyxy
        status, decided_by = state.status, "human"
        reason = f"reviewer {state.reviewer}: {state.action}"
        # As the pipeline routes it: a box the dataset cannot hold is never accepted.
        if status == Status.ACCEPTED and image_wh is not None:
            problem = unwritable_reasons([xyxy], image_wh)[0]
            if problem is not None:
                status, reason = Status.REJECTED.value, problem
    return {
        "proposal_id": box.proposal_id,
        "version": state.version if state is not None else 0,
        "class_id": class_id,
        "class": _name(class_id, class_names) or box.class_name,
        "xyxy": list(xyxy),
        "status": status,
        "reason": reason,
        "decided_by": decided_by,
        "reviewer": state.reviewer if decided and state is not None else None,
        "auto_status": box.auto_status,
        "added": box.added,
        "score": None if box.added else round(box.score, 4),
        "yes_prob": box.yes_prob,
    }


def box_masks(
    workspace: Workspace, image_sha256s: Sequence[str], *, run_id: int | None = None
) -> dict[tuple[str, str], dict[str, Any]]:
    """The masks the run's segmenter stored for these images, by (image, box text): what a
    reviewer sees over each box. Empty when the run made no masks (``--masks`` not given).

    A mask is stored for the box it was computed on, so a box a reviewer moved since has none
    (its old mask would mislead); the next run computes its mask.
    """
    run_id = workspace.latest_run_id() if run_id is None else run_id
    config = workspace.run_config(run_id) if run_id is not None else None
    spec = (config or {}).get("masks")
    if not spec:
        return {}
    key = mask_key(spec)
    return {
        (sha, box): rle
        for sha in dict.fromkeys(image_sha256s)
        for box, rle in workspace.get_masks(sha, key).items()
    }


def _mask_of(
    masks: dict[tuple[str, str], dict[str, Any]] | None,
    image_sha256: str,
    xyxy: Sequence[float],
) -> dict[str, Any] | None:
    return masks.get((image_sha256, box_text(xyxy))) if masks else None


def _run_id(workspace: Workspace) -> int:
    run_id = workspace.latest_run_id()
    if run_id is None:
        raise InputError("nothing to review: no run has routed labels in this workspace yet")
    return run_id


def image_boxes(
    workspace: Workspace, image_sha256: str, *, class_names: Sequence[str]
) -> dict[str, Any]:
    """Every box of one image in the latest run, as it stands now, and the image's size
    (``image_wh`` null: the image was never decoded, so it has no boxes)."""
    run_id = _run_id(workspace)
    sizes = workspace.image_sizes([image_sha256])
    boxes = workspace.review_boxes(run_id, image_sha256s=[image_sha256])
    masks = box_masks(workspace, [image_sha256], run_id=run_id)
    return {
        "image_sha256": image_sha256,
        "image_wh": list(sizes[image_sha256]) if image_sha256 in sizes else None,
        "boxes": [
            view for view, _ in _views_with_boxes(workspace, boxes, class_names, sizes, masks)
        ],
    }


def next_items(
    workspace: Workspace,
    *,
    class_names: Sequence[str],
    thresholds: RouteThresholds,
    reviewer: str,
    claim_s: float,
    image_url: Callable[[str], str],
    limit: int = 20,
    classes: Sequence[str] = (),
    reasons: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The next ``limit`` undecided ``needs_review`` boxes for ``reviewer``, most uncertain first
    (``Workspace.review_candidates``), each claimed for them for ``claim_s`` seconds so that
    colleagues' queues skip it; boxes claimed by others are left out, the reviewer's own come
    again. ``classes`` and ``reasons`` (prefixes) filter. Each item carries the evidence (the
    detector's score, P(yes), the question and the verifier's raw answer, the routing reason),
    ``image_url(sha256)`` and every other box of its image as it stands now."""
    unknown = [name for name in classes if name not in class_names]
    if unknown:
        raise InputError(
            f"class: {', '.join(map(repr, unknown))} is not a class of this job "
            f"(its classes: {', '.join(class_names)})"
        )
    run_id = _run_id(workspace)
    middle = (thresholds.accept + thresholds.reject) / 2
    picked: list[int] = []
    seen: set[int] = set()
    # A colleague may claim a candidate between the read and the claim: ask again for the rest.
    for _ in range(3):
        candidates = workspace.review_candidates(
            run_id=run_id,
            middle=middle,
            class_names=list(classes),
            reason_prefixes=list(reasons),
            exclude_claimed_for=reviewer,
            limit=limit - len(picked) + len(seen),
        )
        fresh = [c for c in candidates if c.proposal_id not in seen]
        for candidate in fresh:
            seen.add(candidate.proposal_id)
            if workspace.claim(candidate.proposal_id, reviewer=reviewer, ttl_s=claim_s):
                picked.append(candidate.proposal_id)
            if len(picked) == limit:
                break
        if len(picked) == limit or not fresh:
            break
    if not picked:
        return []
    wanted = workspace.review_boxes(run_id, proposal_ids=picked)
    by_id = {box.proposal_id: box for box in wanted}
    images = list(dict.fromkeys(box.image_sha256 for box in wanted))
    sizes = workspace.image_sizes(images)
    masks = box_masks(workspace, images, run_id=run_id)
    views_by_image: dict[str, list[dict[str, Any]]] = {}
    for view, box in _views_with_boxes(
        workspace, workspace.review_boxes(run_id, image_sha256s=images), class_names, sizes, masks
    ):
        views_by_image.setdefault(box.image_sha256, []).append(view)
    states = workspace.human_states(picked)
    items = []
    for proposal_id in picked:
        box = by_id[proposal_id]
        state = states.get(proposal_id)
        items.append(
            {
                "proposal_id": proposal_id,
                "version": state.version if state is not None else 0,
                "image_sha256": box.image_sha256,
                "image_url": image_url(box.image_sha256),
                "image_wh": list(sizes[box.image_sha256]) if box.image_sha256 in sizes else None,
                "class_id": box.class_id,
                "class": _name(box.class_id, class_names) or box.class_name,
                "xyxy": list(box.xyxy),
                "score": round(box.score, 4),
                "yes_prob": box.yes_prob,
                "question": box.question,
                "answer": box.answer,
                "reason": box.reason,
                "mask": _mask_of(masks, box.image_sha256, box.xyxy),
                "boxes": [
                    view
                    for view in views_by_image.get(box.image_sha256, [])
                    if view["proposal_id"] != proposal_id
                ],
            }
        )
    return items


def _views_with_boxes(
    workspace: Workspace,
    boxes: Sequence[ReviewBox],
    class_names: Sequence[str],
    sizes: dict[str, tuple[int, int]],
    masks: dict[tuple[str, str], dict[str, Any]] | None = None,
) -> list[tuple[dict[str, Any], ReviewBox]]:
    states = workspace.human_states(box.proposal_id for box in boxes)
    pairs = []
    for box in boxes:
        view = _box_view(box, states.get(box.proposal_id), class_names, sizes.get(box.image_sha256))
        if view is not None:
            view["mask"] = _mask_of(masks, box.image_sha256, view["xyxy"])
            pairs.append((view, box))
    return pairs


def _checked_box(
    xyxy: Sequence[float], image_wh: tuple[int, int] | None, where: str
) -> tuple[float, float, float, float]:
    """``xyxy`` clipped to the image, or InputError naming ``where`` when the dataset could not
    hold it (``labeler.export.dataset.writable_boxes``' rule)."""
    values = [float(v) for v in xyxy]
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{where}: xyxy must be 4 finite numbers (x1, y1, x2, y2), got {values}")
    x1, y1, x2, y2 = values
    if x2 <= x1 or y2 <= y1:
        raise InputError(f"{where}: xyxy must have x2 > x1 and y2 > y1, got {values}")
    if image_wh is None:
        raise InputError(f"{where}: the image was never decoded, so it holds no boxes")
    problem = unwritable_reasons([values], image_wh)[0]
    if problem is not None:
        raise InputError(f"{where}: xyxy {values}: {problem}")
    width, height = image_wh
    return (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )


def _check_class(class_id: int, class_names: Sequence[str], where: str) -> None:
    if not 0 <= class_id < len(class_names):
        raise InputError(
            f"{where}: class_id {class_id} is not a class of this job (0 to "
            f"{len(class_names) - 1}: {', '.join(class_names)})"
        )


def check_decisions(
    workspace: Workspace, decisions: Sequence[DecisionRequest], *, class_names: Sequence[str]
) -> list[DecisionRequest]:
    """The batch as it will be recorded (boxes clipped to their image), or InputError naming the
    first decision that is wrong in itself: an unknown action, box or class, a relabel without
    a class, an edit without a box, a box the dataset could not hold. Nothing is recorded."""
    if len(decisions) > MAX_DECISIONS:
        raise InputError(f"decisions: at most {MAX_DECISIONS} a request, got {len(decisions)}")
    run_id = _run_id(workspace)
    boxes = {
        box.proposal_id: box
        for box in workspace.review_boxes(run_id, proposal_ids=[d.proposal_id for d in decisions])
    }
    sizes = workspace.image_sizes({box.image_sha256 for box in boxes.values()})
    checked = []
    for index, decision in enumerate(decisions):
        where = f"decisions[{index}] (proposal {decision.proposal_id})"
        if decision.action not in _BATCH_ACTIONS:
            raise InputError(
                f"{where}: action must be one of {', '.join(sorted(_BATCH_ACTIONS))}, got "
                f"{decision.action!r} (add boxes with POST .../review/boxes)"
            )
        box = boxes.get(decision.proposal_id)
        if box is None:
            raise InputError(f"{where}: no such box in this job's latest run")
        if decision.base_version < 0:
            raise InputError(f"{where}: base_version must be 0 or more")
        if decision.action == Action.RELABEL and decision.class_id is None:
            raise InputError(f"{where}: a relabel needs class_id")
        if decision.action == Action.EDIT and decision.xyxy is None:
            raise InputError(f"{where}: an edit needs xyxy")
        if decision.class_id is not None:
            _check_class(decision.class_id, class_names, where)
        xyxy = decision.xyxy
        if xyxy is not None:
            xyxy = _checked_box(xyxy, sizes.get(box.image_sha256), where)
        checked.append(
            DecisionRequest(
                proposal_id=decision.proposal_id,
                action=decision.action,
                base_version=decision.base_version,
                class_id=decision.class_id,
                xyxy=xyxy,
            )
        )
    return checked


def apply_decisions(
    workspace: Workspace,
    decisions: Sequence[DecisionRequest],
    *,
    reviewer: str,
    class_names: Sequence[str],
) -> DecisionOutcome:
    """Check the batch (``check_decisions``: InputError and nothing recorded when one is wrong
    in itself), then record its decisions one by one, in order, each in its own transaction. A
    decision made on a version another decision replaced is refused (``"stale": true`` and the
    box's ``current`` state) and the others still apply, so a client can reconcile; so is one
    the box's state does not allow (an undo with nothing left to undo: ``"stale": false``, an
    ``error``, and ``current``)."""
    results: list[dict[str, Any]] = []
    refused = 0
    for decision in check_decisions(workspace, decisions, class_names=class_names):
        try:
            state = workspace.decide(
                decision.proposal_id,
                action=decision.action,
                base_version=decision.base_version,
                reviewer=reviewer,
                class_id=decision.class_id,
                xyxy=decision.xyxy,
            )
        except StaleDecision as stale:
            refused += 1
            current = stale.current if isinstance(stale.current, HumanState) else None
            results.append(
                {
                    "proposal_id": decision.proposal_id,
                    "stale": True,
                    "current": state_dict(current, class_names),
                }
            )
            continue
        except InputError as error:
            refused += 1
            current = workspace.human_states([decision.proposal_id]).get(decision.proposal_id)
            results.append(
                {
                    "proposal_id": decision.proposal_id,
                    "stale": False,
                    "error": str(error),
                    "current": state_dict(current, class_names),
                }
            )
            continue
        results.append(
            {"proposal_id": decision.proposal_id, "state": state_dict(state, class_names)}
        )
    return DecisionOutcome(results=results, refused=refused)


def add_box(
    workspace: Workspace,
    *,
    image_sha256: str,
    class_id: int,
    xyxy: Sequence[float],
    reviewer: str,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Add a box the detector missed, accepted as ``class_id``; its state (version 1). The box is
    clipped to the image; InputError for an unknown class or image, or a box the dataset could
    not hold."""
    _check_class(class_id, class_names, "class_id")
    sizes = workspace.image_sizes([image_sha256])
    if image_sha256 not in sizes:
        raise InputError(f"image_sha256: no decoded image {image_sha256} in this job")
    box = _checked_box(xyxy, sizes[image_sha256], "xyxy")
    state = workspace.add_box(
        image_sha256,
        class_id=class_id,
        class_name=class_names[class_id],
        xyxy=box,
        reviewer=reviewer,
    )
    result = state_dict(state, class_names)
    assert result is not None
    return result


def review_summary(
    workspace: Workspace,
    *,
    image_sha256s: Sequence[str],
    class_names: Sequence[str],
    thresholds: RouteThresholds,
) -> dict[str, Any]:
    """Where the review of the images ``image_sha256s`` stands in the latest run: boxes by
    effective status (overall and per class), how many the route sent to review are still
    undecided (``needs_review_left``) and how many reviewers decided (``needs_review_decided``),
    every box reviewers decided (``decided``) and added (``added``).

    Counted, not listed: the run's labels by class and route (``Workspace.label_counts``), with
    only the boxes reviewers decided looked at one by one."""
    run_id = workspace.latest_run_id()
    labels: Counter[str] = Counter()
    per_class: dict[str, Counter[str]] = {name: Counter() for name in class_names}
    extra_classes: dict[str, Counter[str]] = {}

    def count(view: dict[str, Any], auto_status: str | None, added: bool, boxes: int = 1) -> None:
        name = view["class"]
        counts = per_class[name] if name in per_class else extra_classes.setdefault(name, Counter())
        labels[view["status"]] += boxes
        counts[view["status"]] += boxes
        if auto_status == Status.NEEDS_REVIEW:
            decided = view["decided_by"] == "human"
            labels["needs_review_decided" if decided else "needs_review_left"] += boxes
            counts["needs_review_decided" if decided else "needs_review_left"] += boxes
        labels["decided"] += boxes * (view["decided_by"] == "human")
        labels["added"] += boxes * added

    if run_id is not None:
        wanted = set(image_sha256s)
        routed = Counter(workspace.label_counts(run_id, wanted))
        states = {
            pid: state
            for pid, state in workspace.human_states().items()
            if state.status is not None
        }
        boxes = [
            box
            for box in workspace.review_boxes(run_id, proposal_ids=list(states))
            if box.image_sha256 in wanted
        ]
        sizes = workspace.image_sizes({box.image_sha256 for box in boxes})
        for box in boxes:
            view = _box_view(box, states[box.proposal_id], class_names, sizes.get(box.image_sha256))
            assert view is not None  # decided, so a box
            count(view, box.auto_status, box.added)
            if not box.added:
                routed[(box.class_id, box.class_name, str(box.auto_status))] -= 1
        # Every other box stands as the route left it.
        for (class_id, class_name, status), boxes_left in routed.items():
            view = {
                "class": _name(class_id, class_names) or class_name,
                "status": status,
                "decided_by": "auto",
            }
            count(view, status, False, boxes_left)
    for name in sorted(extra_classes):
        per_class[name] = extra_classes[name]
    keys = [status.value for status in Status] + ["needs_review_left", "needs_review_decided"]
    return {
        "run_id": run_id,
        "classes": list(class_names),
        "thresholds": {
            "accept": thresholds.accept,
            "reject": thresholds.reject,
            "review_below_score": thresholds.review_below_score,
        },
        "needs_review_left": labels["needs_review_left"],
        "needs_review_decided": labels["needs_review_decided"],
        "decided": labels["decided"],
        "added": labels["added"],
        "labels": {status.value: labels[status.value] for status in Status},
        "per_class": {
            name: {key: counts[key] for key in keys} for name, counts in per_class.items()
        },
    }
