"""Reviewers' decisions flow into everything that counts: the export, labels.jsonl, review.json
and report.json (split into auto and human), and re-routing never overrides them."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from labeler.pipeline import LabelConfig, run_label
from labeler.route import RouteThresholds
from labeler.store.workspace import Workspace
from tests.fakes.vlm_server import FakeVLMServer
from tests.labeler.test_pipeline import Exploding, ScriptedDetector, make_config


def _labels(out: Path) -> list[dict[str, object]]:
    lines = (out / "labels.jsonl").read_text().splitlines()
    return [label for line in lines for label in json.loads(line)["labels"]]


def _yolo_rows(out: Path) -> list[list[float]]:
    return [
        [float(v) for v in row.split()]
        for path in sorted((out / "labels").rglob("*.txt"))
        for row in path.read_text().splitlines()
    ]


def test_decisions_shape_the_dataset_and_survive_rerouting(
    images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    out = tmp_path / "out"
    config: LabelConfig = make_config(images_dir, out, server)
    first = run_label(config, detector=ScriptedDetector())
    assert first["labels"] == {"accepted": 12, "rejected": 6, "needs_review": 0}
    assert first["labels_by_decider"]["human"] == {"accepted": 0, "rejected": 0, "needs_review": 0}
    by_class: dict[str, list[dict[str, object]]] = {}
    for label in _labels(out):
        by_class.setdefault(str(label["class"]), []).append(label)
    square, circle, other_circle, triangle = (
        by_class["square"][0], by_class["circle"][0], by_class["circle"][1], by_class["triangle"][0]
    )  # fmt: skip
    assert (square["status"], circle["status"]) == ("rejected", "accepted")

    with Workspace(config.workspace) as workspace:
        workspace.decide(
            int(square["proposal_id"]), action="accept", base_version=0, reviewer="ana"
        )
        workspace.decide(
            int(circle["proposal_id"]), action="reject", base_version=0, reviewer="ana"
        )
        workspace.decide(
            int(triangle["proposal_id"]), action="relabel", base_version=0, reviewer="ben",
            class_id=0,
        )  # fmt: skip
        edited_box = [1.0, 2.0, 20.0, 24.0]
        workspace.decide(
            int(other_circle["proposal_id"]), action="edit", base_version=0, reviewer="ben",
            xyxy=edited_box,
        )  # fmt: skip
        sha = json.loads((out / "labels.jsonl").read_text().splitlines()[0])["image_sha256"]
        added = workspace.add_box(
            sha, class_id=1, class_name="square", xyxy=[30, 30, 45, 44], reviewer="cyd"
        )

    # Re-routing with thresholds that would send every verified box to review: the reviewers'
    # decisions hold, and no model runs.
    rerouted = run_label(
        replace(config, thresholds=RouteThresholds(accept=1.0, reject=0.0)), detector=Exploding()
    )
    human = rerouted["labels_by_decider"]["human"]
    assert human == {"accepted": 4, "rejected": 1, "needs_review": 0}
    auto = rerouted["labels_by_decider"]["auto"]
    # 18 proposals and 1 added box; 4 proposals decided by people; triangles are not verified.
    assert auto["needs_review"] == 18 - 4 - 5 and auto["accepted"] == 5
    assert rerouted["labels"]["accepted"] == human["accepted"] + auto["accepted"]

    # The export holds exactly the accepted boxes, with the reviewers' classes and boxes.
    rows = _yolo_rows(out)
    assert len(rows) == rerouted["labels"]["accepted"]
    labels = {int(label["proposal_id"]): label for label in _labels(out)}
    relabeled = labels[int(triangle["proposal_id"])]
    assert (relabeled["class"], relabeled["status"], relabeled["decided_by"]) == (
        "circle", "accepted", "human",
    )  # fmt: skip
    assert relabeled["auto_status"] == "accepted" and "ben" in str(relabeled["reason"])
    assert labels[int(other_circle["proposal_id"])]["xyxy"] == edited_box
    assert labels[added.proposal_id]["decided_by"] == "human"
    assert labels[int(circle["proposal_id"])]["status"] == "rejected"
    coco_boxes = sum(
        len(json.loads(path.read_text())["annotations"])
        for path in (out / "annotations").glob("instances_*.json")
    )
    assert coco_boxes == len(rows)

    # review.json lists only what nobody has decided.
    review = json.loads((out / "review.json").read_text())
    decided = {int(p["proposal_id"]) for p in (square, circle, triangle, other_circle)}
    assert len(review) == auto["needs_review"]
    assert not decided & {item["proposal_id"] for item in review}

    # An undo hands the box back to the automatic route.
    with Workspace(config.workspace) as workspace:
        workspace.decide(int(circle["proposal_id"]), action="undo", base_version=1, reviewer="ana")
    again = run_label(config, detector=Exploding())
    assert again["labels_by_decider"]["human"] == {"accepted": 4, "rejected": 0, "needs_review": 0}
    assert again["labels"]["accepted"] == len(_yolo_rows(out))
