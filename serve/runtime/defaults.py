"""The runtime's prediction defaults, importable without onnxruntime (the CLI's option defaults).

They are Ultralytics' own predict defaults, so that a student scores here as it does there.
"""

__all__ = ["DEFAULT_CONF", "DEFAULT_IOU", "DEFAULT_MAX_DET"]

DEFAULT_CONF = 0.25
DEFAULT_IOU = 0.7
DEFAULT_MAX_DET = 300
