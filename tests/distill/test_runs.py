"""train_and_register: what it registers, and that a retried job registers nothing twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import distill.runs as runs_module
from distill.registry import Registry
from distill.runs import train_and_register
from tests.distill.conftest import ShapesDataset, Student


@pytest.fixture
def quick_runs(student: Student, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training returns the session's student and evaluation fixed metrics: no new training."""
    monkeypatch.setattr(runs_module, "train", lambda *args, **kwargs: student.result)
    monkeypatch.setattr(
        runs_module,
        "evaluation_metrics",
        lambda *args, **kwargs: {"map50": 0.5, "map50_95": 0.3, "label_hash": "abc"},
    )


def _run(shapes_dataset: ShapesDataset, tmp_path: Path, **options: Any) -> Any:
    return train_and_register(
        shapes_dataset.path,
        registry_dir=tmp_path / "registry",
        out_dir=tmp_path / "run",
        base="yolo11n.yaml",
        epochs=1,
        imgsz=64,
        batch=4,
        **options,
    )


@pytest.mark.usefixtures("quick_runs")
def test_a_retried_job_gets_back_its_version_with_the_missing_artifacts(
    shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    extra = tmp_path / "model.onnx"
    extra.write_bytes(b"an onnx file")

    first = _run(shapes_dataset, tmp_path, job_id="job_1")  # killed before its export was added
    again = _run(
        shapes_dataset, tmp_path, job_id="job_1", prepare_artifacts=lambda r: {"onnx": extra}
    )
    other = _run(shapes_dataset, tmp_path, job_id="job_2")

    assert first.version.version == again.version.version == "v1"
    assert other.version.version == "v2"
    assert first.version.config["job_id"] == "job_1"
    assert "onnx" not in first.version.artifacts and "onnx" in again.version.artifacts
    with Registry(tmp_path / "registry") as registry:
        assert [v.version for v in registry.list()] == ["v1", "v2"]


@pytest.mark.usefixtures("quick_runs")
def test_nothing_is_registered_when_preparing_the_artifacts_fails(
    shapes_dataset: ShapesDataset, tmp_path: Path
) -> None:
    def broken(result: Any) -> dict[str, Path]:
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError, match="export failed"):
        _run(shapes_dataset, tmp_path, prepare_artifacts=broken)

    with Registry(tmp_path / "registry") as registry:
        assert registry.list() == []
