"""Train, evaluate, register: the one sequence the CLI's ``train`` and the service's training
jobs both run, so a model registered either way carries the same evidence."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.registry import EvalSet, ModelVersion, Registry, evaluation_metrics
from distill.train import DEFAULT_PATIENCE, ProgressCallback, TrainResult, train
from labeler.core.exceptions import InputError

__all__ = [
    "PRODUCTION_BASE",
    "RegisteredRun",
    "production_checkpoint",
    "resolve_base",
    "train_and_register",
]

# ``base="production"``: fine-tune from the registry's production model (the closed loop's next
# round), rather than start over from a generic base.
PRODUCTION_BASE = "production"


def production_checkpoint(registry_dir: Path) -> Path:
    """The production model's checkpoint in the registry at ``registry_dir``; InputError saying
    why there is none to fine-tune from (its message names no folder: callers add where)."""
    with Registry(registry_dir) as registry:
        production = registry.production()
    if production is None:
        raise InputError("no production model yet: promote one first, or choose another base")
    if production.weights.suffix != ".pt":
        raise InputError(
            f"production model {production.version} is {production.weights.name}, not a "
            "PyTorch checkpoint to fine-tune (an imported export); choose another base"
        )
    return production.weights


def resolve_base(base: str | Path, registry_dir: Path) -> str | Path:
    """``base`` itself, or for ``"production"`` the production model's checkpoint in the registry
    at ``registry_dir``; InputError when there is none to fine-tune from."""
    if str(base) != PRODUCTION_BASE:
        return base
    try:
        return production_checkpoint(registry_dir)
    except InputError as error:
        raise InputError(f"base production (registry {registry_dir}): {error}") from None


@dataclass(frozen=True)
class RegisteredRun:
    """A finished training run; ``version`` is None when it was interrupted (not registered)."""

    train: TrainResult
    version: ModelVersion | None
    metrics: dict[str, Any]


def train_and_register(
    dataset_dir: Path,
    *,
    registry_dir: Path,
    out_dir: Path,
    base: str | Path,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str = "auto",
    patience: int = DEFAULT_PATIENCE,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    stop_check: Callable[[], None] | None = None,
    plots: bool = True,
    prepare_artifacts: Callable[[TrainResult], Mapping[str, Path]] | None = None,
    job_id: str | None = None,
) -> RegisteredRun:
    """Train on ``dataset_dir``, score the best checkpoint on its val split, and register it.

    The new version records the production version (if any) as its parent, the training curves
    as artifacts, and the val metrics that a later ``promote`` compares against. An interrupted
    run is not registered. ``prepare_artifacts`` makes further artifacts (kind -> file, e.g. an
    ONNX export) before anything is registered, so a run that fails or is cancelled there leaves
    no version behind. With ``job_id`` (recorded in the config) a second call for the same job
    (a retry after the registration) returns the version the first one registered instead of
    adding another. Errors are those of ``train``, ``evaluation_metrics``, ``prepare_artifacts``
    and ``Registry``.
    """
    base = resolve_base(base, registry_dir)
    result = train(
        dataset_dir,
        base=base,
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        patience=patience,
        seed=seed,
        out_dir=out_dir,
        progress=progress,
        stop_check=stop_check,
        plots=plots,
    )
    if result.interrupted:
        return RegisteredRun(train=result, version=None, metrics={})
    metrics = evaluation_metrics(
        result.best, EvalSet(data=dataset_dir, split="val"), imgsz=imgsz, device=device
    )
    artifacts = {"results_csv": result.results_csv, "results_png": result.results_png}
    artifacts |= dict(prepare_artifacts(result)) if prepare_artifacts else {}
    with Registry(registry_dir) as registry:
        earlier = None
        if job_id is not None:
            earlier = next((v for v in registry.list() if v.config.get("job_id") == job_id), None)
        if earlier is None:
            production = registry.production()
            version = registry.register(
                weights=result.best,
                metrics=metrics,
                dataset_hash=metrics.get("label_hash"),
                config={**result.config, **({"job_id": job_id} if job_id else {})},
                parent=production.version if production else None,
            )
        else:
            version, metrics = earlier, earlier.metrics
        for kind, path in artifacts.items():
            if kind not in version.artifacts and path.exists():
                registry.add_artifact(version.version, path, kind=kind)
        version = registry.get(version.version)
    return RegisteredRun(train=result, version=version, metrics=metrics)
