"""The device runtime: an exported student run with the base install only (numpy, Pillow,
onnxruntime); no torch, Ultralytics, OpenCV or web framework is imported here.

The metadata it reads from a file is the exporter's contract, ``distill.model_metadata``.
"""

from serve.runtime.annotate import draw_detections
from serve.runtime.onnx import OnnxDetector, load_runtime, read_image_bytes

__all__ = ["OnnxDetector", "draw_detections", "load_runtime", "read_image_bytes"]
