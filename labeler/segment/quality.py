"""Mask-quality routing: which masks send their box to review, and why."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MaskThresholds", "mask_problem"]


@dataclass(frozen=True)
class MaskThresholds:
    min_box_cover: float = 0.2  # mask pixels inside the box / box area, below: review
    max_outside: float = 0.3  # mask pixels outside the box / mask pixels, above: review


def mask_problem(
    mask: np.ndarray, xyxy: np.ndarray, thresholds: MaskThresholds = MaskThresholds()
) -> str | None:
    """None for a usable mask, else the reason its box goes to review."""
    total = int(mask.sum())
    if total == 0:
        return "mask: empty"
    h, w = mask.shape
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    ix1, iy1 = max(int(np.floor(x1)), 0), max(int(np.floor(y1)), 0)
    ix2, iy2 = min(int(np.ceil(x2)), w), min(int(np.ceil(y2)), h)
    inside = int(mask[iy1:iy2, ix1:ix2].sum()) if ix2 > ix1 and iy2 > iy1 else 0
    box_area = max((x2 - x1) * (y2 - y1), 1.0)
    cover = inside / box_area
    if cover < thresholds.min_box_cover:
        return f"mask: covers {cover:.0%} of its box (< {thresholds.min_box_cover:.0%})"
    outside = (total - inside) / total
    if outside > thresholds.max_outside:
        return f"mask: {outside:.0%} outside its box (> {thresholds.max_outside:.0%})"
    return None
