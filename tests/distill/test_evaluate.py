"""evaluate(): COCO mAP that agrees with Ultralytics' own numbers, for .pt and .onnx alike.

Three CPU epochs teach the session's student almost nothing (its mAP is about 0), so agreeing
with ``model.val`` on it checks the plumbing (split, classes, images) but not the metric. Three
more tests carry the weight:

- ``model.val`` against evaluate() on a student overfit to its train images (mAP50-95 about
  0.8 there): same model, same data, same pixels, so the numbers must agree;
- the scoring against Ultralytics' metric code (its matcher and ``DetMetrics``) on identical,
  realistic predictions (mAP around 0.6), where a class-id shift or swapped x/y must land far
  outside the tolerance;
- "self-labels": a dataset whose ground truth *is* the student's own top predictions, so
  evaluate() must score high through the whole path (predict, adapter, COCO ids), an adapter
  bug must score low, and the exported ONNX file must score the same.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import distill.evaluate as evaluate_module
from distill.evaluate import EvalResult, evaluate, score_detections
from labeler.core.detections import Detections, from_ultralytics
from labeler.core.exceptions import InputError, ModelLoadError
from labeler.core.images import sha256_file
from labeler.demo.synthetic import SHAPE_CLASSES, make_shapes_image
from labeler.export.dataset import ExportItem, export_dataset
from tests.distill.conftest import STUDENT_IMGSZ, ShapesDataset, Student
from tests.fakes.students import overfit_student

# Largest accepted |ours - Ultralytics| in mAP50 and mAP50-95. On the same predictions the two
# differ by how AP is read off the precision envelope (COCO: mean of 101 step samples;
# Ultralytics: trapezoid over 101 interpolated points), about 0.002 here, and through model.val
# by how each picks its predictions (its NMS is multi-label), under 0.01. A class-id or x/y bug
# moves mAP by 0.3 or more.
TOLERANCE = 0.02
NAMES = list(SHAPE_CLASSES)


# --------------------------------------------------------------------------- the scoring


def _coco_ground_truth(truth: list[Detections]) -> Any:
    from pycocotools.coco import COCO

    document: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    document["categories"] = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
    for image_id, detections in enumerate(truth, start=1):
        width, height = detections.metadata["image_wh"]
        document["images"].append({"id": image_id, "width": width, "height": height})
        for (x1, y1, x2, y2), class_id, _ in detections:
            document["annotations"].append(
                {
                    "id": len(document["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": class_id + 1,
                    "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                    "area": float((x2 - x1) * (y2 - y1)),
                    "iscrowd": 0,
                }
            )
    coco = COCO()
    coco.dataset = document
    coco.createIndex()
    return coco


def _noisy_predictions(truth: Detections, rng: np.random.Generator) -> Detections:
    """What a decent detector returns: most boxes found (jittered), some missed, some invented."""
    width, height = truth.metadata["image_wh"]
    xyxy, class_id, score = [], [], []
    for box, cls, _ in truth:
        if rng.random() < 0.15:
            continue  # missed
        size = box[2:] - box[:2]
        jitter = rng.normal(0, 0.08, 4) * np.concatenate([size, size])
        xyxy.append(box + jitter)
        class_id.append(cls if rng.random() < 0.9 else int(rng.integers(len(NAMES))))
        score.append(rng.uniform(0.2, 1.0))
    for _ in range(int(rng.integers(0, 3))):  # false positives
        x1, y1 = rng.uniform(0, width - 10), rng.uniform(0, height - 10)
        xyxy.append([x1, y1, x1 + rng.uniform(5, 30), y1 + rng.uniform(5, 30)])
        class_id.append(int(rng.integers(len(NAMES))))
        score.append(rng.uniform(0.0, 0.7))
    return Detections(np.reshape(xyxy, (-1, 4)), class_id, score, metadata=truth.metadata)


def _ultralytics_map(truth: list[Detections], predictions: list[Detections], tmp: Path) -> tuple:
    """mAP50 and mAP50-95 from Ultralytics' validator matching and DetMetrics."""
    import torch
    from ultralytics.models.yolo.detect import DetectionValidator
    from ultralytics.utils.metrics import DetMetrics, box_iou

    validator = DetectionValidator(save_dir=tmp)
    metrics = DetMetrics(names=dict(enumerate(NAMES)))
    for index, (gt, pred) in enumerate(zip(truth, predictions, strict=True)):
        pred = pred[np.argsort(-pred.confidence, kind="stable")]  # the matcher wants this order
        target_cls = gt.class_id.astype(np.float64)
        if len(gt) and len(pred):
            iou = box_iou(torch.from_numpy(gt.xyxy), torch.from_numpy(pred.xyxy))
            tp = validator.match_predictions(
                torch.from_numpy(pred.class_id), torch.from_numpy(gt.class_id), iou
            ).numpy()
        else:
            tp = np.zeros((len(pred), 10), bool)
        metrics.update_stats(
            {
                "tp": tp,
                "conf": pred.confidence.astype(np.float64),
                "pred_cls": pred.class_id.astype(np.float64),
                "target_cls": target_cls,
                "target_img": np.unique(target_cls),
                "im_name": f"{index}.png",
            }
        )
    metrics.process(save_dir=tmp, plot=False)
    return float(metrics.box.map50), float(metrics.box.map)


def _shift_classes(detections: Detections) -> Detections:
    return Detections(
        detections.xyxy,
        (detections.class_id + 1) % len(NAMES),
        detections.confidence,
        metadata=detections.metadata,
    )


def _swap_xy(detections: Detections) -> Detections:
    return Detections(
        detections.xyxy[:, [1, 0, 3, 2]],
        detections.class_id,
        detections.confidence,
        metadata=detections.metadata,
    )


def test_scoring_agrees_with_ultralytics_metrics_and_the_tolerance_catches_bugs(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    # Non-square images, so swapping x and y moves boxes rather than mirroring them in place.
    truth = [make_shapes_image(rng, (128, 80), n_shapes=4)[1] for _ in range(40)]
    predictions = [_noisy_predictions(gt, rng) for gt in truth]
    coco_gt = _coco_ground_truth(truth)

    def ours(preds: list[Detections]) -> tuple[float, float]:
        scores = score_detections(coco_gt, dict(enumerate(preds, start=1)), NAMES)
        return scores["map50"], scores["map50_95"]

    reference = _ultralytics_map(truth, predictions, tmp_path)
    assert 0.2 < reference[1] < reference[0] < 0.95  # a realistic, non-trivial operating point
    np.testing.assert_allclose(ours(predictions), reference, atol=TOLERANCE)
    for broken in (_shift_classes, _swap_xy):
        got = ours([broken(p) for p in predictions])
        assert np.abs(np.subtract(got, reference)).min() > 10 * TOLERANCE, broken.__name__


def test_scoring_reports_per_class_precision_recall_at_the_best_f1_threshold() -> None:
    truth = [
        Detections(
            [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 1], [1, 1], metadata={"image_wh": (40, 40)}
        )
    ]
    predictions = {
        1: Detections(
            [[0, 0, 10, 10], [20, 20, 30, 30], [30, 0, 40, 10]], [0, 1, 0], [0.9, 0.6, 0.3]
        )
    }

    scores = score_detections(_coco_ground_truth(truth), predictions, NAMES)

    assert scores["map50"] == pytest.approx(1.0)
    # Above 0.3 every prediction is right and every object found; at 0.3 a false circle appears.
    assert 0.3 < scores["conf_threshold"] <= 0.6
    assert set(scores["per_class"]) == {"circle", "square"}  # triangle has no ground truth
    for metrics in scores["per_class"].values():
        assert metrics == pytest.approx(
            {"precision": 1.0, "recall": 1.0, "map50": 1.0, "map50_95": 1.0, "instances": 1}
        )
    assert scores["precision"] == scores["recall"] == 1.0


def test_no_predictions_score_zero_and_no_ground_truth_is_an_error() -> None:
    truth = [Detections([[0, 0, 10, 10]], [2], [1], metadata={"image_wh": (40, 40)})]
    scores = score_detections(_coco_ground_truth(truth), {1: Detections.empty()}, NAMES)
    assert (scores["map50"], scores["map50_95"]) == (0.0, 0.0)
    assert scores["per_class"]["triangle"]["instances"] == 1

    empty = [Detections.empty(image_wh=(40, 40))]
    with pytest.raises(InputError, match="no labeled boxes"):
        score_detections(_coco_ground_truth(empty), {1: Detections.empty()}, NAMES)


# --------------------------------------------------------------------------- the whole path


def _model_val(weights: Path, dataset: Path, split: str, tmp_path: Path) -> Any:
    """Ultralytics' validator with the prediction settings evaluate() uses.

    ``rect=False`` is the one setting changed from model.val's defaults: rectangular batches
    padded by half a stride would put these 64 px images on 96 px inputs, while predict (and so
    evaluate) feeds them at 64 px. With the same pixels the same predictions come out, and what is
    left to differ is the metric.
    """
    from ultralytics import YOLO

    return YOLO(str(weights)).val(
        data=str(dataset / "data.yaml"),
        split=split,
        imgsz=STUDENT_IMGSZ,
        rect=False,
        conf=0.001,
        iou=0.7,
        plots=False,
        device="cpu",
        project=str(tmp_path),
        verbose=False,
    )


def test_evaluate_agrees_with_ultralytics_validator(
    student: Student, shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    ours = evaluate(student.result.best, shapes_dataset.path, device="cpu")
    theirs = _model_val(student.result.best, shapes_dataset.path, "val", tmp_path)

    assert ours.map50 == pytest.approx(theirs.box.map50, abs=TOLERANCE)
    assert ours.map50_95 == pytest.approx(theirs.box.map, abs=TOLERANCE)
    assert ours.split == "val"
    assert ours.n_images == shapes_dataset.summary.images["val"]
    assert ours.imgsz == STUDENT_IMGSZ
    assert (
        sum(c["instances"] for c in ours.per_class.values()) == shapes_dataset.summary.boxes["val"]
    )
    assert 0 < ours.ms_per_image < 10_000


@pytest.fixture(scope="module")
def overfit(shapes_dataset: ShapesDataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return overfit_student(
        shapes_dataset.path, tmp_path_factory.mktemp("overfit"), imgsz=STUDENT_IMGSZ
    )


def test_evaluate_agrees_with_ultralytics_validator_on_a_student_that_detects(
    overfit: Path, shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    """Same model, same labels, same pixels: evaluate() and model.val must give the same mAP."""
    ours = evaluate(overfit, shapes_dataset.path, split="train", device="cpu")
    theirs = _model_val(overfit, shapes_dataset.path, "train", tmp_path)

    assert 0.5 < theirs.box.map < theirs.box.map50 < 1.0, "the student must detect, not ace"
    assert ours.map50 == pytest.approx(theirs.box.map50, abs=TOLERANCE)
    assert ours.map50_95 == pytest.approx(theirs.box.map, abs=TOLERANCE)
    assert ours.n_images == shapes_dataset.summary.images["train"]


@pytest.fixture(scope="module")
def self_labeled(
    student: Student, shapes_dataset: ShapesDataset, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The shapes images labeled with the student's own best boxes (up to three per image).

    Only boxes scoring at least twice the prediction threshold become labels: boxes near the
    threshold come and go with float rounding (PyTorch vs ONNX Runtime). Everything is in train
    (val_fraction=0), so data.yaml's val points at images/train and its instances_val.json lists
    no images: the val split is scored from the YOLO label files.
    """
    from ultralytics import YOLO

    images = sorted(str(p) for p in (shapes_dataset.path / "images").rglob("*.png"))
    items = []
    model = YOLO(str(student.result.best))
    for result in model.predict(images, conf=0.001, device="cpu", stream=True, verbose=False):
        detections = from_ultralytics(result)
        best = detections[detections.confidence >= 2 * 0.001][:3]  # sorted by descending score
        path = Path(result.path)
        items.append(ExportItem(path, sha256_file(path), best.metadata["image_wh"], best))
    root = tmp_path_factory.mktemp("self-labeled")
    summary = export_dataset(items, NAMES, root, val_fraction=0.0, link=False)
    assert summary.boxes["train"] >= len(images)  # at least one label per image on average
    return root


@pytest.fixture(scope="module")
def student_onnx(student: Student, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from ultralytics import YOLO

    copy = tmp_path_factory.mktemp("onnx") / "student.pt"
    shutil.copyfile(student.result.best, copy)
    with warnings.catch_warnings():
        # Tracing warns about Python control flow in the head (shapes are fixed here).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # simplify=False: onnxslim is not a dependency, and auto-install is off.
        exported = YOLO(str(copy)).export(format="onnx", imgsz=STUDENT_IMGSZ, simplify=False)
    return Path(exported)


def test_self_labels_score_high_and_onnx_scores_the_same(
    student: Student, self_labeled: Path, student_onnx: Path
) -> None:
    from_pt = evaluate(student.result.best, self_labeled, device="cpu")
    from_onnx = evaluate(student_onnx, self_labeled, device="cpu")

    assert from_pt.map50 > 0.9
    assert from_pt.n_images == 16
    assert from_onnx.imgsz == STUDENT_IMGSZ
    assert from_onnx.map50 == pytest.approx(from_pt.map50, abs=0.01)
    assert from_onnx.map50_95 == pytest.approx(from_pt.map50_95, abs=0.01)
    assert from_onnx.n_predictions == pytest.approx(from_pt.n_predictions, rel=0.05)


@pytest.mark.parametrize("broken", [_shift_classes], ids=["class ids shifted"])
def test_an_adapter_bug_drops_the_score_far_beyond_the_tolerance(
    broken: Callable[[Detections], Detections],
    student: Student,
    self_labeled: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    correct = evaluate(student.result.best, self_labeled, device="cpu")
    adapter = evaluate_module.from_ultralytics
    monkeypatch.setattr(evaluate_module, "from_ultralytics", lambda r: broken(adapter(r)))

    wrong = evaluate(student.result.best, self_labeled, device="cpu")

    assert correct.map50 - wrong.map50 > 10 * TOLERANCE


def test_ground_truth_is_the_yolo_labels_not_a_stale_coco_json(
    student: Student, self_labeled: Path, tmp_path: Path
) -> None:
    before = evaluate(student.result.best, self_labeled, split="train", device="cpu")
    copy = tmp_path / "copy"
    shutil.copytree(self_labeled, copy)
    # The COCO JSON goes stale (here: loses every box); the YOLO rows, which training reads and
    # the label hash covers, are unchanged, and so is the score.
    stale = copy / "annotations" / "instances_train.json"
    document = json.loads(stale.read_text())
    stale.write_text(json.dumps({**document, "annotations": []}))
    after = evaluate(student.result.best, copy, split="train", device="cpu")
    assert (after.map50, after.map50_95, after.per_class) == (
        before.map50,
        before.map50_95,
        before.per_class,
    )

    # Edited YOLO rows are scored as edited, whatever the JSON says.
    for label_file in (copy / "labels" / "train").glob("*.txt"):
        label_file.write_text("")
    with pytest.raises(InputError, match="no labeled boxes"):
        evaluate(student.result.best, copy, split="train", device="cpu")


def test_other_class_names_are_refused_listing_both(
    student: Student, shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    copy = tmp_path / "renamed"
    shutil.copytree(shapes_dataset.path, copy, ignore=shutil.ignore_patterns(".promptlabel"))
    data_yaml = copy / "data.yaml"
    data_yaml.write_text(data_yaml.read_text().replace("square", "box"))

    with pytest.raises(InputError) as error:
        evaluate(student.result.best, copy, device="cpu")

    assert "['circle', 'square', 'triangle']" in str(error.value)
    assert "['circle', 'box', 'triangle']" in str(error.value)


def test_unknown_split_and_missing_model_are_named(
    student: Student, shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="no 'test' split; it has train, val"):
        evaluate(student.result.best, shapes_dataset.path, split="test", device="cpu")
    with pytest.raises(ModelLoadError, match=r"nothing\.pt: the file does not exist"):
        evaluate(tmp_path / "nothing.pt", shapes_dataset.path, device="cpu")


def test_the_result_carries_what_the_cli_prints(student: Student, self_labeled: Path) -> None:
    result = evaluate(student.result.best, self_labeled, device="cpu", batch=4)

    assert isinstance(result, EvalResult)
    assert set(result.per_class) <= set(NAMES)
    for metrics in result.per_class.values():
        assert set(metrics) == {"precision", "recall", "map50", "map50_95", "instances"}
        assert 0.0 <= metrics["map50_95"] <= metrics["map50"] <= 1.0
    assert 0.0 <= result.conf_threshold <= 1.0
