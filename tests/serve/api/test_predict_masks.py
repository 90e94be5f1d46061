"""/predict with a production segmentation student: each detection carries its mask as COCO RLE,
the same mask the device runtime computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serve.runtime.onnx import load_runtime
from serve.runtime.segment import records_with_masks, rle_to_mask
from tests.serve.conftest import Service


@pytest.fixture(scope="module")
def seg_onnx_and_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from labeler.demo.synthetic import make_shapes_image
    from tests.fakes.students import build_student, export_onnx

    folder = tmp_path_factory.mktemp("predict_seg")
    # Class bias 0: scores high enough that the service's lowest conf (0.1) keeps boxes.
    weights = build_student(folder, config_name="yolo11n-seg.yaml", class_bias=0.0)
    image = folder / "shapes.png"
    make_shapes_image(np.random.default_rng(7), (320, 240), 4)[0].save(image)
    return export_onnx(weights, folder / "seg.onnx", imgsz=256), image


def test_predict_returns_a_mask_per_detection(
    service: Service, seg_onnx_and_image: tuple[Path, Path]
) -> None:
    onnx_path, image = seg_onnx_and_image
    version = service.promote_onnx(onnx_path)
    answer = service.client.post(
        service.url("/predict"),
        headers={**service.headers, "Content-Type": "image/png"},
        content=image.read_bytes(),
        params={"conf": 0.1},
    )
    assert answer.status_code == 200, answer.text
    predicted = answer.json()
    assert predicted["model_version"] == version

    runtime = load_runtime(onnx_path, conf=0.1)
    with Image.open(image) as original:
        (expected,) = runtime.predict([original.convert("RGB")])
    detections = predicted["detections"]
    assert len(detections) == len(expected) > 0
    # The runtime's records, mask included, box for box.
    assert detections == records_with_masks(expected, runtime.names)
    for box, mask in zip(detections, expected.data["mask"], strict=True):
        assert box["mask"]["size"] == [240, 320]
        decoded = rle_to_mask(box["mask"])
        np.testing.assert_array_equal(decoded, mask)
    assert any(rle_to_mask(box["mask"]).any() for box in detections)
