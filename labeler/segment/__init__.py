"""Promptable segmenters prompted with accepted boxes, and the mask stage (issue 15)."""

from labeler.segment.quality import MaskThresholds, mask_problem
from labeler.segment.rle import as_rle, from_rle
from labeler.segment.spec import DEFAULT_SEGMENTER, mask_key, parse_segmenter_spec
from labeler.segment.stage import (
    LazySegmenter,
    MaskStats,
    Segmenter,
    box_text,
    image_masks,
    load_segmenter,
)

__all__ = [
    "DEFAULT_SEGMENTER",
    "LazySegmenter",
    "MaskStats",
    "MaskThresholds",
    "Segmenter",
    "as_rle",
    "box_text",
    "from_rle",
    "image_masks",
    "load_segmenter",
    "mask_key",
    "mask_problem",
    "parse_segmenter_spec",
]
