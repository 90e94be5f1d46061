"""promptlabel's labeler: class prompts in, verified labels and a training-ready dataset out.

Light names are imported eagerly; the ones that pull in torch, transformers or the HTTP client load
on first use, so ``import labeler.core.detections`` stays cheap for the device runtime.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from labeler.core.detections import Detections
from labeler.core.exceptions import (
    ImageError,
    InputError,
    ModelLoadError,
    OntologyError,
    PromptlabelError,
    StoreError,
    VerifierError,
    VerifierRateLimited,
)
from labeler.core.version import __version__
from labeler.ontology import Ontology, OntologyClass, load_ontology, parse_ontology

_LAZY = {
    "DetectorOptions": "labeler.propose.options",
    "load_detector": "labeler.propose.detector",
    "load_verifier": "labeler.verify",
    "ExportItem": "labeler.export.dataset",
    "export_dataset": "labeler.export.dataset",
    "LabelConfig": "labeler.pipeline",
    "run_label": "labeler.pipeline",
    "RouteThresholds": "labeler.route",
    "Status": "labeler.route",
    "Workspace": "labeler.store.workspace",
}

__all__ = [
    "Detections",
    "DetectorOptions",
    "ExportItem",
    "ImageError",
    "InputError",
    "LabelConfig",
    "ModelLoadError",
    "Ontology",
    "OntologyClass",
    "OntologyError",
    "PromptlabelError",
    "RouteThresholds",
    "Status",
    "StoreError",
    "VerifierError",
    "VerifierRateLimited",
    "Workspace",
    "__version__",
    "export_dataset",
    "load_detector",
    "load_ontology",
    "load_verifier",
    "parse_ontology",
    "run_label",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'labeler' has no attribute {name!r}")
