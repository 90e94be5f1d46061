"""Export: ONNX files that match the PyTorch model, and an engine export that fails cleanly."""

from __future__ import annotations

import importlib.util
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from distill import export as export_module
from distill.export import (
    DEFAULT_ATOL,
    ExportResult,
    export_model,
    sample_batch,
    verify_onnx,
)
from distill.model_metadata import REQUIRED_METADATA, metadata_values
from labeler.core.exceptions import InputError, ModelLoadError
from labeler.demo.synthetic import SHAPE_CLASSES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pytest.importorskip("ultralytics")

IMGSZ = 64
CLASS_NAMES = {0: "circle", 1: "square", 2: "triangle"}
ENGINE_MESSAGE = (
    "TensorRT export needs a CUDA GPU and the tensorrt package; this machine has no CUDA device"
)


def build_random_detector(path: Path, *, seed: int = 0) -> Path:
    """Save a random 3-class YOLO11n whose outputs depend on its input, as a .pt at ``path``.

    Ultralytics' own init shrinks activations layer by layer and biases the class scores to ~0,
    so its random model answers the same for every image; He-normal conv weights and zero head
    biases keep scores near 0.5 and input-dependent, which a parity check can tell apart.
    """
    from ultralytics.nn.tasks import DetectionModel

    from distill.ultralytics_env import load_yolo

    torch.manual_seed(seed)
    wrapper = load_yolo("yolo11n.yaml")
    network = DetectionModel("yolo11n.yaml", nc=len(CLASS_NAMES), verbose=False)
    network.names = dict(CLASS_NAMES)
    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    head = network.model[-1]
    for branch in (*head.cv2, *head.cv3):
        torch.nn.init.zeros_(branch[-1].bias)
    wrapper.model = network
    wrapper.save(str(path))
    return path


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("export-weights")
    build_random_detector(directory / "student.pt")
    return directory


@pytest.fixture
def weights(weights_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the module's model, so exports next to it do not meet between tests."""
    copy = tmp_path / "weights" / "student.pt"
    copy.parent.mkdir()
    copy.write_bytes((weights_dir / "student.pt").read_bytes())
    return copy


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export must never reach the network (no downloads, no pip)."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def _metadata(path: Path) -> dict[str, Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return metadata_values(session.get_modelmeta().custom_metadata_map)


def test_onnx_export_verifies_and_carries_metadata(weights: Path) -> None:
    result = export_model(weights, format="onnx", imgsz=IMGSZ)

    assert isinstance(result, ExportResult)
    assert result.path == weights.with_name("student.onnx")
    assert result.path.is_file()
    assert (result.format, result.verified, result.half, result.dynamic) == (
        "onnx",
        True,
        False,
        False,
    )
    assert result.max_abs_diff is not None
    assert 0 <= result.max_abs_diff <= DEFAULT_ATOL[False]
    # Read back from the file itself: this is what the device runtime sees.
    metadata = _metadata(result.path)
    assert set(REQUIRED_METADATA) <= set(metadata)
    assert metadata["names"] == CLASS_NAMES
    assert metadata["imgsz"] == [IMGSZ, IMGSZ]
    assert metadata["stride"] == 32
    assert metadata["task"] == "detect"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, IMGSZ, IMGSZ]
    assert session.get_inputs()[0].type == "tensor(float)"


def test_export_leaves_the_weights_folder_alone_when_output_is_elsewhere(
    weights: Path, tmp_path: Path
) -> None:
    before = sorted(p.name for p in weights.parent.iterdir())
    target = tmp_path / "out" / "deployed.onnx"

    result = export_model(weights, format="onnx", imgsz=IMGSZ, output=target, verify=False)

    assert result.path == target
    assert target.is_file()
    assert (result.verified, result.max_abs_diff) == (False, None)
    # Ultralytics alone would have written student.onnx beside the weights.
    assert sorted(p.name for p in weights.parent.iterdir()) == before


def test_dynamic_batch_export_runs_batch_two(weights: Path) -> None:
    result = export_model(weights, format="onnx", imgsz=IMGSZ, dynamic=True)

    assert result.verified
    assert result.path.name == "student-dynamic.onnx"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    batch_dim = session.get_inputs()[0].shape[0]
    assert isinstance(batch_dim, str)  # a symbolic dimension
    for batch in (2, 3):
        (output,) = session.run(None, {"images": sample_batch(IMGSZ, batch)})
        assert output.shape[:2] == (batch, 4 + len(CLASS_NAMES))
    # Each image's row is its own: the batch is not one image repeated.
    two = session.run(None, {"images": sample_batch(IMGSZ, 2)})[0]
    assert not np.allclose(two[0], two[1])


def test_static_export_rejects_another_batch_size(weights: Path) -> None:
    result = export_model(weights, format="onnx", imgsz=IMGSZ, batch=2)

    assert result.path.name == "student-b2.onnx"
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 2
    with pytest.raises(Exception, match=r"(?i)dimension|shape"):
        session.run(None, {"images": sample_batch(IMGSZ, 1)})


def _corrupt_class_head(source: Path, target: Path) -> str:
    """Copy ``source`` with one class-score bias of the detection head shifted; return its name."""
    from onnx import numpy_helper

    model = onnx.load(str(source))
    pattern = re.compile(r"cv3\.0\.2\.bias$")
    initializer = next(i for i in model.graph.initializer if pattern.search(i.name))
    values = numpy_helper.to_array(initializer).copy()
    values += 2.0
    initializer.CopyFrom(numpy_helper.from_array(values, initializer.name))
    onnx.save(model, str(target))
    return initializer.name


def test_parity_check_catches_a_corrupted_weight(weights: Path, tmp_path: Path) -> None:
    good = export_model(weights, format="onnx", imgsz=IMGSZ, verify=False).path
    max_abs_diff, metadata = verify_onnx(good, weights)
    assert max_abs_diff <= DEFAULT_ATOL[False]
    assert metadata["names"] == CLASS_NAMES

    broken = tmp_path / "broken.onnx"
    _corrupt_class_head(good, broken)

    with pytest.raises(ModelLoadError, match="does not reproduce the PyTorch model") as caught:
        verify_onnx(broken, weights)
    assert str(broken) in str(caught.value)


def test_parity_check_compares_the_same_input(
    weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If PyTorch saw another image than onnxruntime, the outputs differ and export fails."""
    reference: Callable[..., Any] = export_module._reference_outputs

    def reference_on_flipped_images(path: Path, images: np.ndarray) -> np.ndarray:
        return reference(path, np.ascontiguousarray(images[..., ::-1]))

    monkeypatch.setattr(export_module, "_reference_outputs", reference_on_flipped_images)

    with pytest.raises(ModelLoadError, match=r"max difference .* > tolerance"):
        export_model(weights, format="onnx", imgsz=IMGSZ)


def test_file_without_metadata_fails_verification(weights: Path, tmp_path: Path) -> None:
    good = export_model(weights, format="onnx", imgsz=IMGSZ, verify=False).path
    model = onnx.load(str(good))
    del model.metadata_props[:]
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))

    with pytest.raises(ModelLoadError, match="lacks Ultralytics metadata"):
        verify_onnx(stripped, weights)


def test_fp16_onnx_on_cpu_halves_the_weights_and_keeps_float32_io(weights: Path) -> None:
    """Ultralytics converts to float16 on the CPU (onnxruntime's converter): no GPU needed."""
    full = export_model(weights, format="onnx", imgsz=IMGSZ)
    half = export_model(weights, format="onnx", imgsz=IMGSZ, half=True)

    assert half.path.name == "student-fp16.onnx"
    assert half.half and half.verified
    assert half.max_abs_diff is not None
    assert half.max_abs_diff <= DEFAULT_ATOL[True]
    model = onnx.load(str(half.path))
    float_types = {i.data_type for i in model.graph.initializer} & {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
    }
    assert float_types == {onnx.TensorProto.FLOAT16}
    session = ort.InferenceSession(str(half.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float)"
    assert session.get_outputs()[0].type == "tensor(float)"
    assert half.path.stat().st_size < 0.6 * full.path.stat().st_size


@pytest.fixture
def no_ultralytics_export(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) any attempt to load a model, check requirements or run pip."""
    import ultralytics.utils.checks as checks

    attempts: list[str] = []

    def refuse(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            attempts.append(name)
            raise AssertionError(f"{name} must not run")

        return call

    monkeypatch.setattr(export_module, "load_yolo", refuse("load_yolo"))
    monkeypatch.setattr(checks, "check_requirements", refuse("check_requirements"))
    monkeypatch.setattr(subprocess, "check_output", refuse("subprocess.check_output"))
    monkeypatch.setattr(subprocess, "run", refuse("subprocess.run"))
    return attempts


@pytest.mark.parametrize(
    ("cuda", "tensorrt", "expected"),
    [
        (False, True, ENGINE_MESSAGE),
        (True, False, "the tensorrt package is not installed"),
        (False, False, "no CUDA device and the tensorrt package is not installed"),
    ],
)
def test_engine_export_without_cuda_or_tensorrt_fails_in_one_line(
    weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_ultralytics_export: list[str],
    cuda: bool,
    tensorrt: bool,
    expected: str,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    find_spec = importlib.util.find_spec

    def fake_find_spec(name: str, *args: Any) -> Any:
        if name == "tensorrt":
            return find_spec("json") if tensorrt else None
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)

    with pytest.raises(InputError) as caught:
        export_model(weights, format="engine", imgsz=IMGSZ)

    message = str(caught.value)
    assert message.startswith("TensorRT export needs a CUDA GPU and the tensorrt package; ")
    assert expected in message
    assert "\n" not in message
    assert no_ultralytics_export == []
    assert list(weights.parent.glob("*.engine")) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "tflite"}, "unknown export format"),
        ({"imgsz": 50}, "multiple of 32"),
        ({"imgsz": 0}, "multiple of 32"),
        ({"batch": 0}, "batch must be >= 1"),
        ({"device": "0"}, "ONNX export always runs on the CPU"),
        ({"format": "engine", "device": "cpu"}, "built on a CUDA GPU"),
        ({"weights": "missing.pt"}, "no such weights file"),
        ({"weights": "student.onnx"}, "PyTorch .pt checkpoint"),
    ],
)
def test_bad_options_are_refused_before_export(
    weights: Path, no_ultralytics_export: list[str], change: dict[str, Any], message: str
) -> None:
    options: dict[str, Any] = {"format": "onnx", "imgsz": IMGSZ}
    target = weights
    if "weights" in change:
        target = weights.with_name(change.pop("weights"))
        if target.suffix == ".onnx":
            target.write_bytes(b"not a model")
    options.update(change)

    with pytest.raises(InputError, match=re.escape(message)):
        export_model(target, **options)
    assert no_ultralytics_export == []


def test_garbage_weights_raise_model_load_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)

    with pytest.raises(ModelLoadError, match=r"garbage\.pt"):
        export_model(garbage, format="onnx", imgsz=IMGSZ)


@pytest.mark.slow
def test_a_trained_student_exports_and_verifies(student: Any, tmp_path: Path) -> None:
    """The checkpoint `promptlabel train` writes goes through both precisions."""
    for half in (False, True):
        result = export_model(
            student.result.best,
            format="onnx",
            imgsz=IMGSZ,
            half=half,
            output=tmp_path / f"student-{half}.onnx",
        )
        assert result.verified
        assert result.max_abs_diff is not None
        assert result.max_abs_diff <= DEFAULT_ATOL[half]
        assert list(result.metadata["names"].values()) == list(SHAPE_CLASSES)


@pytest.mark.gpu
@pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("tensorrt") is None,
    reason="needs a CUDA GPU and the tensorrt package",
)
@pytest.mark.parametrize("half", [False, True])
def test_engine_export_on_a_gpu_verifies(weights: Path, half: bool) -> None:
    result = export_model(weights, format="engine", imgsz=IMGSZ, half=half)

    assert result.path.suffix == ".engine"
    assert result.path.is_file()
    assert result.verified
    assert result.max_abs_diff is not None
    assert result.max_abs_diff <= DEFAULT_ATOL[half]
    assert result.metadata["names"] == CLASS_NAMES
