"""Exported YOLO students for the device-runtime tests, built once per session, offline
(see tests/fakes/students.py for why they are calibrated)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.fakes.students import build_student, export_onnx


@dataclass(frozen=True)
class Students:
    weights: Path
    static: Path  # fixed 1x3x256x256 input
    dynamic: Path  # dynamic batch, height and width; exported at 256
    batch2: Path  # fixed 2x3x256x256 input
    imgsz: int = 256


@pytest.fixture(scope="session")
def students(tmp_path_factory: pytest.TempPathFactory) -> Students:
    folder = tmp_path_factory.mktemp("students")
    weights = build_student(folder)
    return Students(
        weights=weights,
        static=export_onnx(weights, folder / "static.onnx", imgsz=256),
        dynamic=export_onnx(weights, folder / "dynamic.onnx", imgsz=256, dynamic=True),
        batch2=export_onnx(weights, folder / "batch2.onnx", imgsz=256, batch=2),
    )


@pytest.fixture(scope="session")
def sample_images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Shapes on textured backgrounds at sizes that take every resize path, in several formats.

    At imgsz 256: 1280x720 shrinks 5x (odd pick), 512x288 2x (reduce), 1024x576 4x (even pick),
    480x640 and 333x517 by non-integer factors, 100x60 is enlarged; 256x256 is not resized.
    """
    from PIL import Image

    from labeler.synthetic import make_shapes_image

    folder = tmp_path_factory.mktemp("runtime-images")
    rng = np.random.default_rng(7)
    specs = [
        ((1280, 720), "wide.png", "RGB"),
        ((480, 640), "tall.jpg", "RGB"),
        ((333, 517), "odd.png", "RGB"),
        ((512, 288), "half.png", "RGB"),
        ((1024, 576), "quarter.jpg", "RGB"),
        ((100, 60), "tiny.png", "RGB"),
        ((256, 256), "square.png", "L"),
    ]
    paths = []
    for image_wh, name, mode in specs:
        image, _ = make_shapes_image(rng, image_wh, 5)
        path = folder / name
        image.convert(mode).save(path, **({"quality": 90} if name.endswith(".jpg") else {}))
        paths.append(path)
    # A file whose pixels are stored sideways: both loaders must apply the EXIF orientation.
    image, _ = make_shapes_image(rng, (400, 300), 4)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(folder / "rotated.jpg", exif=exif.tobytes(), quality=90)
    paths.append(folder / "rotated.jpg")
    return paths
