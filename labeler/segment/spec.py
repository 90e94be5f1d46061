"""Segmenter specs: ``transformers:ID_OR_PATH`` or ``segment-anything:CHECKPOINT.pth``."""

from __future__ import annotations

import hashlib
import json

from labeler.core.exceptions import InputError

__all__ = ["BACKENDS", "DEFAULT_SEGMENTER", "mask_key", "parse_segmenter_spec"]

BACKENDS = ("transformers", "segment-anything")
# SAM ViT-B: the smallest original SAM (~94M parameters), so the one image embedding per image is
# affordable on CPU; SAM-HQ / SAM 2 checkpoints are one spec away when quality matters more.
DEFAULT_SEGMENTER = "transformers:facebook/sam-vit-base"


def parse_segmenter_spec(spec: str) -> tuple[str, str]:
    """Split a spec into (backend, model id or path); InputError names the spec and the forms."""
    backend, sep, target = spec.partition(":")
    if not sep or not target.strip():
        raise InputError(
            f"--masks {spec!r}: expected BACKEND:MODEL, e.g. {DEFAULT_SEGMENTER} or "
            "segment-anything:/path/sam_vit_b_01ec64.pth"
        )
    if backend not in BACKENDS:
        raise InputError(
            f"--masks {spec!r}: unknown segmenter backend {backend!r} "
            f"(choose from {', '.join(BACKENDS)})"
        )
    if backend == "segment-anything" and not target.endswith((".pth", ".pt")):
        raise InputError(
            f"--masks {spec!r}: segment-anything takes a checkpoint file (.pth), got {target!r}"
        )
    return backend, target.strip()


def mask_key(spec: str, *, multimask: bool = True) -> str:
    """What names a mask in the workspace besides its image and box: the segmenter and its
    options. Changing either computes masks again; switching back finds the stored ones."""
    payload = json.dumps({"spec": spec, "multimask": multimask}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
