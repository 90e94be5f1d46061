"""The review summary, counted in SQL (the run's label counts, with only the decided boxes looked
at one by one), gives what looking at every box gives, on any set of images."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from labeler.review.queue import _views_with_boxes, review_summary
from labeler.route import RouteThresholds, Status
from labeler.store.workspace import Workspace
from tests.labeler.store.review_workspace import NAMES, generated_workspace

THRESHOLDS = RouteThresholds(review_below_score=0.4)


def summary_box_by_box(
    workspace: Workspace,
    *,
    image_sha256s: Sequence[str],
    class_names: Sequence[str],
    thresholds: RouteThresholds,
) -> dict[str, Any]:
    """The summary's definition: every box of the latest run on the images, as it stands."""
    run_id = workspace.latest_run_id()
    boxes = [] if run_id is None else workspace.review_boxes(run_id, image_sha256s=image_sha256s)
    sizes = workspace.image_sizes(image_sha256s)
    labels: Counter[str] = Counter()
    per_class: dict[str, Counter[str]] = {name: Counter() for name in class_names}
    for view, box in _views_with_boxes(workspace, boxes, class_names, sizes):
        labels[view["status"]] += 1
        counts = per_class.setdefault(view["class"], Counter())
        counts[view["status"]] += 1
        if box.auto_status == Status.NEEDS_REVIEW:
            decided = view["decided_by"] == "human"
            labels["needs_review_decided" if decided else "needs_review_left"] += 1
            counts["needs_review_decided" if decided else "needs_review_left"] += 1
        labels["decided"] += view["decided_by"] == "human"
        labels["added"] += box.added
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


@pytest.mark.parametrize("share", [1.0, 0.75, 0.25, 0.0])
@pytest.mark.parametrize(
    "class_names",
    [NAMES, NAMES[:2]],  # fewer names than the boxes' classes: those go by their own names
)
def test_the_summary_counts_what_every_box_shows(
    tmp_path: Path, share: float, class_names: Sequence[str]
) -> None:
    generated = generated_workspace(tmp_path / "ws")
    images = generated.image_sha256s[: round(len(generated.image_sha256s) * share)]
    with Workspace(generated.directory) as workspace:
        for asked in (images, [*images, "not-an-image"]):
            summary = review_summary(
                workspace, image_sha256s=asked, class_names=class_names, thresholds=THRESHOLDS
            )
            expected = summary_box_by_box(
                workspace, image_sha256s=asked, class_names=class_names, thresholds=THRESHOLDS
            )
            assert summary == expected
        if share == 1.0:
            assert summary["decided"] > 0 and summary["added"] == 2
            assert summary["needs_review_left"] > 0 and summary["needs_review_decided"] > 0
        # A run labeled before its counts were kept is counted from its labels.
        workspace._db.execute("DELETE FROM run_label_counts")
        summary = review_summary(
            workspace, image_sha256s=images, class_names=class_names, thresholds=THRESHOLDS
        )
        assert summary == summary_box_by_box(
            workspace, image_sha256s=images, class_names=class_names, thresholds=THRESHOLDS
        )


def test_a_workspace_without_runs_has_an_empty_summary(tmp_path: Path) -> None:
    with Workspace(tmp_path / "ws") as workspace:
        workspace.record_image("img", (10, 10))
        summary = review_summary(
            workspace, image_sha256s=["img"], class_names=NAMES, thresholds=THRESHOLDS
        )
        assert summary == summary_box_by_box(
            workspace, image_sha256s=["img"], class_names=NAMES, thresholds=THRESHOLDS
        )
        assert summary["run_id"] is None and sum(summary["labels"].values()) == 0
