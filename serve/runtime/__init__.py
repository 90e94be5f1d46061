"""The device runtime: an exported student run with the base install only (numpy, Pillow,
onnxruntime); no torch, Ultralytics, OpenCV or web framework is imported here.

The metadata it reads from a file is the exporter's contract, ``distill.model_metadata``. Names
load on first use, so that ``serve.runtime.defaults`` does not import onnxruntime.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "OnnxDetector": "serve.runtime.onnx",
    "load_runtime": "serve.runtime.onnx",
    "read_image_bytes": "serve.runtime.onnx",
    "draw_detections": "serve.runtime.annotate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'serve.runtime' has no attribute {name!r}")
