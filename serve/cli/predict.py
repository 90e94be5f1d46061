"""``promptlabel predict``: an exported student on images, with the device runtime only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from labeler.core.exceptions import PromptlabelError
from serve.cli.common import console, fail, make_progress

__all__ = ["predict"]


def predict(
    model: Annotated[Path, typer.Argument(help="An exported .onnx student.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders (recursive).")],
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write detections here (default: stdout).")
    ] = None,
    save_annotated: Annotated[
        Path | None, typer.Option(help="Folder to write images with boxes drawn.")
    ] = None,
    conf: Annotated[float, typer.Option(help="Minimum score.")] = 0.25,
    iou: Annotated[float, typer.Option(help="NMS IoU.")] = 0.7,
    max_det: Annotated[int, typer.Option(help="Most boxes per image.")] = 300,
) -> None:
    """Run an exported student on images with the device runtime (numpy + onnxruntime only)."""
    from labeler.core.exceptions import ImageError
    from labeler.core.images import iter_image_paths
    from serve.runtime.onnx import load_runtime

    try:
        detector = load_runtime(model, conf=conf, iou=iou, max_det=max_det)
        paths = [
            p for item in images for p in (iter_image_paths(item) if item.is_dir() else [item])
        ]
    except PromptlabelError as error:
        raise fail(str(error)) from None
    results: list[dict[str, Any]] = []
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
            results.append(
                {
                    "path": str(path),
                    "image_wh": list(detections.metadata.get("image_wh", ())),
                    "detections": [
                        {
                            "class_id": class_id,
                            "class": detector.names[class_id],
                            "confidence": round(score, 5),
                            "xyxy": [round(float(v), 2) for v in xyxy],
                        }
                        for xyxy, class_id, score in detections
                    ],
                }
            )
            if save_annotated is not None:
                from labeler.core.images import load_image
                from serve.runtime.annotate import draw_detections

                drawn = draw_detections(load_image(path).image, detections, detector.names)
                drawn.save(save_annotated / f"{path.stem}.jpg", quality=90)
    payload = json.dumps({"model": str(model), "images": results, "failed": failed}, indent=2)
    if json_out is None:
        typer.echo(payload)
    else:
        json_out.write_text(payload + "\n")
    boxes = sum(len(r["detections"]) for r in results)
    console.print(f"{len(results)} images, {boxes} boxes, {len(failed)} failed", highlight=False)
    for failure in failed:
        console.print(f"  [yellow]failed[/] {failure['path']}: {failure['error']}", highlight=False)
