"""``promptlabel label-studio export`` and ``import``: review a labeled dataset in Label Studio and
bring the annotations back as reviewers' decisions (``labeler.export.label_studio``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from labeler.core.exceptions import PromptlabelError
from serve.cli.common import console, fail, print_json, results

__all__ = ["label_studio_app"]

label_studio_app = typer.Typer(
    help="Review a labeled dataset in Label Studio: export tasks, import its JSON export back.",
    no_args_is_help=True,
)

DatasetArgument = Annotated[
    Path, typer.Argument(help="The dataset folder `promptlabel label --out` wrote.")
]


def _model_version(dataset_dir: Path) -> str:
    try:
        provenance = json.loads((dataset_dir / "report.json").read_text())["provenance"]
        return f"{provenance['detector']}+{provenance['verifier']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "promptlabel"


@label_studio_app.command("export")
def export_command(
    dataset_dir: DatasetArgument,
    out: Annotated[
        Path, typer.Option(help="Tasks JSON file to write (import it in Label Studio).")
    ],
    config_out: Annotated[
        Path | None, typer.Option(help="Also write the labeling config XML here.")
    ] = None,
    document_root: Annotated[
        Path,
        typer.Option(
            help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: images are linked as "
            "/data/local-files/?d=PATH relative to it (enable LABEL_STUDIO_LOCAL_FILES_SERVING_"
            "ENABLED and add a Local Files storage holding DATASET_DIR/images to the project)."
        ),
    ] = Path("/"),
    url_prefix: Annotated[
        str | None,
        typer.Option(
            help="Link images as URL_PREFIX + their path in the dataset instead (a web server "
            "serving DATASET_DIR)."
        ),
    ] = None,
    include_rejected: Annotated[
        bool, typer.Option(help="Show rejected boxes too (default: accepted and needs_review).")
    ] = False,
    model_version: Annotated[
        str | None, typer.Option(help="The predictions' model_version (default: from report.json).")
    ] = None,
) -> None:
    """Write one Label Studio task per image, its boxes as a prediction."""
    from labeler.export.label_studio import (
        DEFAULT_STATUSES,
        dataset_class_names,
        label_studio_config,
        label_studio_tasks,
        local_files_url_for,
    )

    def by_prefix(record: Any) -> str:
        return f"{url_prefix}{record.get('dataset_image') or record['path']}"

    try:
        tasks = label_studio_tasks(
            dataset_dir,
            image_url_for=by_prefix
            if url_prefix is not None
            else local_files_url_for(document_root, dataset_dir),
            model_version=model_version or _model_version(dataset_dir),
            statuses=(*DEFAULT_STATUSES, "rejected") if include_rejected else DEFAULT_STATUSES,
        )
        out.write_text(json.dumps(tasks, indent=1) + "\n")
        if config_out is not None:
            with_masks = any(
                r["type"] == "polygonlabels"
                for t in tasks
                for p in t["predictions"]
                for r in p["result"]
            )
            config = label_studio_config(dataset_class_names(dataset_dir), masks=with_masks)
            config_out.write_text(config + "\n")
    except PromptlabelError as error:
        raise fail(str(error)) from None
    except OSError as error:
        raise fail(f"{error.filename}: cannot write ({error.strerror})") from None
    boxes = sum(
        r["type"] == "rectanglelabels" for t in tasks for p in t["predictions"] for r in p["result"]
    )
    console.print(f"{len(tasks)} tasks, {boxes} boxes -> {out}", highlight=False)


@label_studio_app.command("import")
def import_command(
    dataset_dir: DatasetArgument,
    export_json: Annotated[
        Path, typer.Argument(help="Label Studio's export of the project, format JSON.")
    ],
    reviewer: Annotated[
        str, typer.Option(help="Whose decisions these are (default: label-studio).")
    ] = "label-studio",
    workspace: Annotated[
        Path | None, typer.Option(help="Workspace folder (default: DATASET_DIR/.promptlabel).")
    ] = None,
    iou_threshold: Annotated[
        float, typer.Option(help="IoU at which a box whose id changed still matches ours.")
    ] = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Turn the annotations into decisions; rerun `promptlabel label` to re-export the dataset."""
    from labeler.export.label_studio import dataset_class_names, import_label_studio
    from labeler.pipeline import WORKSPACE_DIRNAME
    from labeler.store.workspace import DB_NAME, Workspace

    folder = workspace or dataset_dir / WORKSPACE_DIRNAME
    try:
        names = dataset_class_names(dataset_dir)
        if not (folder / DB_NAME).is_file():
            raise fail(f"{folder}: no workspace here; pass --workspace")
        with Workspace(folder) as opened:
            summary = import_label_studio(
                opened,
                export_json,
                reviewer=reviewer,
                class_names=names,
                iou_threshold=iou_threshold,
            )
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if as_json:
        print_json(summary.as_dict())
        return
    table = Table("decision", "boxes")
    for name, value in summary.as_dict().items():
        table.add_row(name, str(len(value) if isinstance(value, list) else value))
    results.print(table)
    if summary.stale:
        console.print(
            f"[yellow]{len(summary.stale)} boxes were decided in promptlabel after the export "
            "and were left as they are[/]",
            highlight=False,
        )
