"""Where the deployed student and the teacher disagree, the proposal goes to review
(``student_disagrees``) whatever the verifier said; re-routing keeps it so; the CLI reads the
student's boxes from an outbox or from `predict --json`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labeler.core.exceptions import InputError
from labeler.demo.synthetic import write_sample_images
from labeler.pipeline import LabelConfig, run_label
from labeler.review import queue
from labeler.route import RouteDecision, RouteThresholds, Status, student_disagreement
from labeler.store.workspace import Workspace
from labeler.student import load_student_predictions
from tests.labeler.test_pipeline import ONTOLOGY, ScriptedDetector

ACCEPTED = RouteDecision(Status.ACCEPTED, "verifier: yes")
REJECTED = RouteDecision(Status.REJECTED, "verifier: no")
IN_REVIEW = RouteDecision(Status.NEEDS_REVIEW, "uncertain")
BOX = [10.0, 10.0, 50.0, 50.0]


@pytest.mark.parametrize(
    ("decision", "student", "expected", "reason"),
    [
        (ACCEPTED, [("cat", BOX)], Status.ACCEPTED, None),  # both see it
        (ACCEPTED, [], Status.NEEDS_REVIEW, "the student missed this cat"),
        (ACCEPTED, [("dog", BOX)], Status.NEEDS_REVIEW, "missed"),  # another class is no match
        (ACCEPTED, [("cat", [30, 30, 70, 70])], Status.NEEDS_REVIEW, "missed"),  # IoU 0.14
        (ACCEPTED, [("cat", [12, 12, 52, 52])], Status.ACCEPTED, None),  # IoU 0.82
        (REJECTED, [("cat", BOX)], Status.NEEDS_REVIEW, "the student found this cat"),
        (REJECTED, [], Status.REJECTED, None),  # both say no
        (IN_REVIEW, [], Status.NEEDS_REVIEW, None),  # already in review: its own reason
    ],
)
def test_disagreement_by_class_and_iou(
    decision: RouteDecision,
    student: list[tuple[str, list[float]]],
    expected: Status,
    reason: str | None,
) -> None:
    routed = student_disagreement(class_name="cat", xyxy=BOX, decision=decision, student=student)
    assert routed.status is expected
    if reason is None:
        assert routed == decision
    else:
        assert routed.reason.startswith("student_disagrees: ") and reason in routed.reason


def test_an_unwritable_box_stays_rejected() -> None:
    unwritable = RouteDecision(Status.REJECTED, "too small to export")
    routed = student_disagreement(
        class_name="cat", xyxy=BOX, decision=unwritable, student=[("cat", BOX)],
        unwritable="too small to export",
    )  # fmt: skip
    assert routed == unwritable


def _config(tmp_path: Path, **changes: object) -> LabelConfig:
    images = tmp_path / "images"
    if not images.exists():
        write_sample_images(images, n=2, seed=4)
    return LabelConfig(images_dir=images, ontology=ONTOLOGY, out_dir=tmp_path / "out",
                       detector="scripted", **changes)  # type: ignore[arg-type]  # fmt: skip


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_pipeline_sends_disagreements_to_review_and_keeps_them_there(tmp_path: Path) -> None:
    config = _config(tmp_path)
    first, _second = sorted(config.images_dir.iterdir())
    # The scripted detector's circle on the first image: [0, 0, w/3, h/3]; the student found
    # only it. The second image has no student boxes: it is routed as usual.
    from PIL import Image

    with Image.open(first) as image:
        w, h = image.size
    student = {_sha(first): [{"class": "circle", "xyxy": [0, 0, w / 3, h / 3]}]}
    report = run_label(_config(tmp_path, student_predictions=student), detector=ScriptedDetector())
    assert report["labels"] == {"accepted": 4, "rejected": 0, "needs_review": 2}
    review = json.loads((config.out_dir / "review.json").read_text())
    assert {item["class"] for item in review} == {"square", "triangle"}
    assert all(
        item["reason"].startswith("student_disagrees: the student missed") for item in review
    )
    assert {item["image_sha256"] for item in review} == {_sha(first)}

    # Re-routing (new thresholds, no model; the student's boxes are not given again) keeps them.
    rerouted = run_label(_config(tmp_path, thresholds=RouteThresholds(accept=0.8)), route_only=True)
    assert rerouted["labels"]["needs_review"] == 2
    with Workspace(config.workspace) as workspace:
        items = queue.next_items(
            workspace, class_names=ONTOLOGY.names, thresholds=RouteThresholds(), reviewer="ana",
            claim_s=60, image_url=str, reasons=["student_disagrees"],
        )  # fmt: skip
    assert len(items) == 2


def test_the_cli_reads_an_outbox_and_predict_json(tmp_path: Path) -> None:
    images = tmp_path / "images"
    write_sample_images(images, n=2, seed=4)
    first, second = sorted(images.iterdir())
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "0001-abc.json").write_text(json.dumps({
        "sha256": _sha(first), "predictions": [{"class": "circle", "xyxy": BOX, "score": 0.4}],
    }))  # fmt: skip
    (outbox / "state.json").write_text('{"dropped": 0}')
    assert load_student_predictions(outbox) == {_sha(first): [{"class": "circle", "xyxy": BOX}]}
    predicted = tmp_path / "predicted.json"
    predicted.write_text(json.dumps({"images": [
        {"path": str(second), "detections": [{"class": "square", "xyxy": BOX}]},
    ]}))  # fmt: skip
    assert load_student_predictions(predicted) == {_sha(second): [{"class": "square", "xyxy": BOX}]}

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"path": str(second), "detections": [{"xyxy": [1]}]}]}))
    with pytest.raises(InputError, match=r"bad\.json: images\[0\]\.detections\[0\]: needs class"):
        load_student_predictions(bad)
    with pytest.raises(InputError, match="no outbox manifests"):
        load_student_predictions(images)

    from serve.cli.main import app

    ontology = tmp_path / "shapes.yaml"
    ontology.write_text("classes:\n  - name: circle\n    detect: circle\n")
    result = CliRunner().invoke(
        app,
        ["label", str(images), "--ontology", str(ontology), "--out", str(tmp_path / "out"),
         "--detector", "nowhere/none", "--student-predictions", str(bad)],
    )  # fmt: skip
    assert (
        result.exit_code == 2 and "bad.json" in result.stderr and "Traceback" not in result.stderr
    )
