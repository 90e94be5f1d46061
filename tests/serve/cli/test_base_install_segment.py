"""A segmentation student on the base install (no torch, no Ultralytics): `predict --json` prints
each box's mask as COCO RLE and `--save-annotated` draws the masks.

Like tests/serve/cli/test_base_install.py, this runs the base-only environment that
PROMPTLABEL_BASE_VENV names (`make install-base`), and is skipped without it.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.cli.test_base_install import run_base


@pytest.fixture(scope="module")
def seg_onnx_and_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from labeler.demo.synthetic import make_shapes_image
    from tests.fakes.students import build_student, export_onnx

    folder = tmp_path_factory.mktemp("base_seg")
    weights = build_student(folder, config_name="yolo11n-seg.yaml")
    image = folder / "shapes.png"
    make_shapes_image(np.random.default_rng(7), (320, 240), 4)[0].save(image)
    return export_onnx(weights, folder / "seg.onnx", imgsz=256), image


def test_predict_prints_and_draws_masks_on_the_base_install(
    base_venv: Path, seg_onnx_and_image: tuple[Path, Path], tmp_path: Path
) -> None:
    from labeler.core.detections import Detections
    from serve.runtime import load_runtime
    from serve.runtime.annotate import draw_detections
    from serve.runtime.segment import rle_to_mask

    onnx_path, image = seg_onnx_and_image
    annotated = tmp_path / "annotated"
    result = run_base(
        base_venv, "predict", str(onnx_path), str(image), "--json", "--conf", "0.05",
        "--save-annotated", str(annotated), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (record,) = json.loads(result.stdout)["images"]

    # The same masks as this environment's runtime computes, as RLE of the whole image.
    runtime = load_runtime(onnx_path, conf=0.05)
    (expected,) = runtime.predict([image])
    assert len(record["detections"]) == len(expected) > 0
    for box, mask in zip(record["detections"], expected.data["mask"], strict=True):
        assert box["mask"]["size"] == [240, 320]
        np.testing.assert_array_equal(rle_to_mask(box["mask"]), mask)

    # The annotated JPEG is the drawing with masks (saved as the CLI saves it), not the one with
    # boxes only.
    with Image.open(image) as original, Image.open(annotated / "shapes.jpg") as saved:
        drawn = np.asarray(saved.convert("RGB"), np.int16)
        with_masks = _as_saved(draw_detections(original, expected, runtime.names))
        boxes_only = Detections(expected.xyxy, expected.class_id, expected.confidence)
        without = _as_saved(draw_detections(original, boxes_only, runtime.names))
    covered = expected.data["mask"].any(axis=0)
    assert covered.sum() > 50
    assert np.abs(drawn - with_masks).max() <= 2  # the same drawing, up to the JPEG codec
    assert np.abs(drawn - without)[covered].mean() > 5


def _as_saved(drawing: Image.Image) -> np.ndarray:
    """``drawing`` after the JPEG round trip `predict --save-annotated` puts it through."""
    buffer = io.BytesIO()
    drawing.save(buffer, "JPEG", quality=90)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"), np.int16)
