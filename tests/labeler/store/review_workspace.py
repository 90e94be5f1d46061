"""A generated workspace for the review queue's tests: two routed runs over a few images, with
ties everywhere the queue's order could go wrong (equal P(yes), equal scores, P(yes) on both
sides of the middle at the same distance, no P(yes) at all), and reviewers' history on top
(decisions of every kind, undone ones, added boxes, claims by two reviewers, expired ones)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from labeler.core.detections import Detections
from labeler.core.exceptions import InputError
from labeler.route import RouteThresholds, route
from labeler.store.workspace import LabelRow, Workspace

NAMES = ("cat", "dog", "bird")
KEY = "propose-key"
IMAGE_WH = (100, 80)
# Discrete values, as a verifier's calibrated answers often are, so that many boxes tie; 0.4 and
# 0.6 lie at the same distance from 0.5; None is a failed request or an unclear answer.
YES_PROBS = (None, 0.05, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.95)
SCORES = (0.3, 0.5, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Generated:
    directory: Path
    image_sha256s: list[str]
    proposal_ids: list[int]
    latest_run: int


def _verdict(rng: np.random.Generator, key: str, question: str) -> dict[str, object]:
    pick = YES_PROBS[int(rng.integers(len(YES_PROBS)))]
    error = None
    if pick is None and rng.uniform() < 0.5:
        error = "HTTPStatusError: 503"
    return {
        "cache_key": key,
        "answer": "unknown" if pick is None else ("yes" if pick >= 0.5 else "no"),
        "yes_prob": pick,
        "raw": "" if error else "Maybe.",
        "error": error,
        "model_id": "fake",
        "template_id": "t",
        "template_hash": "h",
        "mode": "crop",
        "question": question,
    }


def route_run(workspace: Workspace, proposal_ids: list[int], thresholds: RouteThresholds) -> int:
    """Route every proposal from its stored score and verdict (as the pipeline's ``_route``
    does) into a new run; its id."""
    run_id = workspace.start_run({"thresholds": asdict(thresholds)})
    rows = []
    for pid in proposal_ids:
        (score,) = workspace._db.execute(
            "SELECT score FROM proposals WHERE id=?", (pid,)
        ).fetchone()
        key = f"verdict-{pid}"
        stored = workspace.get_verdicts([key]).get(key)
        decision = route(
            detector_score=float(score),
            verified=stored is not None,
            yes_prob=None if stored is None else stored.yes_prob,
            error=None if stored is None else stored.error,
            thresholds=thresholds,
        )
        rows.append(LabelRow(pid, decision.status.value, decision.reason, key if stored else None))
    workspace.save_labels(run_id, rows)
    workspace.finish_run(run_id, {})
    return run_id


def generated_workspace(
    directory: Path, *, images: int = 8, per_image: int = 30, seed: int = 0
) -> Generated:
    """The workspace described above, closed; reopen it with ``Workspace(directory)``."""
    rng = np.random.default_rng(seed)
    sha256s = [f"img-{i:02d}" for i in range(images)]
    ids: list[int] = []
    with Workspace(directory) as workspace:
        for sha in sha256s:
            workspace.record_image(sha, IMAGE_WH)
            x1 = rng.uniform(0, 60, per_image)
            y1 = rng.uniform(0, 40, per_image)
            xyxy = np.stack([x1, y1, x1 + 20, y1 + 20], axis=1).astype(np.float32)
            class_id = rng.integers(0, len(NAMES), per_image)
            score = np.asarray([SCORES[i] for i in rng.integers(0, len(SCORES), per_image)])
            workspace.save_proposals(sha, KEY, Detections(xyxy, class_id, score), NAMES)
            stored = workspace.load_proposals(sha, KEY)
            ids.extend(int(pid) for pid in stored.data["proposal_id"])
            # A few boxes are not verified (no verdict: routed on the detector's score alone).
            workspace.save_verdicts(
                [
                    _verdict(rng, f"verdict-{pid}", f"Is this a {NAMES[int(c)]}?")
                    for pid, c in zip(stored.data["proposal_id"], stored.class_id, strict=True)
                    if rng.uniform() < 0.95
                ]
            )
        # The first run routes with a narrow band, the second (the latest) with the defaults.
        route_run(workspace, ids, RouteThresholds(accept=0.6, reject=0.4, review_below_score=0.4))
        latest = route_run(workspace, ids, RouteThresholds(review_below_score=0.4))
        add_history(workspace, ids, sha256s, rng)
    return Generated(directory, sha256s, ids, latest)


def add_history(
    workspace: Workspace, ids: list[int], sha256s: list[str], rng: np.random.Generator
) -> None:
    """Reviewers' decisions of every kind on a random third of the boxes (some undone, some
    back to the automatic route), added boxes (one undone), claims by two reviewers."""
    for pid in rng.choice(ids, size=len(ids) // 3, replace=False).tolist():
        version = 0
        for _ in range(int(rng.integers(1, 4))):
            choice = int(rng.integers(0, 6))
            if choice == 5:
                try:
                    state = workspace.decide(pid, action="undo", base_version=version, reviewer="a")
                except InputError:  # nothing left to undo
                    continue
            elif choice == 4:
                # Moved off the image: the dataset cannot hold it, so it counts as rejected.
                state = workspace.decide(
                    pid, action="edit", base_version=version, reviewer="b", xyxy=[200, 5, 230, 25]
                )
            elif choice == 3:
                state = workspace.decide(
                    pid, action="relabel", base_version=version, reviewer="a", class_id=2
                )
            else:
                action = ("accept", "reject", "delete")[choice]
                state = workspace.decide(pid, action=action, base_version=version, reviewer="b")
            version = state.version
    for n, sha in enumerate(sha256s[:3]):
        added = workspace.add_box(
            sha, class_id=n % len(NAMES), class_name=NAMES[n % len(NAMES)],
            xyxy=[5, 5, 30, 30], reviewer="a",
        )  # fmt: skip
        if n == 2:
            workspace.decide(added.proposal_id, action="undo", base_version=1, reviewer="a")
    for pid in rng.choice(ids, size=len(ids) // 5, replace=False).tolist():
        reviewer = ("ana", "ben")[int(rng.integers(0, 2))]
        workspace.claim(pid, reviewer=reviewer, ttl_s=float(rng.choice([-10.0, 600.0])))
