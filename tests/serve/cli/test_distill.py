"""train → models → promote → export → eval, through the CLI as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from labeler.demo.synthetic import SHAPE_CLASSES, write_shapes_items
from labeler.export.dataset import export_dataset
from serve.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-distill")
    items = write_shapes_items(root / "src", n=20, seed=0)
    export_dataset(items, list(SHAPE_CLASSES), root / "ds", val_fraction=0.25)
    return root / "ds"


def invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.mark.slow
def test_train_register_promote_export_eval(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = dataset / ".promptlabel"
    code, output = invoke(  # the data.yaml itself, as Ultralytics users pass it
        "train", dataset / "data.yaml", "--base", "yolo11n.yaml", "--epochs", "1", "--imgsz", "64",
        "--batch", "8", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, output
    assert "registered v1" in output

    code, output = invoke("models", "show", "v1", "--workspace", workspace)
    assert code == 0, output
    shown = json.loads(output[output.index("{") :])
    assert shown["version"] == "v1" and shown["stage"] == "none"
    assert {"pt", "results_csv", "results_png"} <= set(shown["artifacts"])
    assert shown["metrics"]["split"] == "val" and "map50_95" in shown["metrics"]
    assert shown["dataset_hash"]

    code, output = invoke("models", "promote", "v1", "--workspace", workspace, "--device", "cpu")
    assert code == 0, output
    assert "promoted v1" in output

    code, output = invoke("export", "v1", "--imgsz", "64", "--workspace", workspace)
    assert code == 0, output
    assert "checked against PyTorch" in output
    plain = workspace / "models" / "v1" / "model.onnx"
    served = plain.read_bytes()
    # Another variant is another file; the same variant again needs --replace.
    code, output = invoke("export", "v1", "--imgsz", "64", "--dynamic", "--workspace", workspace)
    assert code == 0, output
    assert (workspace / "models" / "v1" / "model-onnx-dynamic.onnx").exists()
    code, output = invoke("export", "v1", "--imgsz", "96", "--workspace", workspace)
    assert code == 2 and "already has its onnx export" in output and "--replace" in output
    assert plain.read_bytes() == served
    code, output = invoke("export", "v1", "--imgsz", "64", "--replace", "--workspace", workspace)
    assert code == 0, output
    assert not list(workspace.glob(".export-*"))  # the scratch folder went with the success

    import distill.export
    from labeler.core.exceptions import ModelLoadError

    def broken_check(path: Path, *args: object, **kwargs: object) -> None:
        raise ModelLoadError(f"{path}: exported model does not reproduce the PyTorch model")

    monkeypatch.setattr(distill.export, "verify_onnx", broken_check)
    code, output = invoke("export", "v1", "--imgsz", "64", "--half", "--workspace", workspace)
    assert code == 2 and "does not reproduce" in output
    (left,) = workspace.glob(".export-*/model.onnx")  # kept for inspection, as the error says
    assert str(left) in output.replace("\n", "")
    monkeypatch.undo()

    code, output = invoke("models", "list", "--workspace", workspace)
    assert code == 0 and "production" in output

    metrics_file = dataset.parent / "eval.json"
    code, output = invoke(
        "eval", workspace / "models" / "v1" / "model.onnx", dataset, "--device", "cpu",
        "--json", metrics_file,
    )  # fmt: skip
    assert code == 0, output
    metrics = json.loads(metrics_file.read_text())
    assert metrics["n_images"] > 0 and metrics["split"] == "val"
    assert metrics["ms_per_image"] > 0

    code, output = invoke("export", "v1", "--format", "engine", "--workspace", workspace)
    assert code == 2
    assert "TensorRT" in output


def test_models_without_registry_says_where_to_look(tmp_path: Path) -> None:
    code, output = invoke("models", "list", "--workspace", tmp_path)
    assert code == 2
    assert "no model registry" in output and "--workspace" in output


def test_unknown_version_lists_existing(dataset: Path, tmp_path: Path) -> None:
    code, output = invoke("models", "import", dataset / "missing.pt", "--workspace", tmp_path)
    assert code == 2
    assert "missing.pt" in output
