"""``promptlabel predict``: an exported student on images, with the device runtime only."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from labeler.core.exceptions import PromptlabelError
from serve.cli.common import console, fail, make_progress, print_json, results
from serve.runtime.defaults import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET

if TYPE_CHECKING:
    from serve.runtime.collect import Collector
    from serve.runtime.outbox import Outbox

__all__ = ["predict"]


def _open_collection(
    collect: Path | None, policy: Path | None
) -> tuple[Collector | None, Outbox | None]:
    """The collector and outbox for --collect (the default policy when no --policy is given)."""
    from serve.runtime.collect import CollectionPolicy, Collector, load_policy
    from serve.runtime.outbox import Outbox

    if collect is None:
        if policy is not None:
            raise fail("--policy needs --collect OUTBOX")
        return None, None
    chosen = load_policy(policy) if policy is not None else CollectionPolicy()
    return Collector(chosen), Outbox(collect)


def _collect_frame(
    collector: Collector, outbox: Outbox, path: Path, item: dict[str, Any], device_name: str
) -> int:
    """1 if the frame at ``path`` went into the outbox, else 0 (not a hard case, or the outbox
    stopped collecting: prediction goes on either way)."""
    from PIL import Image

    with Image.open(path) as image:
        reasons = collector.decide(image, item["detections"])
    if not reasons:
        return 0
    entry = outbox.add(
        path.read_bytes(),
        suffix=path.suffix.lower(),
        manifest={
            "reasons": reasons,
            "predictions": item["detections"],
            "image_wh": item["image_wh"],
            "device": device_name,
            "source_path": str(path),
        },
    )
    return 0 if entry is None else 1


def _summary_table(images: list[dict[str, Any]]) -> Table:
    """One row per image: its size, box count and boxes per class (most first)."""
    table = Table(header_style="bold")
    table.add_column("image", overflow="fold")  # a long path folds onto more lines, never cut
    table.add_column("size", no_wrap=True)
    table.add_column("boxes", justify="right")
    table.add_column("classes")
    for item in images:
        per_class = Counter(d["class"] for d in item["detections"])
        table.add_row(
            escape(item["path"]),
            "x".join(str(v) for v in item["image_wh"]),
            str(len(item["detections"])),
            escape(", ".join(f"{name} {count}" for name, count in per_class.most_common())),
        )
    return table


def predict(
    model: Annotated[Path, typer.Argument(help="An exported .onnx student.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the detections as JSON on stdout instead of a table."),
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Also write the detections as JSON here.")
    ] = None,
    save_annotated: Annotated[
        Path | None, typer.Option(help="Folder to write images with boxes drawn.")
    ] = None,
    conf: Annotated[float, typer.Option(help="Minimum score.")] = DEFAULT_CONF,
    iou: Annotated[float, typer.Option(help="NMS IoU.")] = DEFAULT_IOU,
    max_det: Annotated[int, typer.Option(help="Most boxes per image.")] = DEFAULT_MAX_DET,
    collect: Annotated[
        Path | None,
        typer.Option(help="Outbox folder: keep hard cases there for `promptlabel push`."),
    ] = None,
    policy: Annotated[
        Path | None, typer.Option(help="Collection policy YAML (with --collect).")
    ] = None,
    device_name: Annotated[
        str | None, typer.Option(help="This device's name in the hard cases' manifests.")
    ] = None,
) -> None:
    """Run an exported student on images with the device runtime (numpy + onnxruntime only).

    A table of images and their boxes goes to stdout (with --json, every box as JSON: class_id,
    class, score, xyxy in pixels); counts and failed images go to stderr.
    """
    from labeler.core.exceptions import ImageError
    from labeler.core.images import iter_image_paths
    from serve.runtime.onnx import load_runtime
    from serve.runtime.segment import records_with_masks

    try:
        detector = load_runtime(model, conf=conf, iou=iou, max_det=max_det)
        paths = [
            p for item in images for p in (iter_image_paths(item) if item.is_dir() else [item])
        ]
        collector, outbox = _open_collection(collect, policy)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    collected = 0
    predicted: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    if save_annotated is not None:
        save_annotated.mkdir(parents=True, exist_ok=True)
    with make_progress() as progress:
        task = progress.add_task("Predicting", total=len(paths))
        for path in paths:
            progress.advance(task)
            try:
                detections = detector(path)
            except ImageError as error:
                failed.append({"path": str(path), "error": f"{error.reason}: {error.detail}"})
                continue
            predicted.append(
                {
                    "path": str(path),
                    "image_wh": list(detections.metadata.get("image_wh", ())),
                    "detections": records_with_masks(detections, detector.names),
                }
            )
            if collector is not None and outbox is not None:
                collected += _collect_frame(
                    collector, outbox, path, predicted[-1], device_name or socket.gethostname()
                )
            if save_annotated is not None:
                from labeler.core.images import load_image
                from serve.runtime.annotate import draw_detections

                drawn = draw_detections(load_image(path).image, detections, detector.names)
                drawn.save(save_annotated / f"{path.stem}.jpg", quality=90)
    payload = {"model": str(model), "images": predicted, "failed": failed}
    if json_out is not None:
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        print_json(payload)
    elif predicted:
        results.print(_summary_table(predicted))
    boxes = sum(len(r["detections"]) for r in predicted)
    console.print(f"{len(predicted)} images, {boxes} boxes, {len(failed)} failed", highlight=False)
    if collector is not None and outbox is not None:
        console.print(
            f"collected {collected} hard cases into {escape(str(outbox.root))} "
            f"({collector.skipped['duplicate']} near-duplicates and "
            f"{collector.skipped['rate_limited']} over the rate limit skipped, "
            f"{outbox.dropped} dropped for the size cap)",
            highlight=False,
        )
        if outbox.disabled_reason is not None:
            console.print(f"[yellow]warning:[/] {escape(outbox.disabled_reason)}", highlight=False)
    for failure in failed:
        console.print(
            f"  [yellow]failed[/] {escape(failure['path'])}: {escape(failure['error'])}",
            highlight=False,
        )
