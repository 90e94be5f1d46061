"""How fast is the DEVICE RUNTIME? Ours vs a bare onnxruntime run vs Ultralytics' predict.

One ONNX file, the full-size YOLO11n architecture (80 classes) exported at 640 with a fixed
1x3x640x640 input, and the same synthetic 1280x720 JPEGs for everyone, on the CPU:

(a)  ours: ``load_runtime(...).predict(paths)`` end to end (JPEG decode, letterbox, onnxruntime,
     NMS, boxes back to the image), the next image decoded while the model runs;
(a1) ours, one ``detector(path)`` call per image (nothing to overlap);
(a2) ours on already decoded RGB arrays: the runtime's own work without the JPEG codec;
(b)  the bare ``InferenceSession.run`` of (a)'s own session on ready-made input tensors of the
     same images: the limit;
(c)  ``YOLO(onnx_path).predict(paths)``, same conf/iou; (c1) one predict call per image;
(d)  ours on the same weights exported with dynamic height/width: each 1280x720 image is
     letterboxed to the minimal 640x384 rectangle instead of the 640x640 square;
(e)  Ultralytics on that dynamic file, one image per call (it letterboxes minimally too).

Also: the peak RSS of a fresh process that only loads the runtime and runs it over the images
(``ru_maxrss``; torch, Ultralytics and OpenCV are blocked from importing there).

The weights are random (no download) but not useless: BatchNorm statistics are recalibrated on a
few synthetic images (one forward pass in train mode) and the class bias is set so that boxes
pass ``conf`` before NMS (how many varies a lot per image with random weights; the header says).
At plain random init YOLO11n's activations vanish and nothing passes any threshold, which would
flatter every method's NMS. Compute is the same as the real checkpoint's.

Wall time and process CPU time are both reported: on a shared machine CPU time is steadier.
Run ``python benchmarks/bench_runtime.py --help`` for the options; ``--tiny`` is a smoke test of
this script (imgsz 128, 4 images), not a measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.fakes

from labeler.demo.synthetic import make_shapes_image
from serve.runtime.onnx import letterbox_geometry, letterbox_image, load_runtime
from tests.fakes.students import build_student, export_onnx

REPO_ROOT = Path(__file__).resolve().parents[1]

# A fresh interpreter that may import only the base install, runs the runtime over the images
# and prints its peak resident set size in KiB: ru_maxrss (Linux reports KiB) and, as a cross
# check, VmHWM (the peak of the current address space).
PEAK_RSS_SCRIPT = textwrap.dedent(
    """
    import resource, sys

    BLOCKED = {"torch", "ultralytics", "transformers", "cv2", "torchvision"}

    class BlockHeavyImports:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(name + " is blocked")
            return None

    sys.meta_path.insert(0, BlockHeavyImports())
    from serve.runtime.onnx import load_runtime

    detector = load_runtime(sys.argv[1], conf=float(sys.argv[2]))
    for path in sys.argv[3:]:
        detector(path)
    with open("/proc/self/status") as status:
        hwm = next(line.split()[1] for line in status if line.startswith("VmHWM"))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)
    """
)
# Linux carries ru_maxrss across exec: a process started straight from this one (torch and
# Ultralytics loaded, ~1 GB) would report this one's peak. A small intermediate interpreter
# starts the measured one, whose counters then begin at the intermediate's size (~10 MB).
LAUNCHER_SCRIPT = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"


def write_images(folder: Path, count: int, image_wh: tuple[int, int]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for index in range(count):
        image, _ = make_shapes_image(rng, image_wh, 6)
        path = folder / f"frame-{index:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def timed(function: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds (all threads; less sensitive to a busy machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu


def peak_rss_mib(onnx_path: Path, conf: float, images: list[Path]) -> tuple[float, float]:
    """(ru_maxrss, VmHWM) in MiB of a fresh process that runs only the runtime over ``images``."""
    command = [sys.executable, "-c", PEAK_RSS_SCRIPT, str(onnx_path), str(conf)]
    result = subprocess.run(
        [sys.executable, "-c", LAUNCHER_SCRIPT, *command, *map(str, images)],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    maxrss_kib, hwm_kib = result.stdout.split()[-2:]
    return int(maxrss_kib) / 1024, int(hwm_kib) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20, help="synthetic JPEGs (default 20)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; median reported")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--conf", type=float, default=0.25)
    parser.add_argument("--iou", type=float, default=0.7)
    parser.add_argument(
        "--class-bias", type=float, default=-12.0, help="class-score bias: sets the NMS load"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="onnxruntime intra-op threads of ours, so also of (b) (default: one per core); "
        "Ultralytics keeps its default",
    )
    parser.add_argument("--tiny", action="store_true", help="smoke test of this script only")
    args = parser.parse_args()
    # Before Ultralytics is first imported: no network, no pip installs.
    os.environ.setdefault("YOLO_OFFLINE", "True")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    if args.tiny:
        args.images, args.repeats, args.imgsz, args.width, args.height = 4, 1, 128, 320, 180

    import torch
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory() as workdir:
        folder = Path(workdir)
        start = time.perf_counter()
        # 80 classes: the full-size YOLO11n head, at random init with calibrated BatchNorm.
        weights = build_student(
            folder,
            names=tuple(f"class{i}" for i in range(80)),
            calibration_imgsz=min(args.imgsz, 320),
            class_bias=args.class_bias,
        )
        static_path = export_onnx(weights, folder / "static.onnx", imgsz=args.imgsz)
        dynamic_path = export_onnx(weights, folder / "dynamic.onnx", imgsz=args.imgsz, dynamic=True)
        images = write_images(folder / "images", args.images, (args.width, args.height))
        print(f"built and exported the model in {time.perf_counter() - start:.1f} s")

        detector = load_runtime(static_path, conf=args.conf, iou=args.iou, threads=args.threads)
        dynamic = load_runtime(dynamic_path, conf=args.conf, iou=args.iou, threads=args.threads)
        ultralytics_model = YOLO(str(static_path), task="detect")
        ultralytics_dynamic = YOLO(str(dynamic_path), task="detect")
        arrays = []
        for path in images:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        input_name = detector.session.get_inputs()[0].name
        # The images as the runtime feeds them, made before any clock starts: (b)'s inputs, and
        # how many boxes pass conf before NMS (the NMS load).
        tensors = []
        for path in images:
            with Image.open(path) as image:
                geometry = letterbox_geometry(image.size, detector.imgsz)
                canvas = letterbox_image(image.convert("RGB"), geometry)
            tensors.append(np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32) / 255)
        candidates = [
            int(
                (
                    detector.session.run(None, {input_name: x})[0][0, 4:].max(axis=0) > args.conf
                ).sum()
            )
            for x in tensors
        ]
        predict_options = {"conf": args.conf, "iou": args.iou, "verbose": False}
        methods: dict[str, Callable[[], object]] = {
            "a": lambda: detector.predict(images),
            "a1": lambda: [detector(path) for path in images],
            "a2": lambda: detector.predict(arrays),
            "b": lambda: [detector.session.run(None, {input_name: x}) for x in tensors],
            "c": lambda: ultralytics_model.predict([str(p) for p in images], **predict_options),
            "c1": lambda: [ultralytics_model.predict(str(p), **predict_options) for p in images],
            "d": lambda: dynamic.predict(images),
            "e": lambda: [
                ultralytics_dynamic.predict(str(p), imgsz=args.imgsz, **predict_options)
                for p in images
            ],
        }
        for method in methods.values():  # warm-up: first-run allocations, lazy imports
            method()
        boxes = [len(d) for d in detector.predict(images)]
        seconds: dict[str, list[tuple[float, float]]] = {key: [] for key in methods}
        for repeat in range(args.repeats):
            # Interleaved, order reversed every other round: drift on a shared machine hits all.
            for key in sorted(methods, reverse=bool(repeat % 2)):
                seconds[key].append(timed(methods[key]))
        maxrss_mib, hwm_mib = peak_rss_mib(static_path, args.conf, images)

    count = len(images)
    wall = {k: statistics.median(w for w, _ in v) / count * 1e3 for k, v in seconds.items()}
    cpu = {k: statistics.median(c for _, c in v) / count * 1e3 for k, v in seconds.items()}
    print()
    print(
        f"YOLO11n (80 classes, random weights, calibrated BatchNorm), imgsz {args.imgsz}; "
        f"{count} JPEGs {args.width}x{args.height}; conf {args.conf}, iou {args.iou}; "
        f"boxes over conf before NMS per image: median {statistics.median(candidates):.0f} "
        f"(max {max(candidates)}), kept after NMS: median {statistics.median(boxes):.0f}; "
        f"{args.repeats} repeat(s), median; onnxruntime {ort.__version__} "
        f"({', '.join(detector.session.get_providers())}), "
        f"{args.threads or 'default'} intra-op threads for ours and (b), "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    print()
    print("| method | wall ms / image | / (a) | CPU ms / image | / (a) |")
    print("|---|---:|---:|---:|---:|")
    square = f"{args.imgsz}x{args.imgsz}"
    rows = [
        ("a", f"(a) ours: predict(paths), decode + letterbox + run + NMS, static {square}"),
        ("a1", "(a1) ours: one call per image (no decode/run overlap)"),
        ("a2", "(a2) ours: predict(decoded RGB arrays), no JPEG decoding"),
        ("b", f"(b) bare InferenceSession.run on ready 1x3x{square} tensors"),
        ("c", "(c) Ultralytics YOLO(onnx).predict(paths), same file"),
        ("c1", "(c1) Ultralytics: one predict call per image"),
        ("d", "(d) ours, dynamic-shape export, minimal rectangle letterbox"),
        ("e", "(e) Ultralytics on the dynamic export, one image per call (minimal too)"),
    ]
    for key, label in rows:
        print(
            f"| {label} | {wall[key]:.1f} | {wall[key] / wall['a']:.2f}x "
            f"| {cpu[key]:.1f} | {cpu[key] / cpu['a']:.2f}x |"
        )
    print()
    for what, value in (("wall", wall), ("CPU", cpu)):
        print(
            f"{what}: (a)/(b) = {value['a'] / value['b']:.3f}, (a1)/(b) = "
            f"{value['a1'] / value['b']:.3f}, (a2)/(b) = {value['a2'] / value['b']:.3f} "
            f"(target <= 1.10); (c)/(a) = {value['c'] / value['a']:.2f}, (c1)/(a1) = "
            f"{value['c1'] / value['a1']:.2f}, (e)/(d) = {value['e'] / value['d']:.2f} "
            f"(target >= 1.20); dynamic/static (d)/(a) = {value['d'] / value['a']:.2f}; "
            f"time beyond the bare run, Ultralytics/ours: (c-b)/(a-b) = "
            f"{(value['c'] - value['b']) / (value['a'] - value['b']):.2f}"
        )
    print(
        f"peak RSS of a process running only the runtime (a) over the {count} images: "
        f"ru_maxrss {maxrss_mib:.0f} MiB, VmHWM {hwm_mib:.0f} MiB (target <= 300)"
    )


if __name__ == "__main__":
    main()
