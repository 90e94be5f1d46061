"""How fast is the SEGMENTATION runtime? Ours end to end vs the bare ``InferenceSession.run``.

The full-size YOLO11n-seg architecture (80 classes) at random init with recalibrated BatchNorm
(see tests/fakes/students.py), exported at 640 with a fixed 1x3x640x640 input; synthetic
1280x720 JPEGs, on the CPU:

(a) ours: ``load_runtime(...).predict(paths)`` end to end (JPEG decode, letterbox, onnxruntime,
    NMS, prototype masks decoded, cropped and scaled back to 1280x720);
(b) the bare ``InferenceSession.run`` of (a)'s own session on ready-made input tensors: the limit.

The header says how many instances (masks) per image the run produced: mask decoding costs per
instance, so the ratio depends on it (``--class-bias`` moves it). Medians over ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_runtime import timed, write_images
from serve.runtime.onnx import letterbox_geometry, letterbox_image, load_runtime
from tests.fakes.students import build_student, export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--class-bias", type=float, default=-4.0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "True")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir)
        weights = build_student(
            folder,
            names=tuple(f"class{i}" for i in range(80)),
            calibration_imgsz=min(args.imgsz, 320),
            class_bias=args.class_bias,
            config_name="yolo11n-seg.yaml",
        )
        onnx_path = export_onnx(weights, folder / "seg.onnx", imgsz=args.imgsz)
        images = write_images(folder / "images", args.images, (args.width, args.height))
        runtime = load_runtime(onnx_path, conf=args.conf, threads=args.threads)
        input_name = runtime.session.get_inputs()[0].name
        tensors = []
        for path in images:
            with Image.open(path) as image:
                geometry = letterbox_geometry(image.size, runtime.imgsz)
                canvas = letterbox_image(image.convert("RGB"), geometry)
            tensors.append(np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32) / 255)
        instances = [len(d) for d in runtime.predict(images)]
        print(
            f"{len(images)} images {args.width}x{args.height}, imgsz {args.imgsz}, "
            f"instances per image: median {statistics.median(instances)}, max {max(instances)}"
        )
        methods = {
            "a ours end to end": lambda: runtime.predict(images),
            "b bare InferenceSession.run": lambda: [
                runtime.session.run(None, {input_name: x}) for x in tensors
            ],
        }
        walls: dict[str, list[float]] = {name: [] for name in methods}
        cpus: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, method in methods.items():
                wall, cpu = timed(method)
                walls[name].append(wall)
                cpus[name].append(cpu)
        bare = statistics.median(walls["b bare InferenceSession.run"])
        bare_cpu = statistics.median(cpus["b bare InferenceSession.run"])
        print("| method | ms/image (wall) | vs (b) wall | ms/image (CPU) | vs (b) CPU |")
        print("|---|---|---|---|---|")
        for name in methods:
            wall, cpu = statistics.median(walls[name]), statistics.median(cpus[name])
            print(
                f"| {name} | {wall / len(images) * 1e3:.1f} | {wall / bare:.2f}x "
                f"| {cpu / len(images) * 1e3:.1f} | {cpu / bare_cpu:.2f}x |"
            )


if __name__ == "__main__":
    main()
