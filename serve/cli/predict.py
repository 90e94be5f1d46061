"""``promptlabel predict``: an exported student on images, with the device runtime only."""

from __future__ import annotations

import json
import os
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
    from serve.runtime.model_pull import PulledModel
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
    collector, outbox = Collector(chosen), Outbox(collect)
    # The rate limits and near-duplicates count across runs, not per run.
    collector.restore(outbox.state().get("collector") or {})
    return collector, outbox


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


def _split_model_and_images(
    inputs: list[Path], model_url: str | None
) -> tuple[Path | None, list[Path]]:
    """MODEL and the images from the positional arguments: with --model-url they are all
    images (a first one that is an .onnx file is a usage error: two models were given)."""
    if model_url is None:
        if len(inputs) < 2:
            raise fail(
                "give MODEL.onnx and at least one image or folder "
                "(or --model-url URL and the images)"
            )
        return inputs[0], inputs[1:]
    if inputs and inputs[0].suffix.lower() == ".onnx":
        raise fail(f"give either a model file ({inputs[0]}) or --model-url, not both")
    if not inputs:
        raise fail("give at least one image or folder to predict on")
    return None, inputs


def _pull(model_url: str, model_cache: Path | None, refresh_minutes: float | None) -> PulledModel:
    """The verified local copy of the model at ``model_url``; exit 1 when there is none."""
    from serve.runtime.model_pull import (
        DEFAULT_REFRESH_MINUTES,
        ModelPullError,
        default_cache_dir,
        pull_model,
    )

    if refresh_minutes is None:
        refresh_minutes = DEFAULT_REFRESH_MINUTES
    try:
        pulled = pull_model(
            model_url,
            model_cache or default_cache_dir(),
            refresh_s=refresh_minutes * 60,
            api_key=os.environ.get("PROMPTLABEL_API_KEY") or None,
        )
    except ModelPullError as error:
        # Not a usage error: the same command may work once the server is reachable.
        raise fail(str(error), code=1) from None
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if pulled.warning is not None:
        console.print(f"[yellow]warning:[/] {escape(pulled.warning)}", highlight=False)
    how = {
        "downloaded": "downloaded and verified",
        "not_modified": "unchanged on the server",
        "cached": "checked recently, not asked again",
        "fallback": "the cached copy",
    }[pulled.how]
    console.print(
        f"model {escape(pulled.version or 'of unknown version')} "
        f"(sha256 {pulled.sha256[:12]}): {how}",
        highlight=False,
    )
    return pulled


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
    inputs: Annotated[
        list[Path],
        typer.Argument(
            metavar="[MODEL] IMAGES",
            help="An exported .onnx student, then image files or folders (recursive); with "
            "--model-url, images only.",
            show_default=False,
        ),
    ],
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
    model_url: Annotated[
        str | None,
        typer.Option(
            help="Use the model served here instead of a MODEL file (the service's "
            ".../models/production/onnx; the API key in $PROMPTLABEL_API_KEY).",
        ),
    ] = None,
    model_cache: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the verified copy of --model-url's model.",
            show_default="~/.cache/promptlabel/models",
        ),
    ] = None,
    refresh_minutes: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Ask --model-url for a newer model at most this often.",
            show_default="10",
        ),
    ] = None,
) -> None:
    """Run an exported student on images with the device runtime (numpy + onnxruntime only).

    A table of images and their boxes goes to stdout (with --json, every box as JSON: class_id,
    class, score, xyxy in pixels); counts and failed images go to stderr.

    With --model-url the model is a local copy verified against the server's SHA-256, checked
    for a newer one at most every --refresh-minutes; when the server cannot be reached the copy
    is used with a warning. With no copy and no server the exit code is 1 (2: wrong usage).
    """
    from labeler.core.exceptions import ImageError
    from labeler.core.images import iter_image_paths
    from serve.runtime.onnx import load_runtime
    from serve.runtime.segment import records_with_masks

    model, images = _split_model_and_images(inputs, model_url)
    if model_url is None and (model_cache is not None or refresh_minutes is not None):
        raise fail("--model-cache and --refresh-minutes go with --model-url")
    pulled = None
    if model_url is not None:
        pulled = _pull(model_url, model_cache, refresh_minutes)
        model = pulled.path
    assert model is not None  # one of the two, checked above
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
    payload: dict[str, Any] = {"model": str(model), "images": predicted, "failed": failed}
    if pulled is not None:
        payload["model_pull"] = pulled.as_dict()
    if json_out is not None:
        json_out.write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        print_json(payload)
    elif predicted:
        results.print(_summary_table(predicted))
    boxes = sum(len(r["detections"]) for r in predicted)
    console.print(f"{len(predicted)} images, {boxes} boxes, {len(failed)} failed", highlight=False)
    if collector is not None and outbox is not None:
        try:
            outbox.save_state(collector=collector.memory())
        except OSError as error:  # a full disk: the next run starts its limits afresh
            console.print(f"[yellow]warning:[/] {escape(str(outbox.root))}: {error}")
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
