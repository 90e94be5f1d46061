"""Export a trained student to ONNX or a TensorRT engine, and check the file matches the model.

``export_model`` runs Ultralytics' exporter on a private copy of the weights (so it never
overwrites a file next to them), moves the result to ``output`` and then checks it:

- the file carries Ultralytics' metadata (``names``, ``imgsz``, ``stride``, ``task``), which the
  device runtime reads to know the classes and the input size;
- its raw outputs on a fixed synthetic image equal the PyTorch model's within ``atol`` (box rows
  are compared as fractions of ``imgsz``, class scores as they are), so a broken export fails here
  and not on a device.

ONNX is always exported on the CPU: the same file on every machine, float32 inputs and outputs.
``half=True`` stores the weights as float16 (Ultralytics converts the graph with onnxruntime's
float16 converter on CPU), with float32 inputs and outputs kept. A TensorRT engine needs a CUDA GPU
and the ``tensorrt`` package; both are checked before Ultralytics runs, because its exporter would
otherwise try to ``pip install`` TensorRT.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from distill.model_metadata import (
    check_required_metadata,
    metadata_values,
    parse_metadata,
)
from distill.ultralytics_env import import_ultralytics, load_yolo, quiet_ultralytics
from labeler.core.exceptions import InputError, ModelLoadError
from labeler.core.files import copy_atomically

__all__ = [
    "DEFAULT_ATOL",
    "ExportFormat",
    "ExportResult",
    "check_tensorrt_available",
    "export_model",
    "sample_batch",
    "variant_tag",
    "verify_engine",
    "verify_onnx",
]

logger = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "engine"]

# Largest accepted difference between the exported file's and PyTorch's raw outputs (box
# coordinates divided by imgsz, scores as they are), by half precision. Measured on YOLO11n
# students: float32 files differ by ~1e-6, float16 weights by 5e-4 to 3e-3 (more at small imgsz),
# so 1e-2 leaves room for larger models; a broken export (wrong weights, a wrong input) is off by
# far more.
DEFAULT_ATOL: dict[bool, float] = {False: 1e-3, True: 1e-2}

_SUFFIX: dict[str, str] = {"onnx": ".onnx", "engine": ".engine"}
_SAMPLE_SEED = 0


@dataclass(frozen=True)
class ExportResult:
    """One exported file: where it is, how it was made and what the parity check found.

    ``max_abs_diff`` is the largest difference from PyTorch (boxes as fractions of ``imgsz``);
    it is None when ``verified`` is False because ``verify=False`` was asked for.
    """

    path: Path
    format: ExportFormat
    verified: bool
    max_abs_diff: float | None
    imgsz: int
    half: bool
    dynamic: bool
    batch: int
    metadata: dict[str, Any] = field(default_factory=dict)


def _check_options(weights: Path, format: str, imgsz: int, batch: int, device: str | int) -> None:
    if format not in _SUFFIX:
        raise InputError(f"unknown export format {format!r}; choose one of: onnx, engine")
    if not weights.is_file():
        raise InputError(f"{weights}: no such weights file")
    if weights.suffix != ".pt":
        raise InputError(f"{weights}: export starts from a PyTorch .pt checkpoint")
    if imgsz < 32 or imgsz % 32:
        raise InputError(
            f"imgsz must be a positive multiple of 32 (the model's stride), got {imgsz}"
        )
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if format == "onnx" and str(device) not in {"auto", "cpu"}:
        raise InputError(
            f"device={device!r}: ONNX export always runs on the CPU, so the file is the same on "
            "every machine; leave device as 'auto' (device picks the GPU for --format engine only)"
        )
    if format == "engine" and str(device) == "cpu":
        raise InputError(
            "device='cpu': a TensorRT engine is built on a CUDA GPU; use 'auto' or '0'"
        )


@contextlib.contextmanager
def _exporter_warnings_silenced() -> Iterator[None]:
    """Hide the warnings torch raises about Ultralytics' export code, not the user's.

    Ultralytics traces the model with torch's legacy TorchScript ONNX exporter, which warns that
    it is deprecated and that Python booleans in the head become trace constants (true for a
    fixed input shape). Neither is actionable here, and the parity check tests the result.
    """
    from torch.jit._trace import TracerWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def check_tensorrt_available() -> None:
    """Raise InputError (one line) unless a CUDA device and an importable ``tensorrt`` are here."""
    import torch

    missing: list[str] = []
    if not torch.cuda.is_available():
        missing.append("this machine has no CUDA device")
    if importlib.util.find_spec("tensorrt") is None:
        missing.append("the tensorrt package is not installed")
    if missing:
        raise InputError(
            "TensorRT export needs a CUDA GPU and the tensorrt package; " + " and ".join(missing)
        )


def _engine_device(device: str | int) -> str:
    device = str(device)
    if device == "auto":
        return "0"
    return device.removeprefix("cuda:") if device.startswith("cuda") else device


def variant_tag(*, half: bool, dynamic: bool, batch: int) -> str:
    """What sets an export apart from the plain one (fp32, static, batch 1): ``""``, or tags
    such as ``-fp16-dynamic`` and ``-b8``. Names export files and registry artifact kinds."""
    tags = ("-fp16" if half else "") + ("-dynamic" if dynamic else "")
    return tags + (f"-b{batch}" if batch != 1 else "")


def _default_output(weights: Path, format: str, half: bool, dynamic: bool, batch: int) -> Path:
    tags = variant_tag(half=half, dynamic=dynamic, batch=batch)
    return weights.with_name(f"{weights.stem}{tags}{_SUFFIX[format]}")


def export_model(
    weights: Path,
    *,
    format: ExportFormat,
    imgsz: int = 640,
    half: bool = False,
    dynamic: bool = False,
    batch: int = 1,
    device: str | int = "auto",
    verify: bool = True,
    atol: float | None = None,
    output: Path | None = None,
) -> ExportResult:
    """Export ``weights`` (an Ultralytics .pt) to ``format`` and check the exported file.

    The file lands at ``output`` (default: next to the weights, named after them with ``-fp16``,
    ``-dynamic``, ``-b<batch>`` tags, e.g. ``best-fp16.onnx``), replacing a file there only once
    the export succeeded. ``dynamic=True`` makes the batch (and image size) dimensions dynamic;
    ``batch`` is the static batch size otherwise (the largest profiled batch for an engine).
    ``device`` only picks the GPU that builds an engine; ONNX export runs on the CPU.

    With ``verify`` (the default), the exported file must carry ``REQUIRED_METADATA`` and
    reproduce the PyTorch model's raw outputs on a fixed sample within ``atol`` (default
    ``DEFAULT_ATOL[half]``, the float16 one for any engine); otherwise ModelLoadError is raised
    and the file is left in place for inspection. Raises InputError for bad options or a machine
    that cannot build an engine (checked before any export starts), ModelLoadError for weights
    that do not load or an export that fails.
    """
    weights = Path(weights)
    _check_options(weights, format, imgsz, batch, device)
    if format == "engine":
        check_tensorrt_available()
    output = (
        Path(output)
        if output is not None
        else _default_output(weights, format, half, dynamic, batch)
    )
    export_device = "cpu" if format == "onnx" else _engine_device(device)

    with tempfile.TemporaryDirectory(prefix="promptlabel-export-") as scratch:
        # Ultralytics writes next to the checkpoint it loaded; a private copy keeps it from
        # overwriting a file beside the user's weights (such as an earlier export).
        private = Path(scratch) / f"model{weights.suffix}"
        shutil.copy2(weights, private)
        model = load_yolo(private, what=f"weights {weights}")
        try:
            with quiet_ultralytics(), _exporter_warnings_silenced():
                exported = model.export(
                    format=format,
                    imgsz=imgsz,
                    quantize=16 if half else None,
                    dynamic=dynamic,
                    batch=batch,
                    device=export_device,
                    # onnxslim is optional; asking for it when absent makes Ultralytics install it.
                    simplify=importlib.util.find_spec("onnxslim") is not None,
                    verbose=False,
                )
        except Exception as exc:  # Ultralytics' exporter re-raises whatever failed inside it
            raise ModelLoadError(
                f"{weights}: export to {format} failed ({type(exc).__name__}: {exc})"
            ) from exc
        if not exported or not Path(exported).is_file():
            raise ModelLoadError(f"{weights}: export to {format} wrote no file")
        copy_atomically(Path(exported), output)
    logger.info("exported %s to %s", weights, output)

    if not verify:
        return ExportResult(output, format, False, None, imgsz, half, dynamic, batch)
    # TensorRT runs float32 layers in TF32 (float16's mantissa) on Ampere and newer GPUs by
    # default, so an engine gets the float16 tolerance either way.
    tolerance = DEFAULT_ATOL[half or format == "engine"] if atol is None else atol
    # A dynamic ONNX file is checked at batch 2 so the dynamic axis is exercised; an engine's
    # profile ends at `batch`, so it is checked there.
    verify_batch = max(batch, 2) if dynamic and format == "onnx" else batch
    if format == "onnx":
        max_abs_diff, metadata = verify_onnx(output, weights, atol=tolerance, batch=verify_batch)
    else:
        max_abs_diff, metadata = verify_engine(
            output, weights, atol=tolerance, batch=verify_batch, device=export_device
        )
    return ExportResult(output, format, True, max_abs_diff, imgsz, half, dynamic, batch, metadata)


def sample_batch(imgsz: int, batch: int = 1) -> npt.NDArray[np.float32]:
    """A fixed ``(batch, 3, imgsz, imgsz)`` float32 input in [0, 1]: synthetic shapes, seeded.

    Shapes on a texture give a model activations like real images do, unlike uniform noise.
    """
    from labeler.demo.synthetic import make_shapes_image

    rng = np.random.default_rng(_SAMPLE_SEED)
    images = [
        np.asarray(make_shapes_image(rng, (imgsz, imgsz), n_shapes=3)[0], np.float32)
        for _ in range(batch)
    ]
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2) / 255.0, np.float32)


def _reference_outputs(weights: Path, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The PyTorch model's raw first output on ``images`` (float32, CPU)."""
    import torch

    module = load_yolo(weights, what="weights").model.float().eval()
    with torch.inference_mode():
        outputs = module(torch.from_numpy(images))
    # A detection model in eval mode returns (decoded predictions, per-level feature maps).
    first = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    return np.asarray(first.detach().cpu().numpy(), np.float32)


def _max_scaled_diff(
    path: Path,
    exported: npt.NDArray[Any],
    reference: npt.NDArray[np.float32],
    imgsz: int,
    n_classes: int | None,
) -> float:
    """Largest |exported - reference| with box rows as fractions of ``imgsz``.

    A detection head's raw output is ``(batch, 4 + n_classes, anchors)``: four box rows in pixels,
    then class scores in [0, 1]. Other layouts are compared relative to the reference's largest
    magnitude.
    """
    exported = exported.astype(np.float32)
    if exported.shape != reference.shape:
        raise ModelLoadError(
            f"{path}: exported output shape {exported.shape} differs from PyTorch's "
            f"{reference.shape}; re-export with `promptlabel export`"
        )
    diff = np.abs(exported - reference)
    if reference.ndim == 3 and n_classes is not None and reference.shape[1] == 4 + n_classes:
        diff[:, :4] /= imgsz
    else:
        diff /= max(1.0, float(np.abs(reference).max()))
    return float(diff.max()) if diff.size else 0.0


def _fail_if_beyond(path: Path, max_abs_diff: float, atol: float) -> None:
    # NaN compares False with everything, so test for "within" and fail otherwise.
    if not max_abs_diff <= atol:
        raise ModelLoadError(
            f"{path}: exported model does not reproduce the PyTorch model: max difference "
            f"{max_abs_diff:.3g} > tolerance {atol:.3g} (boxes as fractions of imgsz); the export "
            "is broken, do not deploy it"
        )


def _compare_with_pytorch(
    exported_file: Path,
    exported: npt.NDArray[np.float32],
    weights: Path,
    images: npt.NDArray[np.float32],
    metadata: Mapping[str, Any],
    imgsz: int,
    atol: float,
) -> float:
    """The largest scaled difference between an exported file's outputs and the PyTorch model's
    on the same images; raises ModelLoadError beyond ``atol``."""
    reference = _reference_outputs(Path(weights), images)
    names = metadata.get("names")
    n_classes = len(names) if isinstance(names, Mapping | list) else None
    max_abs_diff = _max_scaled_diff(exported_file, exported, reference, imgsz, n_classes)
    _fail_if_beyond(exported_file, max_abs_diff, atol)
    return max_abs_diff


def verify_onnx(
    onnx_file: Path, weights: Path, *, atol: float = DEFAULT_ATOL[False], batch: int = 1
) -> tuple[float, dict[str, Any]]:
    """Check ``onnx_file`` against the PyTorch ``weights``; return (max difference, metadata).

    Loads the file in onnxruntime (CPU), requires ``REQUIRED_METADATA``, feeds ``sample_batch``
    at the file's ``imgsz`` to both models and raises ModelLoadError when the largest difference
    (boxes as fractions of imgsz) exceeds ``atol`` or the file cannot be loaded.
    """
    import onnxruntime as ort

    onnx_file = Path(onnx_file)
    try:
        session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"{onnx_file}: onnxruntime cannot load it ({exc})") from exc
    metadata = metadata_values(session.get_modelmeta().custom_metadata_map)
    parse_metadata(metadata, source=str(onnx_file))
    imgsz = int(np.max(metadata["imgsz"]))
    images = sample_batch(imgsz, batch)
    model_input = session.get_inputs()[0]
    # A GPU half export takes float16; ours (CPU) keeps float32 inputs.
    feed = images.astype(np.float16) if "float16" in model_input.type else images
    try:
        exported = session.run(None, {model_input.name: feed})[0]
    except Exception as exc:  # e.g. a static-batch file fed another batch size
        raise ModelLoadError(f"{onnx_file}: onnxruntime cannot run it ({exc})") from exc
    max_abs_diff = _compare_with_pytorch(
        onnx_file, exported, weights, images, metadata, imgsz, atol
    )
    return max_abs_diff, metadata


def verify_engine(
    engine_file: Path,
    weights: Path,
    *,
    atol: float = DEFAULT_ATOL[True],
    batch: int = 1,
    device: str = "0",
) -> tuple[float, dict[str, Any]]:
    """Check a TensorRT ``engine_file`` against the PyTorch ``weights`` on CUDA ``device``.

    Runs through Ultralytics' AutoBackend (it reads the metadata header Ultralytics writes before
    the engine); same contract as ``verify_onnx``.
    """
    import torch

    check_tensorrt_available()
    import_ultralytics()
    from ultralytics.nn.autobackend import AutoBackend

    engine_file = Path(engine_file)
    cuda = torch.device(f"cuda:{device}" if str(device).isdigit() else device)
    try:
        backend = AutoBackend(str(engine_file), device=cuda, verbose=False)
    except Exception as exc:  # TensorRT deserialization errors come in many types
        raise ModelLoadError(f"{engine_file}: TensorRT cannot load it ({exc})") from exc
    metadata = dict(backend.metadata or {})
    check_required_metadata(metadata, source=str(engine_file))
    # The engine header is JSON, so its class ids come back as strings; AutoBackend's are ints.
    metadata["names"] = dict(backend.names)
    imgsz = int(np.max(metadata["imgsz"]))
    images = sample_batch(imgsz, batch)
    with torch.inference_mode():
        outputs = backend(torch.from_numpy(images).to(cuda))
    first = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    exported = first.float().cpu().numpy()
    max_abs_diff = _compare_with_pytorch(
        engine_file, exported, weights, images, metadata, imgsz, atol
    )
    return max_abs_diff, metadata
