"""Mask mAP (COCOeval "segm") for segmentation students, beside box mAP.

The dataset is written by the labeler's own exporter from shapes whose masks are ellipses
inscribed in their boxes, so its YOLO rows are polygons, as a labeling run with ``--masks``
writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from distill.dataset import DatasetInfo, check_dataset
from distill.evaluate import _yolo_ground_truth, evaluate, score_detections
from labeler.core.detections import Detections
from labeler.demo.synthetic import SHAPE_CLASSES, write_shapes_items
from labeler.export.dataset import export_dataset


@dataclass(frozen=True)
class SegDataset:
    info: DatasetInfo
    # image file name -> the (n, h, w) ellipse masks the polygons were made from
    masks: dict[str, np.ndarray]


def _ellipses(detections: Detections, image_wh: tuple[int, int]) -> np.ndarray:
    masks = np.zeros((len(detections), image_wh[1], image_wh[0]), bool)
    for index, (xyxy, _, _) in enumerate(detections):
        canvas = Image.new("L", image_wh, 0)
        ImageDraw.Draw(canvas).ellipse([float(v) for v in xyxy], fill=1)
        masks[index] = np.asarray(canvas, bool)
    return masks


@pytest.fixture(scope="module")
def seg_dataset(tmp_path_factory: pytest.TempPathFactory) -> SegDataset:
    from pycocotools import mask as coco_mask

    root = tmp_path_factory.mktemp("seg_dataset")
    items = write_shapes_items(root / "src", n=8, seed=3, image_wh=(96, 80))
    masks_by_hash = {}
    for item in items:
        masks = _ellipses(item.detections, item.image_wh)
        rles = np.empty(len(masks), dtype=object)
        for index, mask in enumerate(masks):
            rles[index] = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        item.detections.data["mask"] = rles
        masks_by_hash[item.sha256] = masks
    summary = export_dataset(items, SHAPE_CLASSES, root / "dataset", val_fraction=0.25)
    info = check_dataset(summary.out_dir)
    assert info.task == "segment"
    by_name = {Path(where).name: masks_by_hash[sha] for sha, where in summary.files.items()}
    return SegDataset(info=info, masks=by_name)


def _ground_truth_as_predictions(coco_gt: Any, shift_px: int = 0) -> dict[int, Detections]:
    """Every ground-truth row as a prediction (score 1), its mask moved ``shift_px`` right."""
    from pycocotools import mask as coco_mask

    predictions = {}
    for image_id in coco_gt.getImgIds():
        annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)])
        masks = np.empty(len(annotations), dtype=object)
        for index, annotation in enumerate(annotations):
            mask = coco_mask.decode(annotation["segmentation"]).astype(bool)
            moved = np.zeros_like(mask)
            moved[:, shift_px:] = mask[:, : mask.shape[1] - shift_px]
            masks[index] = coco_mask.encode(np.asfortranarray(moved.astype(np.uint8)))
        predictions[image_id] = Detections(
            xyxy=xyxy.reshape(-1, 4).astype(np.float32),
            class_id=np.array([a["category_id"] - 1 for a in annotations], np.int64),
            confidence=np.ones(len(annotations), np.float32),
            data={"mask_rle": masks},
        )
    return predictions


def test_ground_truth_masks_are_the_exported_polygons_rasterised(seg_dataset: SegDataset) -> None:
    from pycocotools import mask as coco_mask

    images = list(seg_dataset.info.images["train"])
    coco_gt, image_ids = _yolo_ground_truth(seg_dataset.info, images, with_masks=True)
    compared = 0
    for path in images:
        annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_ids[path]]))
        originals = seg_dataset.masks[path.name]
        assert len(annotations) == len(originals), path.name
        for annotation, original in zip(annotations, originals, strict=True):
            rasterised = coco_mask.decode(annotation["segmentation"]).astype(bool)
            assert rasterised.shape == original.shape
            iou = (rasterised & original).sum() / (rasterised | original).sum()
            # A polygon traced from the pixel mask: its outline differs by about a pixel.
            assert iou > 0.8, f"{path.name}: IoU {iou:.3f}"
            compared += 1
    assert compared >= 5


def test_perfect_masks_score_one_and_shifted_masks_score_lower(seg_dataset: SegDataset) -> None:
    images = list(seg_dataset.info.images["train"])
    coco_gt, _ = _yolo_ground_truth(seg_dataset.info, images, with_masks=True)
    names = seg_dataset.info.names

    perfect = _ground_truth_as_predictions(coco_gt)
    masks = score_detections(coco_gt, perfect, names, iou_type="segm")
    assert masks["map50"] == pytest.approx(1.0)
    assert masks["map50_95"] == pytest.approx(1.0)
    assert set(masks["per_class"]) <= set(names) and masks["per_class"]

    # Boxes unchanged, every mask 3 px to the right: box mAP stays 1, mask mAP falls.
    shifted = _ground_truth_as_predictions(coco_gt, shift_px=3)
    boxes = score_detections(coco_gt, shifted, names)
    moved = score_detections(coco_gt, shifted, names, iou_type="segm")
    assert boxes["map50_95"] == pytest.approx(1.0)
    assert moved["map50_95"] < 0.8
    assert moved["map50_95"] < masks["map50_95"]


def test_mask_scoring_without_masks_names_the_problem(seg_dataset: SegDataset) -> None:
    from labeler.core.exceptions import InputError

    images = list(seg_dataset.info.images["train"])
    coco_gt, _ = _yolo_ground_truth(seg_dataset.info, images, with_masks=True)
    boxes_only = {
        image_id: Detections(d.xyxy, d.class_id, d.confidence)
        for image_id, d in _ground_truth_as_predictions(coco_gt).items()
    }
    with pytest.raises(InputError, match=r"mask scoring needs predicted masks"):
        score_detections(coco_gt, boxes_only, seg_dataset.info.names, iou_type="segm")


def test_boolean_masks_score_like_their_rles(seg_dataset: SegDataset) -> None:
    """``data["mask"]`` (boolean, as the device runtime returns) is scored as its RLE is."""
    from pycocotools import mask as coco_mask

    images = list(seg_dataset.info.images["train"])
    coco_gt, _ = _yolo_ground_truth(seg_dataset.info, images, with_masks=True)
    shifted = _ground_truth_as_predictions(coco_gt, shift_px=2)
    as_arrays = {}
    for image_id, detections in shifted.items():
        info = coco_gt.loadImgs([image_id])[0]
        dense = np.zeros((len(detections), info["height"], info["width"]), bool)
        for index, rle in enumerate(detections.data["mask_rle"]):
            dense[index] = coco_mask.decode(rle).astype(bool)
        as_arrays[image_id] = Detections(
            detections.xyxy, detections.class_id, detections.confidence, data={"mask": dense}
        )
    names = seg_dataset.info.names
    assert score_detections(coco_gt, as_arrays, names, iou_type="segm") == score_detections(
        coco_gt, shifted, names, iou_type="segm"
    )


@pytest.mark.slow
def test_evaluate_reports_mask_map_for_a_segmentation_student(
    seg_dataset: SegDataset, tmp_path: Path
) -> None:
    """A random-init yolo11n-seg (calibrated BatchNorm) on the polygon dataset: the mask fields
    are filled, per class beside the boxes'; a detection student on it has none."""
    from distill.registry import EvalSet, evaluation_metrics
    from tests.fakes.students import build_student

    seg_weights = build_student(
        tmp_path / "seg", config_name="yolo11n-seg.yaml", calibration_imgsz=96, class_bias=0.0
    )
    data = seg_dataset.info.data_yaml
    result = evaluate(seg_weights, data, split="train", imgsz=96, device="cpu", conf=0.001)
    assert result.n_predictions > 0
    assert result.mask_map50 is not None and result.mask_map50_95 is not None
    assert 0.0 <= result.mask_map50_95 <= result.mask_map50 <= 1.0
    assert result.mask_per_class is not None
    assert set(result.mask_per_class) == set(result.per_class)
    assert result.mask_precision is not None and result.mask_recall is not None

    metrics = evaluation_metrics(seg_weights, EvalSet(data, "train"), imgsz=96, device="cpu")
    assert metrics["mask_map50_95"] == pytest.approx(result.mask_map50_95)
    assert set(metrics["mask_per_class"]) == set(result.per_class)

    detect_weights = build_student(tmp_path / "detect", calibration_imgsz=96)
    boxes_only = evaluate(detect_weights, data, split="train", imgsz=96, device="cpu")
    assert boxes_only.mask_map50 is None and boxes_only.mask_per_class is None
    assert "mask_map50_95" not in evaluation_metrics(
        detect_weights, EvalSet(data, "train"), imgsz=96, device="cpu"
    )


def test_the_metrics_table_shows_mask_columns_only_for_segmentation() -> None:
    from rich.console import Console

    from serve.cli.distill import _metrics_table

    row = {"precision": 0.5, "recall": 0.25, "map50": 0.75, "map50_95": 0.5, "instances": 3.0}
    boxes = {"per_class": {"circle": row}, **{k: row[k] for k in ("map50", "map50_95")}}
    segmentation = {
        **boxes,
        "mask_map50": 0.625,
        "mask_map50_95": 0.125,
        "mask_per_class": {"circle": {**row, "map50": 0.375, "map50_95": 0.0625}},
    }

    def rendered(metrics: dict[str, Any]) -> str:
        console = Console(record=True, width=200)
        console.print(_metrics_table("t", metrics))
        return console.export_text()

    assert "mask mAP50" not in rendered(boxes)
    text = rendered(segmentation)
    assert "mask mAP50-95" in text
    assert "0.3750" in text and "0.0625" in text  # the class's mask numbers
    assert "0.6250" in text and "0.1250" in text  # over all classes
