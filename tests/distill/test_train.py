"""train(): checkpoints, curves and config in one run folder, offline, repeatable, Ctrl-C safe."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from distill.dataset import check_dataset
from distill.settings import get_train_settings
from distill.train import RUN_FILE, new_run_dir, normalize_metrics, train
from labeler.core.exceptions import InputError, ModelLoadError
from tests.distill.conftest import (
    STUDENT_EPOCHS,
    TRAIN_OPTIONS,
    NetworkLog,
    ShapesDataset,
    Student,
    make_shapes_dataset,
)


def _rows(results_csv: Path) -> list[dict[str, str]]:
    with results_csv.open(newline="") as handle:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(handle)]


def _loads_with_ultralytics(checkpoint: Path) -> Any:
    from ultralytics import YOLO

    return YOLO(str(checkpoint))


def test_a_run_leaves_checkpoints_curves_and_config(
    student: Student, shapes_dataset: ShapesDataset
) -> None:
    result = student.result
    runs = (shapes_dataset.path / ".promptlabel" / "runs").resolve()

    assert result.out_dir.parent == runs
    assert not result.interrupted
    for checkpoint in (result.best, result.last):
        assert checkpoint.parent == result.out_dir / "weights"
        model = _loads_with_ultralytics(checkpoint)
        assert model.names == dict(enumerate(check_dataset(shapes_dataset.path).names))
    rows = _rows(result.results_csv)
    assert [int(row["epoch"]) for row in rows] == list(range(1, STUDENT_EPOCHS + 1))
    assert {"train/box_loss", "metrics/mAP50(B)", "metrics/mAP50-95(B)"} <= set(rows[0])
    with Image.open(result.results_png) as png:
        assert png.format == "PNG" and png.width > 100
    assert result.results_csv.parent == result.results_png.parent == result.out_dir

    assert result.metrics["epochs_completed"] == STUDENT_EPOCHS
    assert 1 <= result.metrics["best_epoch"] <= STUDENT_EPOCHS
    assert {"map50", "map50_95", "precision", "recall"} <= set(result.metrics)
    assert result.config["label_hash"] == check_dataset(shapes_dataset.path).label_hash
    assert result.config["task"] == "detect"
    assert result.config["seed"] == 0
    recorded = json.loads((result.out_dir / RUN_FILE).read_text())
    assert recorded == {"config": result.config, "metrics": result.metrics, "interrupted": False}


def test_progress_is_reported_once_per_epoch(student: Student) -> None:
    assert [(epoch, epochs) for epoch, epochs, _ in student.progress] == [
        (epoch, STUDENT_EPOCHS) for epoch in range(1, STUDENT_EPOCHS + 1)
    ]
    rows = _rows(student.result.results_csv)
    for (_, _, metrics), row in zip(student.progress, rows, strict=True):
        assert metrics["map50"] == pytest.approx(float(row["metrics/mAP50(B)"]), abs=1e-5)
        assert metrics["train_box_loss"] == pytest.approx(float(row["train/box_loss"]), abs=1e-4)


def test_training_is_offline_and_writes_nothing_in_the_working_directory(
    student: Student,
) -> None:
    # plots=True draws with a font Ultralytics would otherwise fetch from github.com.
    assert student.network.attempts == []
    assert student.cwd_after == []


def test_ctrl_c_leaves_a_loadable_checkpoint_and_the_same_seed_repeats_the_run(
    student: Student, shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    def press_ctrl_c(epoch: int, epochs: int, metrics: dict[str, float]) -> None:
        raise KeyboardInterrupt

    result = train(
        shapes_dataset.path,
        epochs=STUDENT_EPOCHS,
        out_dir=tmp_path / "run",
        progress=press_ctrl_c,
        **TRAIN_OPTIONS,
    )

    assert result.interrupted
    assert result.last == tmp_path / "run" / "weights" / "last.pt"
    assert _loads_with_ultralytics(result.last).names[0] == "circle"
    assert result.metrics["epochs_completed"] == 1
    assert result.results_png.is_file()  # drawn from results.csv, since Ultralytics never got there
    assert json.loads((result.out_dir / RUN_FILE).read_text())["interrupted"] is True
    # Same data, seed and options as the session's student: its first epoch is repeated exactly.
    (interrupted_row,) = _rows(result.results_csv)
    first_row = _rows(student.result.results_csv)[0]
    interrupted_row.pop("time")
    first_row.pop("time")
    assert interrupted_row == first_row


class _StopNow(Exception):
    pass


def test_stop_check_ends_training_within_a_batch_and_propagates(
    shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    batches_seen: list[int] = []
    epochs_reported: list[int] = []

    def stop_at_second_batch() -> None:
        batches_seen.append(len(batches_seen) + 1)
        if len(batches_seen) == 2:
            raise _StopNow

    with pytest.raises(_StopNow):
        train(
            shapes_dataset.path,
            epochs=STUDENT_EPOCHS,
            out_dir=tmp_path / "run",
            progress=lambda epoch, epochs, metrics: epochs_reported.append(epoch),
            stop_check=stop_at_second_batch,
            **{**TRAIN_OPTIONS, "batch": 4},  # several batches per epoch
        )
    assert batches_seen == [1, 2]  # no batch ran after the one that said stop
    assert epochs_reported == []  # the first epoch never ended
    assert not (tmp_path / "run" / RUN_FILE).exists()  # no result for a run that was stopped


def test_runs_started_at_once_never_share_a_folder(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        folders = list(pool.map(lambda _: new_run_dir(tmp_path / "runs"), range(8)))
    assert len(set(folders)) == 8 and all(folder.is_dir() for folder in folders)
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="cannot create a run folder"):
        new_run_dir(tmp_path / "file" / "runs")


def test_a_segmentation_dataset_trains_the_seg_variant(tmp_path: Path) -> None:
    dataset = make_shapes_dataset(tmp_path, n=8).path
    # Every box becomes a diamond inside it: a polygon dataset.
    for label in (dataset / "labels").rglob("*.txt"):
        rows = []
        for line in label.read_text().splitlines():
            class_id, cx, cy, w, h = line.split()
            x, y, half_w, half_h = float(cx), float(cy), float(w) / 2, float(h) / 2
            points = [(x, y - half_h), (x + half_w, y), (x, y + half_h), (x - half_w, y)]
            rows.append(class_id + "".join(f" {px:.6f} {py:.6f}" for px, py in points))
        label.write_text("".join(row + "\n" for row in rows))

    result = train(dataset, epochs=1, out_dir=tmp_path / "run", plots=False, **TRAIN_OPTIONS)

    assert result.config["task"] == "segment"
    assert result.config["resolved_base"] == "yolo11n-seg.yaml"
    assert _loads_with_ultralytics(result.best).task == "segment"
    assert "mask_map50" in result.metrics
    assert result.results_png.is_file()


def test_a_segmentation_base_is_refused_for_boxes(shapes_dataset: ShapesDataset) -> None:
    with pytest.raises(InputError, match="segmentation model but the dataset's labels are boxes"):
        train(shapes_dataset.path, **{**TRAIN_OPTIONS, "base": "yolo11n-seg.yaml"})


def test_a_broken_dataset_fails_before_any_training(tmp_path: Path) -> None:
    dataset = make_shapes_dataset(tmp_path, n=4).path
    label = next((dataset / "labels" / "train").glob("*.txt"))
    label.write_text("7 0.5 0.5 0.1 0.1\n")

    with pytest.raises(InputError, match=rf"{label.name}:1: class id 7"):
        train(dataset, epochs=1, **TRAIN_OPTIONS)
    assert not (dataset / ".promptlabel" / "runs").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"imgsz": 16}, "imgsz must be at least 32"),
        ({"batch": 0}, "batch must be at least 1"),
        ({"patience": -1}, "patience must be 0 or more"),
        ({"base": "yolo11n.onnx"}, "must be a YOLO checkpoint"),
        ({"device": "gpu"}, "not a device name"),
    ],
)
def test_bad_options_are_refused(
    option: dict[str, Any], message: str, shapes_dataset: ShapesDataset
) -> None:
    with pytest.raises(InputError, match=message):
        train(shapes_dataset.path, **{**TRAIN_OPTIONS, **option})


def test_an_output_folder_holding_a_run_is_refused(
    student: Student, shapes_dataset: ShapesDataset
) -> None:
    with pytest.raises(InputError, match="already holds a training run"):
        train(shapes_dataset.path, out_dir=student.result.out_dir, **TRAIN_OPTIONS)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PROMPTLABEL_CACHE_DIR", str(tmp_path / "cache"))
    get_train_settings.cache_clear()
    yield tmp_path / "cache"
    get_train_settings.cache_clear()


def test_an_unknown_checkpoint_says_how_to_train_from_scratch(
    shapes_dataset: ShapesDataset, empty_cache: Path, no_network: NetworkLog
) -> None:
    with pytest.raises(ModelLoadError, match=r"mystery\.pt.*--base mystery\.yaml"):
        train(shapes_dataset.path, **{**TRAIN_OPTIONS, "base": "mystery.pt"})
    assert no_network.attempts == []


def test_a_published_checkpoint_that_cannot_be_downloaded_says_what_to_do(
    shapes_dataset: ShapesDataset, empty_cache: Path, no_network: NetworkLog
) -> None:
    with pytest.raises(ModelLoadError) as error:
        train(shapes_dataset.path, **{**TRAIN_OPTIONS, "base": "yolo11n.pt"})

    message = str(error.value)
    assert "yolo11n.pt" in message and "github.com/ultralytics/assets" in message
    assert "--base yolo11n.yaml to train from scratch" in message
    assert no_network.attempts  # it did try, once, and failed fast
    assert not any(empty_cache.rglob("*.pt"))


def test_ultralytics_metric_names_are_normalized() -> None:
    raw = {
        "metrics/mAP50-95(B)": 0.5,
        "metrics/precision(M)": 0.25,
        "val/box_loss": 1,
        "lr/pg0": 0.01,
        "fitness": "n/a",
    }
    assert normalize_metrics(raw) == {
        "map50_95": 0.5,
        "mask_precision": 0.25,
        "val_box_loss": 1.0,
        "lr_pg0": 0.01,
    }
