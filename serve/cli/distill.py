"""CLI commands over distill: train, eval, the model registry and export."""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from distill.settings import TrainSettings, get_train_settings
from distill.train import (
    DEFAULT_BASE,
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    DEFAULT_IMGSZ,
    DEFAULT_PATIENCE,
)
from labeler.core.exceptions import InputError, PromptlabelError
from serve.cli.common import (
    JsonOption,
    console,
    env_default,
    fail,
    make_progress,
    print_json,
    results,
    settings_or_exit,
    setup_logging,
)

if TYPE_CHECKING:
    from distill.registry import ModelVersion, PromotionDecision, Registry

__all__ = [
    "WorkspaceOption",
    "default_workspace",
    "eval_command",
    "export_command",
    "models_app",
    "train_command",
]

models_app = typer.Typer(
    help="The model registry: list, show, promote, import.", no_args_is_help=True
)

WorkspaceOption = Annotated[
    Path | None,
    typer.Option(
        "--workspace",
        help="Workspace holding the registry and datasets/ (default: $PROMPTLABEL_WORKSPACE or "
        "./.promptlabel).",
    ),
]


def default_workspace(option: Path | None) -> Path:
    """``--workspace``, else ``$PROMPTLABEL_WORKSPACE``, else ``./.promptlabel``."""
    return option or settings_or_exit(get_train_settings).workspace or Path(".promptlabel")


def _workspace(option: Path | None, *, must_exist: bool = True) -> Path:
    workspace = default_workspace(option)
    if must_exist and not (workspace / "registry.db").exists():
        raise InputError(
            f"no model registry in {workspace}: pass --workspace DATASET_DIR/.promptlabel "
            "(where `promptlabel train DATASET_DIR` registered its models) "
            "or set PROMPTLABEL_WORKSPACE"
        )
    return workspace


def _open_registry(option: Path | None, *, must_exist: bool = True) -> Registry:
    from distill.registry import Registry

    return Registry(_workspace(option, must_exist=must_exist))


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = Table(title=title, header_style="bold")
    # Segmentation students scored on polygon labels also have mask mAP (COCO "segm").
    mask_per_class = metrics.get("mask_per_class")
    mask_keys = ("map50", "map50_95") if mask_per_class is not None else ()
    mask_columns = ("mask mAP50", "mask mAP50-95") if mask_keys else ()
    for column in ("class", "instances", "precision", "recall", "mAP50", "mAP50-95", *mask_columns):
        table.add_column(column, justify="left" if column == "class" else "right")
    for name, row in metrics.get("per_class", {}).items():
        mask_row = (mask_per_class or {}).get(name, {})
        table.add_row(
            name,
            _fmt(int(row["instances"]) if "instances" in row else None),
            *(_fmt(row.get(k)) for k in ("precision", "recall", "map50", "map50_95")),
            *(_fmt(mask_row.get(k)) for k in mask_keys),
        )
    table.add_row(
        "[bold]all[/]",
        "",
        *(_fmt(metrics.get(k)) for k in ("precision", "recall", "map50", "map50_95")),
        *(_fmt(metrics.get(f"mask_{k}")) for k in mask_keys),
    )
    return table


class _EpochBar:
    def __init__(self, progress: Progress, epochs: int) -> None:
        self._progress = progress
        self._task: TaskID = progress.add_task("Training", total=epochs)

    def __call__(self, epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        summary = f"Training (mAP50-95 {metrics.get('map50_95', 0.0):.3f})"
        self._progress.update(self._task, completed=epoch, total=epochs, description=summary)


def train_command(
    dataset_dir: Annotated[Path, typer.Argument(help="A dataset written by `promptlabel label`.")],
    base: Annotated[
        str,
        typer.Option(
            help="Starting weights (.pt), an architecture (.yaml, from scratch), or production: "
            "fine-tune the registry's production model (the next round of the loop)."
        ),
    ] = DEFAULT_BASE,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = DEFAULT_EPOCHS,
    imgsz: Annotated[int, typer.Option(help="Training image size.")] = DEFAULT_IMGSZ,
    batch: Annotated[int, typer.Option(help="Batch size.")] = DEFAULT_BATCH,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    patience: Annotated[
        int, typer.Option(help="Epochs without improvement before stopping.")
    ] = DEFAULT_PATIENCE,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    workspace: Annotated[
        Path | None,
        typer.Option(
            "--workspace",
            help="Workspace for the registry and the runs (default: DATASET_DIR/.promptlabel; "
            "for a dataset version, the workspace holding it).",
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Train a YOLO student on DATASET_DIR, evaluate it on the val split and register it."""
    setup_logging(verbose)
    from distill.dataset import resolve_data_yaml
    from distill.dataset_versions import version_workspace
    from distill.runs import train_and_register
    from distill.train import new_run_dir

    try:
        # DATASET_DIR may also name the data.yaml itself, as Ultralytics users are used to.
        folder = resolve_data_yaml(dataset_dir).parent
        registry_dir = workspace or version_workspace(folder) or folder / ".promptlabel"
        with make_progress() as progress:
            run = train_and_register(
                dataset_dir,
                registry_dir=registry_dir,
                out_dir=new_run_dir(registry_dir / "runs"),
                base=base,
                epochs=epochs,
                imgsz=imgsz,
                batch=batch,
                device=device,
                patience=patience,
                seed=seed,
                progress=_EpochBar(progress, epochs),
            )
        result, version, metrics = run.train, run.version, run.metrics
        if version is None:
            console.print(
                f"[yellow]interrupted:[/] the last finished epoch is saved at {result.last}; "
                "it was not registered"
            )
            raise typer.Exit(code=130)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    console.print(_metrics_table(f"{version.version} on {dataset_dir} (val)", metrics))
    console.print(
        f"registered [bold]{version.version}[/] in {registry_dir}: {version.weights}\n"
        f"curves: {result.results_png} and {result.results_csv}\n"
        f"next: promptlabel models promote {version.version} --workspace {registry_dir}",
        highlight=False,
    )


def _resolve_model(model: str, workspace: Path | None) -> Path:
    """A model file path, or a registry version (v3) resolved to its weights."""
    path = Path(model)
    if path.exists():
        return path
    if model.lower().lstrip("v").isdigit():
        with _open_registry(workspace) as registry:
            return registry.get(model).weights
    raise InputError(f"{model}: no such model file (nor a registry version like v3)")


def eval_command(
    model: Annotated[str, typer.Argument(help="A .pt or .onnx file, or a registry version (v3).")],
    dataset_dir: Annotated[Path, typer.Argument(help="Dataset with the same classes.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "val",
    imgsz: Annotated[
        int | None, typer.Option(help="Inference size (default: the model's).")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    as_json: JsonOption = False,
    json_out: Annotated[
        Path | None, typer.Option("--json-out", help="Also write the metrics as JSON here.")
    ] = None,
    workspace: WorkspaceOption = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Evaluate any model on DATASET_DIR: mAP50, mAP50-95, per-class precision/recall, speed.

    The table (or with --json, the metrics as JSON) goes to stdout.
    """
    setup_logging(verbose)
    from dataclasses import asdict

    from distill.evaluate import evaluate
    from labeler.core.version import __version__

    try:
        weights = _resolve_model(model, workspace)
        with console.status(f"Evaluating {weights.name} on {dataset_dir} ({split})"):
            result = evaluate(weights, dataset_dir, split=split, imgsz=imgsz, device=device)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    metrics = asdict(result) | {"promptlabel_version": __version__}
    if json_out is not None:
        json_out.write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    if as_json:
        print_json(metrics)
        return
    results.print(_metrics_table(f"{weights} on {dataset_dir} ({split})", metrics))
    results.print(
        f"speed: {result.ms_per_image:.1f} ms per image end to end, {result.n_images} images",
        highlight=False,
    )


def _version_row(version: ModelVersion) -> list[str]:
    return [
        version.version,
        version.stage,
        version.source,
        _fmt(version.map50_95),
        _fmt(version.metrics.get("map50")),
        version.parent or "-",
        (version.dataset_hash or "-")[:8],
        ", ".join(sorted(version.artifacts)),
        version.created_at[:10],
    ]


def _version_record(version: ModelVersion) -> dict[str, Any]:
    """Everything recorded about a version, as plain JSON values (paths as strings)."""
    from dataclasses import asdict

    record: dict[str, Any] = json.loads(json.dumps(asdict(version), default=str))
    return record


@models_app.command("list")
def models_list(workspace: WorkspaceOption = None, as_json: JsonOption = False) -> None:
    """List registered versions with their metrics and stage (--json: every recorded field)."""
    try:
        with _open_registry(workspace) as registry:
            versions = registry.list()
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if as_json:
        print_json([_version_record(version) for version in versions])
        return
    table = Table(header_style="bold")
    for column in ("version", "stage", "source", "mAP50-95", "mAP50", "parent", "dataset"):
        table.add_column(column, no_wrap=True)
    table.add_column("artifacts")
    table.add_column("created")
    for version in versions:
        table.add_row(*_version_row(version))
    results.print(table)


@models_app.command("show")
def models_show(
    version: Annotated[str, typer.Argument(help="Version, e.g. v2.")],
    workspace: WorkspaceOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything recorded about one version: provenance, metrics, files, promotion decisions
    (--json: every field, the decisions under "promotions")."""
    from dataclasses import asdict

    try:
        with _open_registry(workspace) as registry:
            found = registry.get(version)
            decisions = registry.promotions(found.version)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    if as_json:
        print_json(_version_record(found) | {"promotions": [asdict(d) for d in decisions]})
        return
    _print_version(found, decisions)


def _print_version(version: ModelVersion, decisions: list[PromotionDecision]) -> None:
    results.print(
        f"[bold]{version.version}[/] ({version.stage}), {version.source} {version.created_at}",
        highlight=False,
    )
    provenance = {
        "parent": version.parent,
        "dataset hash": version.dataset_hash,
        "promptlabel": version.promptlabel_version,
        "folder": version.directory,
    }
    for name, value in provenance.items():
        results.print(f"  {name + ':':<14}{_fmt(value)}", highlight=False, soft_wrap=True)
    if version.config:
        results.print("config:", highlight=False)
        for name, value in version.config.items():
            shown = value if isinstance(value, str) else json.dumps(value, default=str)
            results.print(f"  {name + ':':<14}{shown}", highlight=False, soft_wrap=True)
    if version.metrics:
        eval_set = version.eval_set
        where = f" on {eval_set.data} ({eval_set.split})" if eval_set else ""
        results.print(f"metrics{where}:", highlight=False, soft_wrap=True)
        results.print(_metrics_table("", version.metrics))
    results.print("artifacts:")
    files = Table("kind", "file", "sha256", header_style="bold")
    files.add_column("bytes", justify="right")
    for artifact in version.artifacts.values():
        kind = f"{artifact.kind} (weights)" if artifact.is_weights else artifact.kind
        files.add_row(kind, artifact.path.name, artifact.sha256[:12], str(artifact.size_bytes))
    results.print(files)
    if decisions:
        results.print("promotion decisions:")
        table = Table(header_style="bold")
        for column in ("when", "decision", "candidate", "production", "reason"):
            table.add_column(column, no_wrap=column != "reason")
        for decision in decisions:
            verdict = "promoted" if decision.promoted else "refused"
            table.add_row(
                decision.created_at,
                f"{verdict} (forced)" if decision.forced else verdict,
                _fmt(decision.candidate_map50_95),
                _fmt(decision.production_map50_95),
                decision.reason,
            )
        results.print(table)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="Version to make production.")],
    tolerance: Annotated[
        float | None,
        typer.Option(
            help="How much lower mAP50-95 than production may be.",
            show_default=env_default(TrainSettings, "promote_tolerance"),
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Promote even if the gate fails.")] = False,
    device: Annotated[str, typer.Option(help="Device for the evaluation.")] = "auto",
    workspace: WorkspaceOption = None,
) -> None:
    """Promote a version if it is not worse than production on production's evaluation set."""
    from distill.registry import evaluation_metrics, hard_case_eval_set

    if tolerance is None:
        tolerance = settings_or_exit(get_train_settings).promote_tolerance
    try:
        with _open_registry(workspace) as registry, console.status("Evaluating against production"):
            hard_cases = hard_case_eval_set(registry.get(version))
            decision = registry.promote(
                version,
                evaluate=partial(evaluation_metrics, device=device),
                tolerance=tolerance,
                force=force,
                # A dataset version's held-out hard cases: did the candidate learn them?
                extra_eval_sets=[hard_cases] if hard_cases is not None else [],
            )
    except PromptlabelError as error:
        raise fail(str(error)) from None
    numbers = (
        f"candidate mAP50-95 {_fmt(decision.candidate_map50_95)}, "
        f"production {_fmt(decision.production_map50_95)}, tolerance {decision.tolerance}"
    )
    if decision.checks:
        # The gate's comparisons, overall and per class on each set: the result, on stdout.
        checks = Table(header_style="bold")
        for column in ("split", "class", "candidate", "production", "change", "boxes", "gate"):
            checks.add_column(column, justify="left" if column in {"split", "class"} else "right")
        for check in decision.checks:
            checks.add_row(
                check.eval_set.split,
                "(overall)" if check.class_name is None else check.class_name,
                _fmt(check.candidate_map50_95),
                _fmt(check.production_map50_95),
                f"{-check.drop:+.4f}",
                "-" if check.instances is None else f"{check.instances:g}",
                check.outcome,
            )
        results.print(checks)
    if not decision.promoted:
        console.print(f"[bold red]refused:[/] {decision.reason} ({numbers})", highlight=False)
        raise typer.Exit(code=1)
    console.print(f"[bold green]promoted {decision.version}:[/] {decision.reason} ({numbers})")


@models_app.command("import")
def models_import(
    file: Annotated[Path, typer.Argument(help="A YOLO .pt or an Ultralytics-exported .onnx file.")],
    workspace: WorkspaceOption = None,
) -> None:
    """Register a model trained elsewhere (evaluate it with `promptlabel eval`)."""
    try:
        with _open_registry(workspace, must_exist=False) as registry:
            version = registry.import_model(file)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    console.print(f"imported {file} as [bold]{version.version}[/] ({version.weights})")


def export_command(
    version: Annotated[str, typer.Argument(help="Registry version to export, e.g. v2.")],
    format: Annotated[str, typer.Option("--format", help="onnx or engine (TensorRT).")] = "onnx",
    half: Annotated[bool, typer.Option("--half", help="fp16 weights.")] = False,
    dynamic: Annotated[
        bool, typer.Option("--dynamic", help="Dynamic batch and image size.")
    ] = False,
    imgsz: Annotated[int, typer.Option(help="Export image size.")] = 640,
    batch: Annotated[int, typer.Option(help="Static batch size (ignored with --dynamic).")] = 1,
    device: Annotated[str, typer.Option(help="Device for engine export.")] = "auto",
    replace: Annotated[
        bool, typer.Option("--replace", help="Overwrite the version's file of the same variant.")
    ] = False,
    workspace: WorkspaceOption = None,
) -> None:
    """Export a registered version to ONNX or a TensorRT engine, check it, and record it.

    Each variant is its own artifact (onnx, onnx-fp16, onnx-dynamic, engine-fp16-b8, ...),
    so exporting one never replaces another; exporting a variant the version already has needs
    --replace (the service predicts with the production version's plain onnx file).
    """
    from distill.export import export_model, variant_tag

    if format not in {"onnx", "engine"}:
        raise fail(f"--format must be onnx or engine, got {format!r}")
    kind = format + variant_tag(half=half, dynamic=dynamic, batch=batch)
    try:
        with _open_registry(workspace) as registry:
            found = registry.get(version)
            existing = found.artifacts.get(kind)
            if existing is not None and not replace:
                raise InputError(
                    f"{found.version} already has its {kind} export ({existing.path.name}); pass "
                    "--replace to export it again"
                )
            # In the workspace, and kept when the check fails: the error names the file, left
            # there for inspection.
            scratch = Path(tempfile.mkdtemp(prefix=".export-", dir=registry.workspace))
            with console.status(f"Exporting {kind}"):
                result = export_model(
                    found.weights,
                    format=format,  # type: ignore[arg-type]
                    imgsz=imgsz,
                    half=half,
                    dynamic=dynamic,
                    batch=batch,
                    device=device,
                    output=scratch / f"model.{'onnx' if format == 'onnx' else 'engine'}",
                )
                stored = registry.add_artifact(found.version, result.path, kind=kind)
            shutil.rmtree(scratch, ignore_errors=True)
    except PromptlabelError as error:
        raise fail(str(error)) from None
    check = (
        f"checked against PyTorch (max abs diff {result.max_abs_diff:.2e})"
        if result.verified and result.max_abs_diff is not None
        else "not checked"
    )
    console.print(f"exported {found.version} to {stored}: {check}", highlight=False)
