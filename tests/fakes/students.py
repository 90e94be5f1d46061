"""YOLO students for runtime tests and benchmarks, built offline.

A ``yolo11n.yaml`` model at random init is useless for a parity check: its activations shrink
layer after layer until every output is the same whatever the image (scores near 1e-5, the same
box everywhere). ``build_student`` therefore recalibrates its BatchNorm statistics on a few
synthetic images (one forward pass in train mode, no gradient step) and sets the class-score bias
so scores spread around the usual thresholds. The weights stay random; the outputs now depend on
every input pixel, so a preprocessing difference of one grey level shows up in the comparison.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SHAPE_NAMES", "build_student", "export_onnx"]

SHAPE_NAMES = ("circle", "square", "triangle")


def _yolo() -> Any:
    # tests/conftest.py sets these too; here so that a benchmark importing this module is offline.
    os.environ.setdefault("YOLO_OFFLINE", "True")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    from ultralytics import YOLO

    return YOLO


def build_student(
    out_dir: Path,
    *,
    names: tuple[str, ...] = SHAPE_NAMES,
    calibration_imgsz: int = 256,
    class_bias: float = -3.0,
    seed: int = 0,
) -> Path:
    """A yolo11n (``names`` classes) with calibrated BatchNorm, saved as ``out_dir/student.pt``."""
    import torch
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    from labeler.synthetic import make_shapes_image

    out_dir.mkdir(parents=True, exist_ok=True)
    config = yaml_model_load("yolo11n.yaml")
    config["nc"] = len(names)
    # Ultralytics reads the model scale (n) from the file name.
    config_path = out_dir / "yolo11n.yaml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    torch.manual_seed(seed)
    model = _yolo()(str(config_path))
    network = model.model
    network.names = dict(enumerate(names))
    rng = np.random.default_rng(seed)
    size = (calibration_imgsz, calibration_imgsz)
    batch = np.stack([np.asarray(make_shapes_image(rng, size, 4)[0]) for _ in range(8)])
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average of the batches seen
    network.train()
    with torch.no_grad():
        network(pixels)
        for branch in network.model[-1].cv3:
            branch[-1].bias.fill_(class_bias)
    network.eval()
    weights = out_dir / "student.pt"
    model.save(weights)
    return weights


def export_onnx(weights: Path, out_path: Path, *, imgsz: int, **options: Any) -> Path:
    """``YOLO(weights).export(format='onnx')`` moved to ``out_path`` (no onnxslim needed)."""
    exported = _yolo()(str(weights)).export(
        format="onnx", imgsz=imgsz, simplify=False, verbose=False, **options
    )
    shutil.move(exported, out_path)
    return out_path
