"""promptlabel's distill: from a labeled dataset to an evaluated, versioned, exported student.

Everything here needs the ``train`` extra (ultralytics); names load on first use so that importing
``distill`` itself stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "DatasetInfo": "distill.dataset",
    "check_dataset": "distill.dataset",
    "TrainResult": "distill.train",
    "train": "distill.train",
    "EvalResult": "distill.evaluate",
    "evaluate": "distill.evaluate",
    "from_ultralytics": "labeler.core.detections",
    "EvalSet": "distill.registry",
    "ModelVersion": "distill.registry",
    "PromotionDecision": "distill.registry",
    "Registry": "distill.registry",
    "evaluation_metrics": "distill.registry",
    "ExportResult": "distill.export",
    "export_model": "distill.export",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")
