"""``base="production"``: the next round fine-tunes from the registry's production checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from distill.registry import Registry
from distill.runs import resolve_base
from labeler.core.exceptions import InputError
from tests.fakes.students import build_student, export_onnx


def _promote(registry_dir: Path, file: Path) -> str:
    with Registry(registry_dir) as registry:
        version = registry.import_model(file).version
        decision = registry.promote(version, evaluate=_unused, force=True)
    assert decision.promoted
    return version


def _unused(*_: object, **__: object) -> dict[str, float]:
    raise AssertionError("no comparison: forced")


def test_production_resolves_to_its_checkpoint_and_says_when_it_cannot(tmp_path: Path) -> None:
    registry_dir = tmp_path / "registry"
    assert resolve_base("yolo11n.yaml", registry_dir) == "yolo11n.yaml"
    with pytest.raises(InputError, match="no production model yet"):
        resolve_base("production", registry_dir)

    weights = build_student(tmp_path / "student")
    onnx = export_onnx(weights, tmp_path / "student.onnx", imgsz=64)
    _promote(registry_dir, onnx)
    with pytest.raises(InputError, match="not a PyTorch checkpoint"):
        resolve_base("production", registry_dir)

    version = _promote(registry_dir, weights)
    with Registry(registry_dir) as registry:
        expected = registry.get(version).weights
    resolved = resolve_base("production", registry_dir)
    assert resolved == expected and Path(resolved).read_bytes() == weights.read_bytes()
