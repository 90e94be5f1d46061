"""Train an Ultralytics YOLO student on a promptlabel dataset.

``train`` checks the dataset first (``check_dataset``), then trains and leaves everything in one
run folder (by default ``DATASET_DIR/.promptlabel/runs/<timestamp>``, never ``runs/`` in the
working directory)::

    weights/best.pt  weights/last.pt     checkpoints (last.pt is written after every epoch)
    results.csv                          one row per epoch: losses, precision, recall, mAP
    results.png                          the same curves, drawn from results.csv
    promptlabel-run.json                 the run's config, final metrics, whether it was cut short

The student is Ultralytics' YOLO: ``base`` is a checkpoint (``yolo11n.pt``, pretrained; fetched
once from Ultralytics' GitHub releases into ``CACHE_DIR/weights`` when missing) or an architecture
(``yolo11n.yaml``, trained from scratch). A dataset of polygons trains the ``-seg`` variant of the
base (``yolo11n.pt`` becomes ``yolo11n-seg.pt``).

Ctrl-C (KeyboardInterrupt) during training stops it; the result then points at the last
checkpoint written (it is loaded once to prove it is usable) with ``interrupted=True``. Stopped
before the first epoch ended there is no checkpoint, and the KeyboardInterrupt goes on.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from distill.dataset import DatasetInfo, Task, check_dataset
from distill.settings import get_train_settings
from distill.ultralytics_env import (
    import_ultralytics,
    load_yolo,
    quiet_ultralytics,
    ultralytics_device,
)
from labeler.core.exceptions import InputError, ModelLoadError

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_BATCH",
    "DEFAULT_EPOCHS",
    "DEFAULT_IMGSZ",
    "DEFAULT_PATIENCE",
    "RUN_FILE",
    "ProgressCallback",
    "TrainResult",
    "new_run_dir",
    "normalize_metrics",
    "train",
]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, dict[str, float]], None]
"""Called after each finished epoch as ``progress(epoch, epochs, metrics)``; epoch counts from 1."""

RUN_FILE = "promptlabel-run.json"
# What ``train`` and ``promptlabel train`` use unless told otherwise.
DEFAULT_BASE = "yolo11n.pt"
DEFAULT_EPOCHS = 100
DEFAULT_IMGSZ = 640
DEFAULT_BATCH = 16
DEFAULT_PATIENCE = 50  # epochs without improvement before stopping
_ASSETS_URL = "https://github.com/ultralytics/assets/releases"


@dataclass(frozen=True)
class TrainResult:
    """One training run. ``best`` is the checkpoint with the best validation fitness.

    ``metrics`` uses promptlabel's names (``map50``, ``map50_95``, ``precision``, ``recall``, and
    ``mask_*`` for segmentation), measured by Ultralytics' validator on the val split: for the best
    checkpoint after a full run, for the last finished epoch after an interruption. It also holds
    ``epochs_completed`` and, after a full run, ``best_epoch``.
    """

    best: Path
    last: Path
    results_csv: Path
    results_png: Path
    metrics: dict[str, float]
    config: dict[str, Any]
    interrupted: bool
    out_dir: Path = field(default=Path())


def normalize_metrics(raw: Mapping[str, Any]) -> dict[str, float]:
    """Ultralytics' metric keys in promptlabel's spelling, values as floats.

    ``metrics/mAP50-95(B)`` becomes ``map50_95``, ``metrics/precision(M)`` ``mask_precision``,
    ``val/box_loss`` ``val_box_loss``, ``lr/pg0`` ``lr_pg0``.
    """
    out: dict[str, float] = {}
    for key, value in raw.items():
        name = str(key)
        prefix = ""
        if name.startswith("metrics/") and name.endswith(")") and "(" in name:
            name, kind = name.removeprefix("metrics/")[:-1].rsplit("(", 1)
            prefix = "mask_" if kind == "M" else ""
        name = prefix + name.lower().replace("/", "_").replace("-", "_")
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def _check_options(epochs: int, imgsz: int, batch: int, patience: int, workers: int | None) -> None:
    problems = []
    if epochs < 1:
        problems.append(f"epochs must be at least 1 (got {epochs})")
    if imgsz < 32:
        problems.append(f"imgsz must be at least 32 pixels (got {imgsz})")
    if batch < 1 and batch != -1:
        problems.append(
            f"batch must be at least 1, or -1 for Ultralytics' auto batch (got {batch})"
        )
    if patience < 0:
        problems.append(f"patience must be 0 or more (got {patience})")
    if workers is not None and workers < 0:
        problems.append(f"workers must be 0 or more (got {workers})")
    if problems:
        raise InputError("; ".join(problems))


def _variant_for_task(base: str, task: Task) -> str:
    """The base to load for ``task``: ``yolo11n.pt`` becomes ``yolo11n-seg.pt`` for segment."""
    path = Path(base)
    is_seg = path.stem.endswith("-seg")
    if task == "detect" and is_seg:
        raise InputError(
            f"base {base} is a segmentation model but the dataset's labels are boxes; pass a "
            f"detection base such as {path.stem.removesuffix('-seg')}{path.suffix}"
        )
    if task == "segment" and not is_seg:
        # A custom checkpoint or architecture file keeps its name; its task is checked on load.
        if path.suffix.lower() in {".yaml", ".yml"} and path.is_file():
            return base
        candidate = path.with_name(f"{path.stem}-seg{path.suffix}")
        if path.suffix.lower() == ".pt" and path.is_file() and not candidate.is_file():
            return base
        return str(candidate)
    return base


def _weights_dir() -> Path:
    return get_train_settings().cache_dir / "weights"


def _resolve_checkpoint(base: str) -> Path:
    """A local path for a .pt base: as given, in a weights folder, or downloaded into ours.

    Looked up in this order: the path itself, promptlabel's ``CACHE_DIR/weights``, Ultralytics'
    own weights folder. A missing checkpoint that Ultralytics publishes is downloaded once into
    ``CACHE_DIR/weights`` (``PROMPTLABEL_CACHE_DIR``).
    """
    ultralytics = import_ultralytics()
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    path = Path(base).expanduser()
    if path.is_file():
        return path
    ours = _weights_dir() / path.name
    for candidate in (ours, Path(SETTINGS["weights_dir"]) / path.name):
        if path.parent == Path() and candidate.is_file():
            return candidate
    how_to = (
        f"Download it on a machine with internet access from {_ASSETS_URL} and pass --base PATH, "
        f"or pass --base {path.stem}.yaml to train from scratch"
    )
    if path.name not in GITHUB_ASSETS_NAMES or path.parent != Path():
        raise ModelLoadError(
            f"cannot load base model {base}: no such file, and it is not a checkpoint "
            f"Ultralytics {ultralytics.__version__} publishes. {how_to}"
        )
    try:
        with quiet_ultralytics(logging.ERROR):
            attempt_download_asset(ours)
    except Exception as exc:  # requests, OSError, ConnectionError: all mean "not downloadable"
        raise ModelLoadError(
            f"cannot load base model {base}: it is not on this machine (looked in the current "
            f"folder and {ours.parent}) and downloading it from {_ASSETS_URL} failed ({exc}). "
            f"{how_to}"
        ) from exc
    if not ours.is_file():
        raise ModelLoadError(f"cannot load base model {base}: the download left no file. {how_to}")
    return ours


def _load_student(base: str | Path, info: DatasetInfo) -> tuple[Any, str]:
    """The YOLO student for ``info.task`` and the path or name it was loaded from."""
    text = str(base)
    suffix = Path(text).suffix.lower()
    if suffix not in {".pt", ".yaml", ".yml"}:
        raise InputError(
            f"base {text!r} must be a YOLO checkpoint (.pt, e.g. yolo11n.pt) or an architecture "
            "(.yaml, e.g. yolo11n.yaml)"
        )
    text = _variant_for_task(text, info.task)
    source = str(_resolve_checkpoint(text)) if suffix == ".pt" else text
    model = load_yolo(source, what="base model")
    if model.task != info.task:
        raise InputError(
            f"base {text} is a {model.task} model but the dataset {info.data_yaml} needs "
            f"{info.task}; pass e.g. --base yolo11n{'-seg' if info.task == 'segment' else ''}.pt"
        )
    return model, source


def new_run_dir(runs: Path) -> Path:
    """Create and return a fresh folder ``runs/<timestamp>`` (``-2``, ``-3``, ... when taken).

    The folder is claimed by creating it, so runs started in the same second, in this process or
    another, never share one.
    """
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        runs.mkdir(parents=True, exist_ok=True)
        for counter in itertools.count(1):
            out_dir = runs / (stamp if counter == 1 else f"{stamp}-{counter}")
            try:
                out_dir.mkdir()
            except FileExistsError:
                continue
            return out_dir
    except OSError as exc:
        raise InputError(f"cannot create a run folder in {runs}: {exc}") from None
    raise AssertionError("unreachable")


def _check_out_dir(out_dir: Path) -> None:
    for name in ("weights", "results.csv", RUN_FILE):
        if (out_dir / name).exists():
            raise InputError(
                f"{out_dir} already holds a training run ({name}); choose a new output folder"
            )


class _EpochReporter:
    """Ultralytics callbacks that report each finished epoch and remember its metrics."""

    def __init__(self, progress: ProgressCallback | None) -> None:
        self.progress = progress
        self.epochs_completed = 0
        self.last_metrics: dict[str, float] = {}
        self._loop_done = False

    def on_fit_epoch_end(self, trainer: Any) -> None:
        # Ultralytics calls this after each epoch's validation and checkpoint, and once more after
        # the loop when it re-validates best.pt; that last call is not an epoch.
        if self._loop_done:
            return
        self._loop_done = bool(trainer.stop)
        try:
            losses = trainer.label_loss_items(trainer.tloss, prefix="train")
        except (AttributeError, TypeError):  # no batch finished: nothing to report for losses
            losses = {}
        self.epochs_completed = int(trainer.epoch) + 1
        self.last_metrics = normalize_metrics({**losses, **trainer.metrics, **trainer.lr})
        if self.progress is not None:
            self.progress(self.epochs_completed, int(trainer.epochs), dict(self.last_metrics))


def _draw_results_png(results_csv: Path) -> Path:
    """Ultralytics' results plot from results.csv (matplotlib only; no font download)."""
    from ultralytics.utils.plotting import plot_results

    results_png = results_csv.with_name("results.png")
    if results_csv.is_file() and not results_png.is_file():
        with quiet_ultralytics(logging.ERROR):
            plot_results(file=results_csv)
    return results_png


def _loads(checkpoint: Path) -> bool:
    try:
        load_yolo(checkpoint, what="checkpoint")
    except ModelLoadError as exc:
        logger.warning("%s", exc)
        return False
    return True


def _close_loaders(trainer: Any) -> None:
    # Persistent dataloader workers of an interrupted run would otherwise outlive it.
    for name in ("train_loader", "test_loader"):
        loader: Any = getattr(trainer, name, None)
        if hasattr(loader, "close"):
            try:
                loader.close()
            except Exception as exc:  # best effort: the run is over either way
                logger.debug("closing %s failed: %s", name, exc)


def train(
    dataset_dir: str | Path,
    *,
    base: str | Path = DEFAULT_BASE,
    epochs: int = DEFAULT_EPOCHS,
    imgsz: int = DEFAULT_IMGSZ,
    batch: int = DEFAULT_BATCH,
    device: str = "auto",
    patience: int = DEFAULT_PATIENCE,
    seed: int = 0,
    out_dir: str | Path | None = None,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    stop_check: Callable[[], None] | None = None,
    plots: bool = True,
) -> TrainResult:
    """Train a YOLO student on ``dataset_dir`` and return where its checkpoints and curves are.

    ``device`` is ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N``. ``patience`` stops training
    after that many epochs without improvement (0: never). ``workers`` is the number of dataloader
    processes (None: Ultralytics' default, at most 8 and no more than the CPU cores). ``seed`` makes
    runs repeatable (Ultralytics' deterministic mode). ``plots=False`` skips Ultralytics' label,
    batch and PR-curve images; results.png is drawn either way. ``progress`` is called after every
    epoch (see ``ProgressCallback``); Ultralytics' own console output is silenced. ``stop_check``
    is called after every training batch: an exception it raises ends training there (dataloader
    workers closed, no result) and propagates, which stops a run within a batch, not an epoch.

    Raises InputError for a bad dataset or option, ModelLoadError when ``base`` cannot be loaded.
    """
    _check_options(epochs, imgsz, batch, patience, workers)
    info = check_dataset(dataset_dir)
    device_name = ultralytics_device(device)
    model, resolved_base = _load_student(base, info)
    if out_dir is None:
        run_dir = new_run_dir(info.data_yaml.parent / ".promptlabel" / "runs")
    else:
        run_dir = Path(out_dir).expanduser().resolve()
        _check_out_dir(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the run folder {run_dir}: {exc}") from None

    ultralytics = import_ultralytics()
    config: dict[str, Any] = {
        "dataset_dir": str(info.data_yaml.parent),
        "data_yaml": str(info.data_yaml),
        "label_hash": info.label_hash,
        "names": list(info.names),
        "task": info.task,
        "splits": dict(info.splits),
        "base": str(base),
        "resolved_base": resolved_base,
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": device_name,
        "patience": patience,
        "seed": seed,
        "workers": workers,
        "out_dir": str(run_dir),
        "ultralytics_version": ultralytics.__version__,
        "started_at": datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    arguments: dict[str, Any] = {
        "data": str(info.data_yaml),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": device_name,
        "patience": patience,  # 0 disables early stopping, in Ultralytics as here
        "seed": seed,
        "deterministic": True,
        "project": str(run_dir.parent),
        "name": run_dir.name,
        "exist_ok": True,
        "plots": plots,
        "verbose": False,
    }
    if workers is not None:
        arguments["workers"] = workers

    reporter = _EpochReporter(progress)
    model.add_callback("on_fit_epoch_end", reporter.on_fit_epoch_end)
    if stop_check is not None:
        model.add_callback("on_train_batch_end", lambda _trainer: stop_check())
    weights = run_dir / "weights"
    best, last = weights / "best.pt", weights / "last.pt"
    results_csv = run_dir / "results.csv"
    interrupted = False
    logger.info("training %s on %s into %s", resolved_base, info.data_yaml, run_dir)
    try:
        with quiet_ultralytics():
            model.train(**arguments)
    except KeyboardInterrupt:
        interrupted = True
        _close_loaders(getattr(model, "trainer", None))
        usable = [path for path in (last, best) if path.is_file() and _loads(path)]
        if not usable:
            logger.warning("training interrupted before the first epoch ended; no checkpoint")
            raise
        last = usable[0]
        best = best if best in usable else last
        logger.warning("training interrupted; the last checkpoint is %s", last)
    except BaseException:
        _close_loaders(getattr(model, "trainer", None))
        raise

    if interrupted:
        metrics = dict(reporter.last_metrics)
    else:
        trainer = model.trainer
        metrics = normalize_metrics(getattr(trainer, "metrics", None) or {})
        metrics["best_epoch"] = float(trainer.stopper.best_epoch)  # counted from 1
    metrics["epochs_completed"] = float(reporter.epochs_completed)
    metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
    results_png = _draw_results_png(results_csv)

    (run_dir / RUN_FILE).write_text(
        json.dumps({"config": config, "metrics": metrics, "interrupted": interrupted}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    return TrainResult(
        best=best,
        last=last,
        results_csv=results_csv,
        results_png=results_png,
        metrics=metrics,
        config=config,
        interrupted=interrupted,
        out_dir=run_dir,
    )
