"""train → models → promote → export → eval, through the CLI as a user runs it."""

from __future__ import annotations

import importlib.metadata
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from labeler.demo.synthetic import SHAPE_CLASSES, write_shapes_items
from labeler.export.dataset import export_dataset
from serve.cli.main import app
from tests.serve.conftest import Students

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


def run(*args: str | Path) -> Result:
    """The command's result, with stdout and stderr apart; it must succeed."""
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_train_register_promote_export_eval(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workspace = dataset / ".promptlabel"
    code, output = invoke(  # the data.yaml itself, as Ultralytics users pass it
        "train", dataset / "data.yaml", "--base", "yolo11n.yaml", "--epochs", "1", "--imgsz", "64",
        "--batch", "8", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, output
    assert "registered v1" in output

    shown = json.loads(run("models", "show", "v1", "--workspace", workspace, "--json").stdout)
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
        "--json-out", metrics_file,
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


# -- results on stdout, --json for scripts ------------------------------------------------------

INSTALLED = importlib.metadata.version("promptlabel")


@pytest.fixture
def registry_workspace(tmp_path: Path, dataset: Path) -> Path:
    """v1 (production, promoted without a comparison) and v2, registered from stand-in files."""
    from distill.registry import Registry

    workspace = tmp_path / ".promptlabel"
    data_yaml = dataset / "data.yaml"
    with Registry(workspace) as registry:
        for number, score in ((1, 0.4), (2, 0.5)):
            weights = tmp_path / f"run{number}" / "best.pt"
            weights.parent.mkdir()
            weights.write_bytes(b"weights" * number)
            registry.register(
                weights=weights,
                metrics={
                    "map50_95": score,
                    "map50": score + 0.2,
                    "per_class": {"circle": {"map50_95": score, "instances": 3}},
                    "data": str(data_yaml),
                    "split": "val",
                },
                dataset_hash=f"labels-{number}",
                config={"base": "yolo11n.yaml", "epochs": number},
                parent="v1" if number == 2 else None,
            )
        registry.promote("v1", evaluate=lambda *_: {"map50_95": 0.0})
    return workspace


def _table_rows(text: str) -> list[list[str]]:
    """The cells of each body row of a rich table."""
    return [
        [cell.strip() for cell in line.split("│")[1:-1]]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def test_models_list_prints_a_table_on_stdout_or_json(registry_workspace: Path) -> None:
    listed = run("models", "list", "--workspace", registry_workspace)
    rows = {cells[0]: cells for cells in _table_rows(listed.stdout)}
    assert rows["v1"][1:4] == ["production", "trained", "0.4000"], listed.stdout
    assert rows["v2"][1:6] == ["none", "trained", "0.5000", "0.7000", "v1"], listed.stdout
    assert listed.stderr == ""
    # Into a pipe with no COLUMNS (a script, CI), no column is squeezed out of the rows.
    piped = runner.invoke(
        app, ["models", "list", "--workspace", str(registry_workspace)], env={"COLUMNS": None}
    )
    [v2] = [cells for cells in _table_rows(piped.stdout) if cells[0] == "v2"]
    assert v2[-2] == "pt" and re.fullmatch(r"\d{4}-\d\d-\d\d", v2[-1]), piped.stdout

    records = json.loads(run("models", "list", "--workspace", registry_workspace, "--json").stdout)
    assert [r["version"] for r in records] == ["v1", "v2"]
    first, second = records
    assert (first["stage"], second["stage"], second["parent"]) == ("production", "none", "v1")
    assert second["dataset_hash"] == "labels-2" and second["metrics"]["map50_95"] == 0.5
    assert second["promptlabel_version"] == INSTALLED
    assert second["artifacts"]["pt"]["path"].endswith("model.pt")


def test_models_show_is_readable_by_default_and_json_on_request(registry_workspace: Path) -> None:
    shown = run("models", "show", "v1", "--workspace", registry_workspace)
    text = shown.stdout
    assert text.startswith("v1 (production), trained"), text
    assert f"promptlabel:  {INSTALLED}" in text and "labels-1" in text
    assert "epochs:" in text and "mAP50-95" in text and "0.4000" in text
    assert "promoted" in text and "no production version yet" in text
    assert shown.stderr == ""

    record = json.loads(
        run("models", "show", "v1", "--workspace", registry_workspace, "--json").stdout
    )
    assert (record["version"], record["stage"], record["dataset_hash"]) == (
        "v1",
        "production",
        "labels-1",
    )
    assert record["promptlabel_version"] == INSTALLED
    [decision] = record["promotions"]
    assert decision["promoted"] is True and decision["promptlabel_version"] == INSTALLED


def test_eval_prints_metrics_on_stdout_or_json(
    students: Students, dataset: Path, tmp_path: Path
) -> None:
    model = students.static
    table = run("eval", model, dataset, "--device", "cpu")
    assert "mAP50-95" in table.stdout and "speed:" in table.stdout
    assert all(name in table.stdout for name in ("circle", "square", "triangle"))
    assert "mAP50-95" not in table.stderr and "speed:" not in table.stderr

    saved = tmp_path / "metrics.json"
    as_json = run("eval", model, dataset, "--device", "cpu", "--json", "--json-out", saved)
    metrics = json.loads(as_json.stdout)
    assert metrics == json.loads(saved.read_text())
    assert 0 <= metrics["map50_95"] <= metrics["map50"] <= 1
    assert metrics["n_images"] > 0 and metrics["split"] == "val"
    assert set(metrics["per_class"]) <= {"circle", "square", "triangle"}
    assert metrics["promptlabel_version"] == INSTALLED
    assert "mAP50-95" not in as_json.stderr
