"""How fast is the SEGMENTATION runtime? Ours end to end vs the bare ``InferenceSession.run``.

The full-size YOLO11n-seg architecture (80 classes) at random init with recalibrated BatchNorm
(see tests/fakes/students.py), exported at 640 with a fixed 1x3x640x640 input; synthetic
1280x720 JPEGs, on the CPU:

(a) ours: ``load_runtime(...).predict(paths)`` end to end (JPEG decode, letterbox, onnxruntime,
    NMS, prototype masks decoded, cropped and scaled back to 1280x720), at ``--conf`` and
    ``--max-det``;
(b) the bare ``InferenceSession.run`` of (a)'s own session on ready-made input tensors: the limit;
(c) JPEG decode and letterbox resize alone (what (a) does before the session runs);
(d) NMS and mask decoding alone, on (b)'s saved outputs (what (a) does after the session runs);
(e) = (a) at ``--high-conf`` and max_det 300: the random model then keeps hundreds of
    instances per image, so this row shows how the mask cost grows with the instance count.

Mask decoding costs per instance and per box area, so the ratio depends on how many instances a
run keeps: the header states the count per image. A random model's scores do not look like a
trained one's: its class logits are huge on some images and small on others, so
``--class-bias`` (added to every class logit) moves the count far on some images and not at all
on others. The defaults (class bias -13, ``--max-det 20``) keep 5 to 20 instances on most
images, as in a busy real scene; the header says the spread. Medians over ``--repeats``; the
CPU columns (process time, all threads) are steadier than wall time on a shared machine.
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
from serve.runtime.onnx import OnnxDetector, letterbox_geometry, letterbox_image, load_runtime
from tests.fakes.students import build_student, export_onnx


def _counts(runtime: OnnxDetector, images: list[Path]) -> str:
    """Instances per image, and their boxes' median share of the image (masks cost per pixel)."""
    results = runtime.predict(images)
    counts = [len(d) for d in results]
    shares = [
        float(np.prod(xyxy[2:] - xyxy[:2])) / float(np.prod(d.metadata["image_wh"]))
        for d in results
        for xyxy in d.xyxy
    ]
    share = f"{100 * statistics.median(shares):.0f}%" if shares else "-"
    return (
        f"median {statistics.median(counts):g}, mean {statistics.mean(counts):.1f}, "
        f"min {min(counts)}, max {max(counts)}, median box {share} of the image"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--high-conf", type=float, default=0.01)
    parser.add_argument("--class-bias", type=float, default=-13.0)
    parser.add_argument("--max-det", type=int, default=20)
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
        runtime = load_runtime(
            onnx_path, conf=args.conf, max_det=args.max_det, threads=args.threads
        )
        crowded = load_runtime(onnx_path, conf=args.high_conf, threads=args.threads)
        input_name = runtime.session.get_inputs()[0].name
        tensors = []
        for path in images:
            with Image.open(path) as image:
                geometry = letterbox_geometry(image.size, runtime.imgsz)
                canvas = letterbox_image(image.convert("RGB"), geometry)
            tensors.append(np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32) / 255)
        outputs = [runtime.session.run(None, {input_name: x}) for x in tensors]
        # The runtime's own steps (private methods), to say where (a)'s time beyond (b) goes.
        prepared = [runtime._prepare(path, index) for index, path in enumerate(images)]
        print(
            f"{len(images)} images {args.width}x{args.height}, imgsz {args.imgsz}, "
            f"class bias {args.class_bias:g}; instances per image at conf {args.conf:g}, "
            f"max_det {args.max_det}: "
            f"{_counts(runtime, images)}; at conf {args.high_conf:g}: {_counts(crowded, images)}"
        )
        methods = {
            "a ours end to end": lambda: runtime.predict(images),
            "b bare InferenceSession.run": lambda: [
                runtime.session.run(None, {input_name: x}) for x in tensors
            ],
            "c decode + letterbox only": lambda: [
                runtime._prepare(path, index) for index, path in enumerate(images)
            ],
            "d NMS + masks only": lambda: [
                runtime._postprocess(rows[0][0], item.geometry, rows[1][0])
                for rows, item in zip(outputs, prepared, strict=True)
            ],
            f"e ours end to end, conf {args.high_conf:g}": lambda: crowded.predict(images),
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
