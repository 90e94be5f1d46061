"""``promptlabel label`` and ``promptlabel demo``: the labeling stage from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from labeler.core.exceptions import PromptlabelError
from labeler.settings import LabelSettings, get_label_settings
from serve.cli.common import (
    RichProgressSink,
    console,
    env_default,
    fail,
    given,
    make_progress,
    print_json,
    results,
    settings_or_exit,
    setup_logging,
)

__all__ = ["demo", "label", "print_report"]


def print_report(report: dict[str, Any]) -> None:
    """The run's summary as tables on stderr (stdout stays free for machine output)."""
    images = report["images"]
    table = Table(title="promptlabel report", show_header=True, header_style="bold")
    table.add_column("class")
    for column in ("accepted", "rejected", "needs_review"):
        table.add_column(column, justify="right")
    for name, counts in report["per_class"].items():
        table.add_row(name, *(str(counts[c]) for c in ("accepted", "rejected", "needs_review")))
    labels = report["labels"]
    table.add_row(
        "[bold]all[/]", *(f"[bold]{labels[c]}[/]" for c in ("accepted", "rejected", "needs_review"))
    )
    console.print(table)
    verifier = report["verifier"]
    timings = ", ".join(f"{stage} {seconds:.1f}s" for stage, seconds in report["timings_s"].items())
    # Files with the same content are one image to the pipeline and the dataset.
    copies = images["labeled"] > images["unique"]
    same_content = f" ({images['unique']} distinct: copies are labeled once)" if copies else ""
    console.print(
        f"images: {images['total']} found, {images['labeled']} labeled{same_content}, "
        f"{len(images['failed'])} failed, {images['with_accepted_boxes']} with accepted boxes\n"
        f"verifier: {verifier['calls']} calls, {verifier['cache_hits']} cache hits, "
        f"{verifier['errors']} errors\n"
        + (
            f"masks: {report['masks']['computed']} computed, {report['masks']['cached']} cached, "
            f"{report['masks']['sent_to_review']} sent to review\n"
            if report.get("masks")
            else ""
        )
        + f"timings: {timings}\n"
        f"dataset: {report['dataset']['path']} (data.yaml, report.json, review.json)",
        highlight=False,
    )
    for failure in images["failed"][:20]:
        console.print(f"  [yellow]failed[/] {failure['path']}: {failure['error']}", highlight=False)
    if len(images["failed"]) > 20:
        console.print(f"  ... and {len(images['failed']) - 20} more in report.json")


def _default(name: str) -> str:
    return env_default(LabelSettings, name)


def label(
    images_dir: Annotated[Path, typer.Argument(help="Folder of images (searched recursively).")],
    ontology: Annotated[Path, typer.Option("--ontology", "-o", help="Ontology YAML file.")],
    out: Annotated[
        Path, typer.Option("--out", help="Dataset folder to write (not IMAGES_DIR or above it).")
    ],
    detector: Annotated[
        str | None,
        typer.Option(
            help="Detector: hub id or local folder of a transformers zero-shot detector.",
            show_default=_default("detector"),
        ),
    ] = None,
    box_threshold: Annotated[
        float | None,
        typer.Option(help="Minimum detector box score.", show_default=_default("box_threshold")),
    ] = None,
    text_threshold: Annotated[
        float | None,
        typer.Option(help="Minimum class (phrase) score.", show_default=_default("text_threshold")),
    ] = None,
    max_det: Annotated[
        int | None,
        typer.Option(help="Most proposals kept per image.", show_default=_default("max_det")),
    ] = None,
    nms_iou: Annotated[
        float | None,
        typer.Option(help="IoU for class-aware NMS.", show_default=_default("nms_iou")),
    ] = None,
    verifier: Annotated[
        str | None,
        typer.Option(
            help="openai:MODEL | transformers:ID_OR_PATH | moondream | none.",
            show_default=_default("verifier"),
        ),
    ] = None,
    verifier_url: Annotated[
        str | None,
        typer.Option(
            help="Base URL of an OpenAI-compatible or moondream endpoint.",
            show_default=_default("verifier_url"),
        ),
    ] = None,
    verify_mode: Annotated[
        str | None,
        typer.Option(
            help="crop: one call per box; marks: numbered boxes, one call per image.",
            show_default=_default("verify_mode"),
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option(help="Most verifier calls in flight.", show_default=_default("concurrency")),
    ] = None,
    accept_threshold: Annotated[
        float | None,
        typer.Option(
            help="Accept at or above this P(yes).", show_default=_default("accept_threshold")
        ),
    ] = None,
    reject_threshold: Annotated[
        float | None,
        typer.Option(
            help="Reject at or below this P(yes).", show_default=_default("reject_threshold")
        ),
    ] = None,
    review_below_score: Annotated[
        float | None,
        typer.Option(
            help="Send proposals with a lower detector score to review.",
            show_default=_default("review_below_score"),
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(help="auto, cpu, cuda or cuda:N.", show_default=_default("device")),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Images per detector forward pass.", show_default=_default("batch_size")),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of images in the val split.", show_default=_default("val_fraction")
        ),
    ] = None,
    tile: Annotated[
        int | None,
        typer.Option(
            help="Small objects: also detect on overlapping TILE-px squares of each image.",
            show_default="off",
        ),
    ] = None,
    tile_overlap: Annotated[
        float, typer.Option(help="Overlap of neighbouring tiles, within [0, 0.9).")
    ] = 0.2,
    masks: Annotated[
        str | None,
        typer.Option(
            "--masks",
            help="A mask per accepted box from a promptable segmenter: transformers:ID_OR_PATH "
            "(SAM, SAM-HQ; e.g. transformers:facebook/sam-vit-base).",
            show_default="off",
        ),
    ] = None,
    student_predictions: Annotated[
        Path | None,
        typer.Option(
            help="What a deployed student predicted on these images: an outbox folder "
            "(predict --collect) or `predict --json` output. Proposals it disagrees on (it "
            "missed an accepted box, or found a rejected one) go to review.",
        ),
    ] = None,
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace folder (default: OUT/.promptlabel).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    """Label IMAGES_DIR with the classes of an ontology and write a YOLO + COCO dataset to OUT.

    Re-running the same command resumes; changing only --accept/--reject thresholds or
    --review-below-score re-routes from stored scores without running any model.
    """
    # Options not given come from the PROMPTLABEL_* variables, read now (not at import).
    settings = settings_or_exit(get_label_settings).model_copy(
        update=given(
            detector=detector,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            max_det=max_det,
            nms_iou=nms_iou,
            verifier=verifier,
            verifier_url=verifier_url,
            verify_mode=verify_mode,
            concurrency=concurrency,
            accept_threshold=accept_threshold,
            reject_threshold=reject_threshold,
            review_below_score=review_below_score,
            device=device,
            batch_size=batch_size,
            val_fraction=val_fraction,
        )
    )
    setup_logging(verbose)
    from labeler.ontology import load_ontology
    from labeler.pipeline import LabelConfig, run_label
    from labeler.propose.options import DetectorOptions
    from labeler.route import RouteThresholds
    from labeler.student import load_student_predictions

    try:
        config = LabelConfig(
            images_dir=images_dir,
            ontology=load_ontology(ontology),
            out_dir=out,
            detector=settings.detector,
            detector_options=DetectorOptions(
                box_threshold=settings.box_threshold,
                text_threshold=settings.text_threshold,
                max_det=settings.max_det,
                nms_iou=settings.nms_iou,
                device=settings.device,
                batch_size=settings.batch_size,
                tile_px=tile,
                tile_overlap=tile_overlap,
            ),
            verifier=settings.verifier,
            verifier_url=settings.verifier_url,
            verify_mode=settings.verify_mode,
            concurrency=settings.concurrency,
            request_timeout_s=settings.request_timeout_s,
            max_retries=settings.max_retries,
            thresholds=RouteThresholds(
                accept=settings.accept_threshold,
                reject=settings.reject_threshold,
                review_below_score=settings.review_below_score,
            ),
            val_fraction=settings.val_fraction,
            max_image_pixels=settings.max_image_pixels,
            workspace_dir=workspace,
            masks=masks,
            student_predictions=(
                load_student_predictions(student_predictions) if student_predictions else None
            ),
        )
        with make_progress() as progress:
            report = run_label(config, progress=RichProgressSink(progress))
    except PromptlabelError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted:[/] finished work is saved; rerun the same command to resume"
        )
        raise typer.Exit(code=130) from None
    print_report(report)


def demo(
    out: Annotated[Path, typer.Option(help="Where to write everything the demo makes.")] = Path(
        "demo-out"
    ),
    images: Annotated[
        int, typer.Option(help="Sample images to label (default: 12 for the loop, 8 alone).")
    ] = 0,
    labels_only: Annotated[
        bool, typer.Option("--labels-only", help="Only the first step: label sample images.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print every step's summary as JSON on stdout.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """The whole loop on generated images: class prompts, labels, review, a student, ONNX,
    predictions on new images, hard cases, a second labeling round, a fine-tuned student and a
    gated promotion, with a short summary after each step.

    Uses the real default models when they can be loaded; offline it says so and falls back to tiny
    random local checkpoints (a smoke run: the labels, and so the models, are meaningless).
    """
    settings_or_exit(get_label_settings)  # a bad PROMPTLABEL_* variable: one line, exit 2
    setup_logging(verbose)
    if labels_only:
        from labeler.demo.run import run_demo

        try:
            with make_progress() as progress:
                report = run_demo(
                    out,
                    n_images=images or 8,
                    progress=RichProgressSink(progress),
                    say=console.print,
                )
        except PromptlabelError as error:
            raise fail(str(error)) from None
        print_report(report)
        return
    from serve.loop import LoopSettings, run_loop_demo

    try:
        steps = run_loop_demo(out, settings=LoopSettings(images=images or 12), say=console.print)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if as_json:
        print_json(steps)
        return
    results.print(
        f"the loop ran in {steps.get('seconds', 0):.0f} s; everything it made is in {out}",
        highlight=False,
    )
