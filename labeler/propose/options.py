"""Detector options: plain data, importable without torch (the CLI validates them up front)."""

from __future__ import annotations

from dataclasses import dataclass

from labeler.core.exceptions import InputError

__all__ = ["DEFAULT_DETECTOR", "DTYPE_NAMES", "DetectorOptions"]

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"  # the Hub id used when none is chosen
DTYPE_NAMES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class DetectorOptions:
    """How proposals are made; every field that changes the boxes is in ``Detector.fingerprint``.

    ``box_threshold`` applies to a box's best phrase-token score (as in Grounding DINO),
    ``text_threshold`` to its class score; a value above 1 keeps nothing.
    """

    box_threshold: float = 0.35
    text_threshold: float = 0.25
    max_det: int = 100
    nms_iou: float = 0.5
    device: str = "auto"  # "auto": cuda if available else cpu; "cpu", "cuda", "cuda:1"
    dtype: str = "auto"  # "auto": float16 on cuda, float32 on cpu; or one of DTYPE_NAMES
    batch_size: int = 4
    # Small objects: also run on overlapping tile_px squares (None: whole image only); see
    # labeler.propose.tiling.
    tile_px: int | None = None
    tile_overlap: float = 0.2

    def __post_init__(self) -> None:
        problems = []
        if not self.box_threshold >= 0 or not self.text_threshold >= 0:
            problems.append("box_threshold and text_threshold must be >= 0")
        if not 0 <= self.nms_iou <= 1:
            problems.append(f"nms_iou must be within [0, 1], got {self.nms_iou}")
        if self.max_det < 1:
            problems.append(f"max_det must be >= 1, got {self.max_det}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.tile_px is not None and self.tile_px < 32:
            problems.append(f"tile_px (--tile) must be at least 32 pixels, got {self.tile_px}")
        if not 0.0 <= self.tile_overlap < 0.9:
            problems.append(
                f"tile_overlap (--tile-overlap) must be within [0, 0.9), got {self.tile_overlap}"
            )
        if self.dtype != "auto" and self.dtype not in DTYPE_NAMES:
            problems.append(
                f"dtype must be auto or one of {', '.join(DTYPE_NAMES)}: {self.dtype!r}"
            )
        if problems:
            raise InputError("detector options: " + "; ".join(problems))
