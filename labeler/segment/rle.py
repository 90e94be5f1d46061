"""COCO RLE in original-image pixels, the mask contract (issue 15); pycocotools does the work."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = ["as_rle", "from_rle"]


def as_rle(mask: np.ndarray) -> dict[str, Any]:
    """A (height, width) boolean mask as {"size": [h, w], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def from_rle(rle: dict[str, Any]) -> np.ndarray:
    """The boolean (height, width) mask of an RLE dict."""
    coded = {"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")}
    return np.asarray(mask_utils.decode(coded), dtype=bool)
