"""The review queue over a workspace, without HTTP: claims, order, batched decisions, the
effective view of an image, the summary; and the route-only run that re-exports decisions."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from labeler.core.exceptions import InputError
from labeler.pipeline import LabelConfig, run_label
from labeler.review.queue import (
    DecisionRequest,
    add_box,
    apply_decisions,
    image_boxes,
    next_items,
    review_summary,
)
from labeler.route import RouteThresholds
from labeler.store.workspace import Workspace
from tests.fakes.vlm_server import FakeVLMServer, Fault
from tests.labeler.test_pipeline import ONTOLOGY, Exploding, ScriptedDetector, make_config

# Every verified box lands between the thresholds: 12 of the 18 go to review (triangles are not
# verified, so they are accepted by the detector alone).
IN_REVIEW = RouteThresholds(accept=1.0, reject=0.0)
NAMES = ONTOLOGY.names


def _labeled(images_dir: Path, tmp_path: Path, server: FakeVLMServer) -> LabelConfig:
    config = replace(make_config(images_dir, tmp_path / "out", server), thresholds=IN_REVIEW)
    report = run_label(config, detector=ScriptedDetector())
    assert report["labels"]["needs_review"] == 12
    return config


def _items(workspace: Workspace, reviewer: str, limit: int) -> list[dict[str, object]]:
    return next_items(
        workspace,
        class_names=NAMES,
        thresholds=IN_REVIEW,
        reviewer=reviewer,
        claim_s=60,
        image_url=lambda sha: f"/images/{sha}",
        limit=limit,
    )


def test_the_queue_hands_each_box_to_one_reviewer_and_decisions_are_reconciled(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    config = _labeled(images_dir, tmp_path, server)
    with Workspace(config.workspace) as workspace:
        ana = _items(workspace, "ana", 5)
        ben = _items(workspace, "ben", 100)
        assert len(ana) == 5 and len(ben) == 7
        assert not {i["proposal_id"] for i in ana} & {i["proposal_id"] for i in ben}
        json.dumps(ana)  # JSON-ready as it is
        first = ana[0]
        assert first["image_url"] == f"/images/{first['image_sha256']}"
        assert first["question"] == "Is this a circle?" or first["class"] == "square"
        assert len(first["boxes"]) == 2  # the image's two other boxes

        pid = int(first["proposal_id"])
        done = apply_decisions(
            workspace,
            [
                DecisionRequest(pid, "relabel", 0, class_id=2),
                DecisionRequest(pid, "accept", 0),  # stale: made on version 0 too
            ],
            reviewer="ana",
            class_names=NAMES,
        )
        assert done.refused == 1 and not done.all_applied
        relabeled, stale = done.results
        assert relabeled["state"]["class"] == "triangle"
        assert stale == {"proposal_id": pid, "stale": True, "current": relabeled["state"]}
        with pytest.raises(InputError, match=r"decisions\[0\].*class_id 7"):
            apply_decisions(
                workspace,
                [DecisionRequest(pid, "relabel", 1, class_id=7)],
                reviewer="ana",
                class_names=NAMES,
            )

        view = image_boxes(workspace, str(first["image_sha256"]), class_names=NAMES)
        mine = next(box for box in view["boxes"] if box["proposal_id"] == pid)
        assert (mine["status"], mine["class"], mine["decided_by"]) == (
            "accepted", "triangle", "human"
        )  # fmt: skip
        added = add_box(
            workspace,
            image_sha256=str(first["image_sha256"]),
            class_id=1,
            xyxy=[2, 2, 10, 10],
            reviewer="ana",
            class_names=NAMES,
        )
        assert added["action"] == "add" and added["class"] == "square"
        summary = review_summary(
            workspace,
            image_sha256s=[str(i["image_sha256"]) for i in ana + ben],
            class_names=NAMES,
            thresholds=IN_REVIEW,
        )
        assert summary["needs_review_left"] == 11 and summary["needs_review_decided"] == 1
        assert summary["decided"] == 2 and summary["added"] == 1
        assert pid not in {i["proposal_id"] for i in _items(workspace, "ana", 100)}


def test_a_route_only_run_exports_decisions_without_models_or_new_questions(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    server.faults = [None, Fault.server_error()]  # one verdict ends in an error
    config = _labeled(images_dir, tmp_path, server)
    with Workspace(config.workspace) as workspace:
        items = _items(workspace, "ana", 100)
        assert items[0]["yes_prob"] is None  # the error comes first
        for item in items[:3]:
            decided = apply_decisions(
                workspace,
                [DecisionRequest(int(item["proposal_id"]), "accept", 0)],
                reviewer="ana",
                class_names=NAMES,
            )
            assert decided.all_applied
    # An image added since has no proposals: a route-only run cannot propose, so it fails.
    shutil.copy(next(images_dir.glob("*.png")), images_dir / "late.png")
    (images_dir / "late.png").write_bytes((images_dir / "late.png").read_bytes() + b"\0")
    calls = len(server.model_requests)
    report = run_label(config, detector=Exploding(), verifier=Exploding(), route_only=True)
    assert len(server.model_requests) == calls  # the error verdict was not asked again
    assert report["verifier"] == {"calls": 0, "cache_hits": 0, "errors": 0}
    assert report["labels_by_decider"]["human"]["accepted"] == 3
    assert report["labels"]["needs_review"] == 12 - 3
    failed = {Path(f["path"]).name: f["error"] for f in report["images"]["failed"]}
    assert failed["late.png"].startswith("not_proposed")
