"""Segmentation students in the device runtime: masks as Ultralytics makes them, RLE out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve.runtime.onnx import load_runtime
from serve.runtime.segment import bilinear_weights, mask_to_rle, rle_to_mask
from tests.fakes.students import build_student, export_onnx


@dataclass(frozen=True)
class SegStudents:
    static: Path
    dynamic: Path
    images: list[Path]


@pytest.fixture(scope="module")
def seg_students(tmp_path_factory: pytest.TempPathFactory) -> SegStudents:
    from labeler.demo.synthetic import make_shapes_image

    folder = tmp_path_factory.mktemp("seg_students")
    weights = build_student(folder, config_name="yolo11n-seg.yaml")
    rng = np.random.default_rng(7)
    images = []
    for index, size in enumerate([(320, 240), (256, 256), (200, 300)]):
        path = folder / f"image{index}.png"
        make_shapes_image(rng, size, 4)[0].save(path)
        images.append(path)
    return SegStudents(
        static=export_onnx(weights, folder / "static.onnx", imgsz=256),
        dynamic=export_onnx(weights, folder / "dynamic.onnx", imgsz=256, dynamic=True),
        images=images,
    )


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.mark.slow
@pytest.mark.parametrize("export", ["static", "dynamic"])
def test_masks_match_ultralytics(seg_students: SegStudents, export: str) -> None:
    """Boxes within 1 px, scores within 1e-3, mask IoU >= 0.98 per instance."""
    from ultralytics import YOLO
    from ultralytics.utils import ops

    path = getattr(seg_students, export)
    ours = load_runtime(path, conf=0.05).predict(seg_students.images)
    model = YOLO(str(path), task="segment")
    compared = 0
    for image, detections in zip(seg_students.images, ours, strict=True):
        (result,) = model.predict(str(image), conf=0.05, imgsz=256, verbose=False)
        label = f"{export} {image.name}"
        assert len(detections) == len(result.boxes), label
        np.testing.assert_array_equal(
            detections.class_id, result.boxes.cls.numpy().astype(np.int64), err_msg=label
        )
        np.testing.assert_allclose(detections.xyxy, result.boxes.xyxy.numpy(), atol=1.0, rtol=0)
        np.testing.assert_allclose(
            detections.confidence, result.boxes.conf.numpy(), atol=1e-3, rtol=0
        )
        if len(detections) == 0:
            continue
        theirs = (
            ops.scale_masks(result.masks.data[None].float(), result.orig_shape)[0] > 0.5
        ).numpy()
        masks = detections.data["mask"]
        assert masks.shape == theirs.shape, label
        for index in range(len(detections)):
            iou = _mask_iou(masks[index], theirs[index])
            assert iou >= 0.98, f"{label} instance {index}: mask IoU {iou:.4f}"
            compared += int(theirs[index].any())
    assert compared >= 3, "too few non-empty masks to compare"


def test_segment_models_carry_masks_in_original_pixels(seg_students: SegStudents) -> None:
    runtime = load_runtime(seg_students.static, conf=0.05)
    assert runtime.segment
    (detections,) = runtime.predict([seg_students.images[0]])
    with Image.open(seg_students.images[0]) as image:
        width, height = image.size
    assert detections.data["mask"].shape == (len(detections), height, width)
    assert detections.data["mask"].dtype == np.bool_


def test_bilinear_weights_match_torch() -> None:
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    source = rng.standard_normal((1, 1, 7, 5)).astype(np.float32)
    for target in [(16, 20), (3, 2), (7, 5), (160, 96)]:
        theirs = F.interpolate(torch.from_numpy(source), target, mode="bilinear")[0, 0].numpy()
        ours = bilinear_weights(7, target[0]) @ source[0, 0] @ bilinear_weights(5, target[1]).T
        np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("fill", ["random", "empty", "full", "first_pixel"])
def test_rle_matches_pycocotools(fill: str) -> None:
    from pycocotools import mask as coco_mask

    rng = np.random.default_rng(1)
    mask = {
        "random": rng.random((13, 9)) > 0.6,
        "empty": np.zeros((13, 9), bool),
        "full": np.ones((13, 9), bool),
        "first_pixel": np.eye(13, 9, dtype=bool),
    }[fill]
    rle = mask_to_rle(mask)
    assert rle["size"] == [13, 9]
    decoded = coco_mask.decode(coco_mask.frPyObjects(rle, 13, 9))
    np.testing.assert_array_equal(decoded.astype(bool), mask)
    np.testing.assert_array_equal(rle_to_mask(rle), mask)
    compressed = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert coco_mask.area(coco_mask.frPyObjects(rle, 13, 9)) == coco_mask.area(compressed)


def test_rle_with_bad_counts_names_the_problem() -> None:
    with pytest.raises(ValueError, match="sum to 5, expected 6"):
        rle_to_mask({"size": [2, 3], "counts": [2, 3]})


def test_predict_cli_prints_rle_and_draws_masks(seg_students: SegStudents, tmp_path: Path) -> None:
    """`promptlabel predict --json` on a seg model: each box has an RLE equal to the runtime's
    mask; --save-annotated tints the mask pixels. Torch and Ultralytics are blocked."""
    import json
    import os
    import subprocess
    import sys

    from tests.serve.cli.test_predict import CLI_WITH_HEAVY_IMPORTS_BLOCKED, REPO_ROOT

    annotated = tmp_path / "annotated"
    image = seg_students.images[0]
    result = subprocess.run(
        [
            sys.executable, "-c", CLI_WITH_HEAVY_IMPORTS_BLOCKED, "predict",
            str(seg_students.static), str(image), "--json", "--conf", "0.05",
            "--save-annotated", str(annotated),
        ],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)["images"]
    (expected,) = load_runtime(seg_students.static, conf=0.05).predict([image])
    assert len(record["detections"]) == len(expected) > 0
    for box, mask in zip(record["detections"], expected.data["mask"], strict=True):
        np.testing.assert_array_equal(rle_to_mask(box["mask"]), mask)
    assert (annotated / f"{image.stem}.jpg").is_file()
    from labeler.core.detections import Detections
    from serve.runtime.annotate import draw_detections

    # One instance drawn with and without its mask: the fill tints its pixels.
    largest = int(np.argmax(expected.data["mask"].sum(axis=(1, 2))))
    one = expected[[largest]]
    covered = one.data["mask"][0]
    with Image.open(image) as original:
        pixels = np.asarray(original.convert("RGB"), np.int16)
        masked = np.asarray(draw_detections(original, one, ["a", "b", "c"]), np.int16)
        boxes_only = Detections(one.xyxy, one.class_id, one.confidence)
        unmasked = np.asarray(draw_detections(original, boxes_only, ["a", "b", "c"]), np.int16)
    changed = np.abs(masked - pixels).max(axis=2) > 20
    by_box = np.abs(unmasked - pixels).max(axis=2) > 20
    assert covered.sum() > 50
    assert changed[covered].mean() > 0.8
    assert by_box[covered].mean() < 0.5
    assert not changed[~covered & ~by_box].any()  # nothing drawn outside the mask and the box


def test_detect_records_have_no_mask_key() -> None:
    from labeler.core.detections import Detections
    from serve.runtime.segment import records_with_masks

    detections = Detections(
        xyxy=np.array([[1, 2, 3, 4]], np.float32),
        class_id=np.array([0]),
        confidence=np.array([0.5], np.float32),
    )
    (record,) = records_with_masks(detections, ["a"])
    assert "mask" not in record
    mask = np.zeros((1, 5, 6), bool)
    mask[0, 2:4, 1:3] = True
    detections.data["mask"] = mask
    (record,) = records_with_masks(detections, ["a"])
    assert record["mask"]["size"] == [5, 6]
    np.testing.assert_array_equal(rle_to_mask(record["mask"]), mask[0])


@pytest.mark.parametrize(
    ("source_hw", "target_hw"),
    [((9, 16), (18, 32)), ((9, 16), (27, 48)), ((10, 12), (15, 17)), ((12, 10), (6, 5))],
    ids=["2x: a gather", "3x", "non-integer", "shrink"],
)
def test_binary_windows_resize_as_the_full_bilinear_product(
    source_hw: tuple[int, int], target_hw: tuple[int, int]
) -> None:
    """A mask window resized alone (zeros outside it, whichever path it takes) equals the whole
    image resized with bilinear_weights (torch's, tested above) and cut to the same window."""
    from serve.runtime.segment import _binary_resized, _reach, _Taps

    rng = np.random.default_rng(3)
    (source_h, source_w), (target_h, target_w) = source_hw, target_hw
    image = np.zeros(source_hw, bool)
    image[2:-2, 3:-2] = rng.random((source_h - 4, source_w - 5)) > 0.4
    expected = (
        bilinear_weights(source_h, target_h)
        @ image.astype(np.float32)
        @ bilinear_weights(source_w, target_w).T
    ) > 0.5
    y_taps, x_taps = _Taps.of(source_h, target_h), _Taps.of(source_w, target_w)
    rows, cols = _reach(y_taps, 2, source_h - 2), _reach(x_taps, 3, source_w - 2)
    window = _binary_resized(image[2:-2, 3:-2], y_taps, rows, 2, x_taps, cols, 3)
    np.testing.assert_array_equal(window, expected[rows, cols])
    outside = np.ones_like(expected)
    outside[rows, cols] = False
    assert not expected[outside].any()  # _reach found every pixel the window reaches
