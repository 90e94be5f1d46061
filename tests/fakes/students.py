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

__all__ = ["SHAPE_NAMES", "build_student", "export_onnx", "overfit_student"]

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
    config_name: str = "yolo11n.yaml",
) -> Path:
    """A yolo11n (``names`` classes) with calibrated BatchNorm, saved as ``out_dir/student.pt``.

    ``config_name="yolo11n-seg.yaml"`` builds a segmentation student the same way.
    """
    import torch
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    from labeler.demo.synthetic import make_shapes_image

    out_dir.mkdir(parents=True, exist_ok=True)
    config = yaml_model_load(config_name)
    config["nc"] = len(names)
    # Ultralytics reads the model scale (n) from the file name.
    config_path = out_dir / config_name
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    torch.manual_seed(seed)
    model = _yolo()(str(config_path))
    network = model.model
    network.names = dict(enumerate(names))
    rng = np.random.default_rng(seed)
    size = (calibration_imgsz, calibration_imgsz)
    images = [make_shapes_image(rng, size, 4)[0] for _ in range(8)]
    _recalibrate_batchnorm(network, images)
    with torch.no_grad():
        for branch in network.model[-1].cv3:
            branch[-1].bias.fill_(class_bias)
    weights = out_dir / "student.pt"
    model.save(weights)
    return weights


def overfit_student(dataset_dir: Path, out_dir: Path, *, imgsz: int, steps: int = 100) -> Path:
    """A yolo11n that has learned ``dataset_dir``'s train images by heart: ``out_dir/student.pt``.

    For checks that need a model which really detects (mAP50-95 around 0.8 on those images)
    in about 20 CPU seconds: ``steps`` optimizer steps on the whole train split at once, with
    augmentation off. One epoch lists the train folder ``steps`` times, because Ultralytics'
    per-epoch work (checkpoints, schedules) costs more than a step at this size. So few steps
    leave BatchNorm's running statistics far behind the weights (scores near 0 in eval mode,
    near 1 in train mode), so they are recalibrated on the train images afterwards.
    """
    import torch
    import yaml
    from PIL import Image

    data = yaml.safe_load((dataset_dir / "data.yaml").read_text())
    train_dir = dataset_dir / data["train"]
    images = sorted(p for p in train_dir.iterdir() if p.suffix in {".png", ".jpg"})
    out_dir.mkdir(parents=True, exist_ok=True)
    repeated = {"train": [str(train_dir)] * steps, "val": str(train_dir), "names": data["names"]}
    data_yaml = out_dir / "repeated.yaml"
    data_yaml.write_text(yaml.safe_dump(repeated))
    model = _yolo()("yolo11n.yaml")
    no_augmentation = dict.fromkeys(
        ("mosaic", "fliplr", "hsv_h", "hsv_s", "hsv_v", "scale", "translate"), 0
    )
    model.train(
        data=str(data_yaml),
        epochs=1,
        imgsz=imgsz,
        batch=len(images),
        nbs=len(images),  # one optimizer step per batch, no gradient accumulation
        optimizer="AdamW",
        lr0=0.003,
        warmup_epochs=0,
        erasing=0,
        close_mosaic=0,
        val=False,
        plots=False,
        amp=False,
        device="cpu",
        workers=0,
        seed=0,
        project=str(out_dir),
        name="run",
        verbose=False,
        **no_augmentation,
    )
    checkpoint_path = Path(model.trainer.last)
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    network = checkpoint["model"].float()
    _recalibrate_batchnorm(network, [Image.open(p).convert("RGB") for p in images])
    checkpoint["model"] = network.half()  # as Ultralytics stores it
    weights = out_dir / "student.pt"
    torch.save(checkpoint, weights)
    return weights


def _recalibrate_batchnorm(network: Any, images: list[Any]) -> None:
    """Set every BatchNorm's running statistics to those of ``images`` (same-size RGB)."""
    import torch

    batch = np.stack([np.asarray(image) for image in images])
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average of the batches seen
    network.train()
    with torch.no_grad():
        network(pixels)
    network.eval()


def export_onnx(weights: Path, out_path: Path, *, imgsz: int, **options: Any) -> Path:
    """``YOLO(weights).export(format='onnx')`` moved to ``out_path`` (no onnxslim needed)."""
    exported = _yolo()(str(weights)).export(
        format="onnx", imgsz=imgsz, simplify=False, verbose=False, **options
    )
    shutil.move(exported, out_path)
    return out_path
