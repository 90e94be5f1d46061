"""The demo of the whole loop: class prompts → labels → review → a student → ONNX → predictions on
new images → hard cases → a second labeling round → a fine-tuned student → a gated promotion.

Everything runs through the product's own functions, as the CLI's commands do, in one folder::

    OUT/round1/          sample images and their labeled dataset (round 1)
    OUT/workspace/       dataset versions (datasets/d1, d2) and the model registry (v1, v2)
    OUT/new-images/      frames from the field: another kind of scene the student has not seen
    OUT/outbox/          the hard cases the device runtime kept, with the student's predictions
    OUT/round2/          the hard cases labeled (round 2), student disagreements sent to review

The stand-in reviewer works the review queue through the same decisions a person makes on the
review page (accept what the verifier leaned towards, reject the rest). Offline, the detector
and the verifier are tiny random models, and the demo says so: then every number is
meaningless, but every step runs and every file is real.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from labeler.core.exceptions import ImageError
from labeler.demo.run import demo_label_config, load_demo_models
from labeler.demo.synthetic import write_sample_images
from labeler.pipeline import LabelConfig, ProgressSink, run_label
from labeler.review import queue
from labeler.route import STUDENT_DISAGREES
from labeler.store.workspace import Workspace

__all__ = ["LoopSettings", "run_loop_demo"]

DEMO_REVIEWER = "demo-reviewer"


@dataclass(frozen=True)
class LoopSettings:
    """Sizes that keep the loop under 4 minutes on 2 CPU cores (a smoke run, not a good model)."""

    images: int = 12
    new_images: int = 10
    epochs: int = 3
    fine_tune_epochs: int = 2
    imgsz: int = 128
    batch: int = 8
    device: str = "cpu"


def _auto_review(config: LabelConfig) -> dict[str, int]:
    """The stand-in reviewer: every item of the review queue decided (accept when the verifier
    leaned to yes, else reject), then the dataset written again with the decisions."""
    decided = {"accept": 0, "reject": 0}
    with Workspace(config.workspace) as workspace:
        while items := queue.next_items(
            workspace,
            class_names=config.ontology.names,
            thresholds=config.thresholds,
            reviewer=DEMO_REVIEWER,
            claim_s=60,
            image_url=str,
            limit=200,
        ):
            decisions = []
            for item in items:
                action = "accept" if (item["yes_prob"] or 0.0) >= 0.5 else "reject"
                decided[action] += 1
                decisions.append(
                    queue.DecisionRequest(item["proposal_id"], action, item["version"])
                )
            queue.apply_decisions(
                workspace, decisions, reviewer=DEMO_REVIEWER, class_names=config.ontology.names
            )
    run_label(config, route_only=True)  # the page's export: no model runs
    return decided


def run_loop_demo(
    out: Path,
    *,
    settings: LoopSettings | None = None,
    say: Callable[[str], None] = print,
    progress: Callable[[], ProgressSink] | None = None,
) -> dict[str, Any]:
    """Run the loop in ``out``; ``say`` gets a short summary after each step. Returns every
    step's summary (what ``--json`` prints)."""
    from distill.dataset_versions import DatasetVersions, VersionSource
    from distill.export import export_model
    from distill.registry import Registry, evaluation_metrics, hard_case_eval_set
    from distill.runs import PRODUCTION_BASE, train_and_register
    from distill.train import TrainResult, new_run_dir
    from labeler.student import load_student_predictions
    from serve.runtime.collect import CollectionPolicy, Collector
    from serve.runtime.onnx import load_runtime
    from serve.runtime.outbox import Outbox
    from serve.runtime.segment import records_with_masks

    settings = settings or LoopSettings()
    started = time.perf_counter()
    steps: dict[str, Any] = {}

    def step(number: int, name: str, summary: dict[str, Any], line: str) -> None:
        steps[name] = summary
        say(f"[bold]{number}/8 {name}[/] ({time.perf_counter() - started:.0f} s): {line}")

    def sink() -> ProgressSink | None:
        return progress() if progress is not None else None

    # 1. Class prompts → labels.
    models = load_demo_models(say)
    images = out / "round1" / "images"
    write_sample_images(images, n=settings.images, seed=0)
    round1 = demo_label_config(images, out / "round1" / "dataset", models)
    report = run_label(round1, progress=sink(), detector=models.detector, verifier=models.verifier)
    labels = report["labels"]
    step(
        1,
        "labels",
        {"images": settings.images, "labels": labels},
        f"{settings.images} images: {labels['accepted']} boxes accepted, "
        f"{labels['rejected']} rejected, {labels['needs_review']} sent to review",
    )

    # 2. Review.
    decided = _auto_review(round1)
    step(
        2,
        "review",
        decided,
        f"the stand-in reviewer accepted {decided['accept']} and rejected {decided['reject']} "
        "items of the review queue; the dataset was written again with its decisions",
    )

    # 3. A dataset version, and a student trained on it → ONNX.
    workspace = out / "workspace"
    versions = DatasetVersions(workspace / "datasets")
    d1, _ = versions.create([VersionSource("round1", round1.out_dir)], parent=None)

    def export_onnx(result: TrainResult) -> dict[str, Path]:
        onnx = export_model(result.best, format="onnx", imgsz=settings.imgsz, device="cpu")
        return {"onnx": onnx.path}

    def train_on(data: Path, base: str, epochs: int) -> Any:
        return train_and_register(
            data,
            registry_dir=workspace,
            out_dir=new_run_dir(workspace / "runs"),
            base=base,
            epochs=epochs,
            imgsz=settings.imgsz,
            batch=settings.batch,
            device=settings.device,
            seed=0,
            plots=False,
            prepare_artifacts=export_onnx,
        )

    first = train_on(d1.path, "yolo11n.yaml", settings.epochs)
    with Registry(workspace) as registry:
        registry.promote(first.version.version, evaluate=_never, force=False)
        onnx = registry.get(first.version.version).artifacts["onnx"].path
    step(
        3,
        "student",
        {
            "dataset": d1.version,
            "model": first.version.version,
            "map50_95": first.metrics.get("map50_95"),
            "onnx": str(onnx),
        },
        f"{first.version.version} trained on {d1.version} ({d1.splits}), mAP50-95 "
        f"{first.metrics.get('map50_95', 0):.3f} on its val; production; exported to "
        f"{onnx.name}",
    )

    # 4. Predictions on new images by the device runtime, hard cases collected.
    new_images = out / "new-images"
    _field_frames(new_images, settings.new_images, seed=1)
    runtime = load_runtime(onnx, conf=0.05)
    # The default policy, plus frames where the student found nothing: a new kind of scene.
    collector = Collector(CollectionPolicy(min_detections=1), seed=0)
    outbox = Outbox(out / "outbox")
    collected = 0
    frames = sorted(p for p in new_images.iterdir() if p.is_file())
    for frame in frames:
        try:
            detections = runtime(frame)
        except ImageError:  # a frame the camera mangled: skipped, as `predict` does
            continue
        records = records_with_masks(detections, runtime.names)
        with Image.open(frame) as image:
            reasons = collector.decide(image, records)
        if reasons:
            collected += (
                outbox.add(
                    frame.read_bytes(),
                    suffix=frame.suffix.lower(),
                    manifest={"reasons": reasons, "predictions": records, "device": "demo-camera"},
                )
                is not None
            )
    step(
        4,
        "hard cases",
        {"frames": len(frames), "collected": collected, **collector.skipped},
        f"the student ran on {len(frames)} new frames; {collected} kept as hard cases "
        f"({collector.skipped['duplicate']} near-duplicates and "
        f"{collector.skipped['rate_limited']} over the rate limit skipped)",
    )
    if not collected:
        say("no hard case collected: the loop stops here (nothing new to learn from)")
        return steps

    # 5. A second labeling round on the hard cases, the student's disagreements in review.
    round2 = demo_label_config(
        out / "outbox",
        out / "round2" / "dataset",
        models,
        student_predictions=load_student_predictions(out / "outbox"),
    )
    report = run_label(round2, progress=sink(), detector=models.detector, verifier=models.verifier)
    review = json.loads((round2.out_dir / "review.json").read_text())
    disagreements = sum(1 for item in review if item["reason"].startswith(STUDENT_DISAGREES))
    decided = _auto_review(round2)
    step(
        5,
        "second round",
        {"labels": report["labels"], "student_disagrees": disagreements, "review": decided},
        f"{collected} hard cases labeled: {report['labels']['accepted']} accepted, "
        f"{report['labels']['needs_review']} to review ({disagreements} where the student "
        f"and the teacher disagree); reviewed: {decided['accept']} accepted, "
        f"{decided['reject']} rejected",
    )

    # 6. Dataset version d2: d1 plus the round, hard cases held out where they fall in val.
    hard = [entry.sha256 for entry in outbox.entries()]
    d2, _ = versions.create([VersionSource("round2", round2.out_dir)], hard_cases=hard)
    step(
        6,
        "dataset version",
        {"version": d2.version, "parent": d2.parent, "splits": d2.splits, "added": d2.added},
        f"{d2.version} (parent {d2.parent}): {d2.splits}, new {d2.added}",
    )

    # 7. Fine-tune production on d2.
    second = train_on(d2.path, PRODUCTION_BASE, settings.fine_tune_epochs)
    step(
        7,
        "fine-tuned",
        {
            "model": second.version.version,
            "parent": second.version.parent,
            "map50_95": second.metrics.get("map50_95"),
        },
        f"{second.version.version} fine-tuned from {second.version.parent} on {d2.version}, "
        f"mAP50-95 {second.metrics.get('map50_95', 0):.3f} on its val",
    )

    # 8. The gated promotion: production's evaluation set and the hard cases, per class.
    with Registry(workspace) as registry:
        candidate = registry.get(second.version.version)
        hard_cases = hard_case_eval_set(candidate)
        decision = registry.promote(
            candidate.version,
            evaluate=lambda weights, eval_set: evaluation_metrics(
                weights, eval_set, imgsz=settings.imgsz, device=settings.device
            ),
            extra_eval_sets=[hard_cases] if hard_cases is not None else [],
        )
    step(
        8,
        "promotion",
        {"promoted": decision.promoted, "reason": decision.reason},
        f"{candidate.version} {'promoted' if decision.promoted else 'refused'}: {decision.reason}",
    )
    steps["seconds"] = round(time.perf_counter() - started, 1)
    return steps


def _field_frames(folder: Path, n: int, *, seed: int) -> None:
    """Frames from the field: the same classes in another kind of scene (other backgrounds and
    shape variants: ``make_shapes_image``'s shifted domain), as JPEGs from a camera."""
    import numpy as np

    from labeler.demo.synthetic import make_shapes_image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(n):
        image, _ = make_shapes_image(rng, (640, 480), n_shapes=3, domain="shifted")
        image.save(folder / f"frame-{index:03d}.jpg", quality=90)


def _never(*_: object, **__: object) -> dict[str, Any]:
    raise AssertionError("the first promotion compares with nothing")
