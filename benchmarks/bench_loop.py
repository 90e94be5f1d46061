"""Does the CLOSED LOOP pay? Hard cases chosen by the collection policy vs frames chosen at random.

Issue 14's benchmark, on generated scenes with exactly known boxes (labeler/demo/synthetic.py):

1. Domain A (the default shapes: filled shapes on noise, gradients, stripes): a train split and a
   val split. Domain B (``domain="shifted"``: hollow, smaller shapes on checkerboards and colour
   blobs): a pool of unlabeled frames the device sees, and a val split. Same classes, all seeded.
2. A student is trained on A from scratch (``distill.train.train``, base ``yolo11n.yaml``: no
   pretrained weights exist offline) and scored on A val and B val (``distill.evaluate``, COCO).
3. It is exported to ONNX (``distill.export.export_model``) and the device runtime
   (``serve.runtime.onnx.load_runtime``, default conf/iou) runs over the B pool in order; every
   frame goes through ``Collector.decide`` exactly as ``promptlabel predict --collect`` does it
   (``serve/cli/predict.py`` ``_collect_frame``: the frame as a PIL image and its detection
   records). Frames are taken to arrive at ``--fps`` (default 1 per second): the collector's clock
   is the frame's arrival time, so its rate limits act as they would on a camera, not on a
   benchmark that reads frames as fast as it can.
4. Arm "policy": the first N collected frames in arrival order (what a device's outbox would push
   first); fewer are used, and the header says so, when the policy collects fewer. Arm "random":
   N pool frames drawn with ``random.Random(seed)``. ``--tuned-band LOW,HIGH`` adds arm "tuned":
   the same policy with that confidence band for every class. ``--control`` adds arm "none": the
   same fine-tuning on A train alone, which tells what the extra epochs do without any B frame
   (a student trained briefly from scratch still gains on A from them).
5. The chosen frames are "labeled" with the generator's ground truth (the benchmark's teacher
   fixture: a perfect teacher, so the arms differ only in which frames they pick) and the student
   is fine-tuned from its A checkpoint on A train + those frames, the same number of epochs for
   every arm, and its last checkpoint (not the one best on A val, which would favour forgetting
   B) is scored on A val and B val again.

The table: mAP50-95 and mAP50 on A and B before and after; "B gap closed" is
(B after - B before) / (A before - B before), the share of the A-to-B gap on mAP50-95 that the
round recovered; "A drop" is A before - A after on mAP50-95, against the promotion gate's
tolerance (``distill.registry.DEFAULT_PROMOTE_TOLERANCE``).

The policy: ``CollectionPolicy()`` (the default of ``promptlabel predict --collect``) when it has
any rule switched on; with every rule off it collects nothing, and then the policy of the README's
example (``EXAMPLE_POLICY`` below) is used; ``--policy FILE`` uses a YAML policy instead. The
header says which, and how many frames each collected.

Everything runs on the CPU at a small image size (the defaults take about 15 minutes on two
shared cores); ``--help`` lists the sizes and epochs. One seed is one sample: ``--seed`` changes
the images, the student's initialisation and the random arm's draw.
``--tiny`` is a smoke test of this script (a few images, one epoch), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "True")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")

import numpy as np
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.evaluate import evaluate
from distill.export import export_model
from distill.registry import DEFAULT_PROMOTE_TOLERANCE
from distill.train import train
from labeler.demo.synthetic import SHAPE_CLASSES, make_shapes_image
from serve.runtime.collect import CollectionPolicy, Collector, load_policy, policy_from_mapping
from serve.runtime.onnx import load_runtime
from serve.runtime.segment import records_with_masks

logger = logging.getLogger("bench_loop")

# The README's example policy ("Hard cases from devices"), for every class alike.
EXAMPLE_POLICY: dict[str, Any] = {
    "confidence_band": {"*": [0.3, 0.45]},
    "min_detections": 1,
    "max_detections": 30,
    "sample_rate": 0.01,
    "rate_limits": {"per_minute": 6, "per_hour": 60, "per_day": 500},
}


@dataclass
class Scores:
    a_map50_95: float
    a_map50: float
    b_map50_95: float
    b_map50: float


@dataclass
class Arm:
    name: str
    frames: list[int] = field(default_factory=list)  # indices into the B pool
    available: int = 0  # how many frames the arm could choose from
    reasons: dict[str, int] = field(default_factory=dict)  # the policy's reasons, chosen frames
    after: Scores | None = None
    train_s: float = 0.0


def _yolo_label_lines(xyxy: np.ndarray, class_id: np.ndarray, image_wh: tuple[int, int]) -> str:
    width, height = image_wh
    lines = []
    for (x1, y1, x2, y2), cid in zip(xyxy.tolist(), class_id.tolist(), strict=True):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{cid} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "".join(line + "\n" for line in lines)


def write_split(
    root: Path, split: str, n: int, *, domain: str, seed: int, image_size: int, max_shapes: int
) -> list[Path]:
    """``n`` PNGs in ``root/images/split`` with YOLO labels in ``root/labels/split``."""
    images_dir, labels_dir = root / "images" / split, root / "labels" / split
    images_dir.mkdir(parents=True)
    labels_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    paths = []
    image_wh = (image_size, image_size)
    for i in range(n):
        image, truth = make_shapes_image(
            rng, image_wh, n_shapes=int(rng.integers(1, max_shapes + 1)), domain=domain
        )
        path = images_dir / f"{split}-{i:05d}.png"
        image.save(path, "PNG")
        (labels_dir / f"{path.stem}.txt").write_text(
            _yolo_label_lines(truth.xyxy, truth.class_id, image_wh)
        )
        paths.append(path)
    return paths


def write_data_yaml(path: Path, train: list[str], val: str) -> Path:
    document = {"train": train, "val": val, "names": dict(enumerate(SHAPE_CLASSES))}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def score(model: Path, root: Path, imgsz: int) -> Scores:
    on_a = evaluate(model, root / "eval_a.yaml", imgsz=imgsz, device="cpu")
    on_b = evaluate(model, root / "eval_b.yaml", imgsz=imgsz, device="cpu")
    return Scores(on_a.map50_95, on_a.map50, on_b.map50_95, on_b.map50)


def choose_policy(policy_file: Path | None) -> tuple[CollectionPolicy, str]:
    """The policy arm's policy and where it came from."""
    if policy_file is not None:
        return load_policy(policy_file), str(policy_file)
    default = CollectionPolicy()
    rules_on = (
        default.confidence_band
        or default.min_detections is not None
        or default.max_detections is not None
        or default.sample_rate > 0
    )
    if rules_on:
        return default, "CollectionPolicy() (the default)"
    return (
        policy_from_mapping(EXAMPLE_POLICY, source="EXAMPLE_POLICY"),
        "the README's example (CollectionPolicy() has every rule off)",
    )


def collect(
    onnx_path: Path,
    pool: list[Path],
    policies: dict[str, CollectionPolicy],
    *,
    fps: float,
    seed: int,
) -> tuple[dict[str, list[tuple[int, list[str]]]], dict[str, dict[str, int]]]:
    """Run the device runtime over ``pool`` in order; for each policy, the frames it collects
    (pool index and reasons, in arrival order) and its collector's skip counts."""
    detector = load_runtime(onnx_path)
    arrival_s = [0.0]  # the clock of every collector: the current frame's arrival time
    collectors = {
        name: Collector(policy, seed=seed, clock=lambda: arrival_s[0])
        for name, policy in policies.items()
    }
    chosen: dict[str, list[tuple[int, list[str]]]] = {name: [] for name in policies}
    for index, path in enumerate(pool):
        arrival_s[0] = index / fps
        detections = detector(path)
        records = records_with_masks(detections, detector.names)
        for name, collector in collectors.items():
            # As serve/cli/predict.py's _collect_frame: the frame opened with PIL, then decide.
            with Image.open(path) as image:
                reasons = collector.decide(image, records)
            if reasons:
                chosen[name].append((index, reasons))
    return chosen, {name: dict(c.skipped) for name, c in collectors.items()}


def fine_tune(arm: Arm, root: Path, pool: list[Path], base: Path, args: argparse.Namespace) -> Path:
    """Fine-tune ``base`` on A train + the arm's frames, labeled by the generator (the teacher
    fixture); the last checkpoint."""
    images_dir, labels_dir = (
        root / "images" / f"round-{arm.name}",
        root / "labels" / f"round-{arm.name}",
    )
    images_dir.mkdir(parents=True)
    labels_dir.mkdir(parents=True)
    for index in arm.frames:
        frame = pool[index]
        shutil.copy2(frame, images_dir / frame.name)
        shutil.copy2(
            root / "labels" / "b_pool" / f"{frame.stem}.txt", labels_dir / f"{frame.stem}.txt"
        )
    train_folders = ["images/a_train"] + ([f"images/round-{arm.name}"] if arm.frames else [])
    data_yaml = write_data_yaml(root / f"round-{arm.name}.yaml", train_folders, "images/a_val")
    start = time.perf_counter()
    result = train(
        data_yaml,
        base=base,
        epochs=args.round_epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        patience=0,
        seed=args.seed,
        out_dir=root / "runs" / f"round-{arm.name}",
        workers=0,
        plots=False,
    )
    arm.train_s = time.perf_counter() - start
    return result.last


def gap_closed(before: Scores, after: Scores) -> float | None:
    gap = before.a_map50_95 - before.b_map50_95
    if gap <= 0:
        return None
    return (after.b_map50_95 - before.b_map50_95) / gap


def markdown_table(before: Scores, arms: list[Arm], n: int) -> str:
    rows = [
        "| arm | frames | A mAP50-95 | A mAP50 | B mAP50-95 | B mAP50 | B gap closed | A drop "
        f"(tolerance {DEFAULT_PROMOTE_TOLERANCE}) |",
        "|---|---|---|---|---|---|---|---|",
        f"| before (A only) | - | {before.a_map50_95:.3f} | {before.a_map50:.3f} | "
        f"{before.b_map50_95:.3f} | {before.b_map50:.3f} | - | - |",
    ]
    for arm in arms:
        if arm.after is None:
            continue
        closed = gap_closed(before, arm.after)
        drop = before.a_map50_95 - arm.after.a_map50_95
        verdict = "within" if drop <= DEFAULT_PROMOTE_TOLERANCE else "beyond"
        short = arm.name != "none" and len(arm.frames) < n  # the control takes no frames
        frames = f"{len(arm.frames)}" + (f" of {n}" if short else "")
        rows.append(
            f"| {arm.name} | {frames} | {arm.after.a_map50_95:.3f} | {arm.after.a_map50:.3f} | "
            f"{arm.after.b_map50_95:.3f} | {arm.after.b_map50:.3f} | "
            f"{'n/a' if closed is None else f'{closed:.0%}'} | {drop:+.3f} ({verdict}) |"
        )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30, help="frames per arm (default 30)")
    parser.add_argument("--a-train", type=int, default=300, help="domain A train images")
    parser.add_argument("--a-val", type=int, default=60, help="domain A val images")
    parser.add_argument("--b-pool", type=int, default=400, help="domain B frames the device sees")
    parser.add_argument("--b-val", type=int, default=60, help="domain B val images")
    parser.add_argument("--image-size", type=int, default=160, help="square image side, px")
    parser.add_argument("--imgsz", type=int, default=160, help="training/inference size")
    parser.add_argument("--max-shapes", type=int, default=4, help="shapes per image: 1 to this")
    parser.add_argument("--epochs", type=int, default=30, help="epochs on A, from scratch")
    parser.add_argument("--round-epochs", type=int, default=10, help="fine-tuning epochs per arm")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument(
        "--fps", type=float, default=1.0, help="frame arrival rate (collector clock)"
    )
    parser.add_argument("--policy", type=Path, help="collection policy YAML for the policy arm")
    parser.add_argument(
        "--tuned-band",
        help="LOW,HIGH: add arm 'tuned', the policy with this confidence band for every class",
    )
    parser.add_argument(
        "--control", action="store_true", help="add arm 'none': fine-tune on A alone, no B frames"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="work folder (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--tiny", action="store_true", help="smoke test of this script only")
    args = parser.parse_args(argv)
    if args.tiny:
        args.a_train, args.a_val, args.b_pool, args.b_val = 16, 8, 24, 8
        args.n, args.epochs, args.round_epochs, args.image_size, args.imgsz = 4, 1, 1, 64, 64
    if args.n < 1 or min(args.a_train, args.a_val, args.b_pool, args.b_val) < 1:
        parser.error("--n and every split size must be at least 1")
    if args.n > args.b_pool:
        parser.error(f"--n {args.n} is more than the B pool (--b-pool {args.b_pool})")
    if args.fps <= 0:
        parser.error("--fps must be above 0")
    if args.tuned_band is not None:
        try:
            low, high = (float(v) for v in args.tuned_band.split(","))
        except ValueError:
            parser.error(f"--tuned-band must be LOW,HIGH, got {args.tuned_band!r}")
        args.tuned_band = (low, high)
    return args


def run(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    seeds = {"a_train": 1, "a_val": 2, "b_pool": 3, "b_val": 4}
    sizes = {
        "a_train": args.a_train,
        "a_val": args.a_val,
        "b_pool": args.b_pool,
        "b_val": args.b_val,
    }
    splits = {
        split: write_split(
            root,
            split,
            sizes[split],
            domain="default" if split.startswith("a_") else "shifted",
            seed=args.seed * 100 + seeds[split],
            image_size=args.image_size,
            max_shapes=args.max_shapes,
        )
        for split in sizes
    }
    pool = splits["b_pool"]
    write_data_yaml(root / "eval_a.yaml", ["images/a_val"], "images/a_val")
    write_data_yaml(root / "eval_b.yaml", ["images/b_val"], "images/b_val")
    data_a = write_data_yaml(root / "data_a.yaml", ["images/a_train"], "images/a_val")
    timings["generate_s"] = time.perf_counter() - start

    logger.info("training the A student: %d epochs on %d images", args.epochs, args.a_train)
    start = time.perf_counter()
    student = train(
        data_a,
        base="yolo11n.yaml",
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device="cpu",
        patience=0,
        seed=args.seed,
        out_dir=root / "runs" / "a",
        workers=0,
        plots=False,
    )
    timings["train_a_s"] = time.perf_counter() - start
    before = score(student.best, root, args.imgsz)
    logger.info("before: %s", before)

    start = time.perf_counter()
    onnx_path = export_model(
        student.best, format="onnx", imgsz=args.imgsz, output=root / "student-a.onnx"
    ).path
    policy, policy_source = choose_policy(args.policy)
    policies = {"policy": policy}
    if policy != CollectionPolicy():
        policies["default"] = CollectionPolicy()  # how much the default would have collected
    if args.tuned_band is not None:
        policies["tuned"] = policy.model_copy(update={"confidence_band": {"*": args.tuned_band}})
    collected, skipped = collect(onnx_path, pool, policies, fps=args.fps, seed=args.seed)
    timings["export_and_collect_s"] = time.perf_counter() - start

    arms = [
        Arm(
            name,
            [index for index, _ in collected[name][: args.n]],
            len(collected[name]),
            dict(Counter(r for _, reasons in collected[name][: args.n] for r in reasons)),
        )
        for name in ("policy", "tuned")
        if name in policies
    ]
    arms.append(
        Arm("random", sorted(random.Random(args.seed).sample(range(len(pool)), args.n)), len(pool))
    )
    if args.control:
        arms.append(Arm("none"))
    for arm in arms:
        logger.info("arm %s: fine-tuning on A train + %d B frames", arm.name, len(arm.frames))
        arm.after = score(fine_tune(arm, root, pool, student.best, args), root, args.imgsz)
        logger.info("arm %s after: %s", arm.name, arm.after)
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "policy_source": policy_source,
        "policy": policy.model_dump(),
        "collected": {name: len(indices) for name, indices in collected.items()},
        "skipped": skipped,
        "before": asdict(before),
        "arms": [asdict(arm) for arm in arms],
        "gate_tolerance": DEFAULT_PROMOTE_TOLERANCE,
        "timings_s": timings,
        "table": markdown_table(before, arms, args.n),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    command = "python benchmarks/bench_loop.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    started = time.perf_counter()
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-loop-"))
    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            print(f"error: --out {args.out} is not empty", file=sys.stderr)
            raise SystemExit(2)
        args.out.mkdir(parents=True, exist_ok=True)
    try:
        results = run(args, root)
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    results["command"] = command
    results["total_s"] = time.perf_counter() - started
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"command: {command}")
    print(
        f"A: {args.a_train} train / {args.a_val} val; B: {args.b_pool} pool / {args.b_val} val; "
        f"{args.image_size}px images, imgsz {args.imgsz}, 1-{args.max_shapes} shapes each; "
        f"yolo11n.yaml from scratch, {args.epochs} epochs on A, {args.round_epochs} per round "
        f"(batch {args.batch}, CPU, seed {args.seed})"
    )
    print(f"policy arm: {results['policy_source']}: {json.dumps(results['policy'])}")
    print(
        f"frames arriving at {args.fps:g} fps; collected from the {args.b_pool}-frame pool: "
        + ", ".join(f"{name} {count}" for name, count in results["collected"].items())
        + "; skipped: "
        + ", ".join(f"{name} {counts}" for name, counts in results["skipped"].items())
    )
    print(f"took {results['total_s'] / 60:.1f} min ({json.dumps(results['timings_s'])})")
    for arm in results["arms"]:
        if arm["reasons"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(arm["reasons"].items()))
            print(f"{arm['name']} arm: frames' reasons: {reasons}")
    print()
    print(results["table"])


if __name__ == "__main__":
    main()
