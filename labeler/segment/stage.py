"""The mask stage: accepted boxes in, one mask per box out, cached in the workspace like verdicts.

Per image: the stored masks are looked up by (image, box, mask key); only the missing boxes go to
the segmenter, all in one call (one image embedding, one batched decoder pass).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from labeler.segment.rle import as_rle
from labeler.segment.spec import parse_segmenter_spec

__all__ = [
    "LazySegmenter",
    "MaskStats",
    "Segmenter",
    "box_text",
    "image_masks",
    "load_segmenter",
]


class Segmenter(Protocol):
    def segment(self, image: Image.Image, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (n, height, width) bool in original pixels and their predicted IoU (n,)."""
        ...


@dataclass
class MaskStats:
    computed: int = 0
    cached: int = 0
    sent_to_review: int = 0


class LazySegmenter:
    """A Segmenter that loads the real one at its first ``segment`` call, so a run whose masks
    are all stored loads no model (a worker hands one to each job; ``load`` reads its cache)."""

    def __init__(self, load: Callable[[], Segmenter]) -> None:
        self._load = load
        self._loaded: Segmenter | None = None

    def segment(self, image: Image.Image, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded.segment(image, xyxy)


def load_segmenter(spec: str, *, device: str | None = None) -> Segmenter:
    """The segmenter a ``--masks`` spec names (the registry: backend name -> loader); ``device``
    None or "auto" picks cuda when a GPU is visible."""
    backend, target = parse_segmenter_spec(spec)
    return _LOADERS[backend](target, device)


def _load_transformers(target: str, device: str | None = None) -> Segmenter:
    from labeler.segment.transformers_sam import TransformersSegmenter

    return TransformersSegmenter(target, device=device)


def _load_segment_anything(target: str, device: str | None = None) -> Segmenter:
    from labeler.segment.segment_anything_backend import SegmentAnythingSegmenter

    return SegmentAnythingSegmenter(target, device=device)


# One loader per name in spec.BACKENDS; each imports its backend only when chosen.
_LOADERS: dict[str, Callable[[str, str | None], Segmenter]] = {
    "transformers": _load_transformers,
    "segment-anything": _load_segment_anything,
}


def box_text(xyxy: Sequence[float]) -> str:
    """A box as the workspace keys it: pixels to 0.01."""
    return ",".join(f"{float(v):.2f}" for v in xyxy)


def image_masks(
    *,
    boxes: Sequence[Sequence[float]],
    stored: dict[str, dict[str, Any]],
    load_image: Callable[[], Image.Image | None],
    segmenter: Callable[[], Segmenter],
    save: Callable[[list[tuple[str, dict[str, Any], float]]], None],
    stats: MaskStats,
) -> list[dict[str, Any] | None]:
    """One RLE per box (None where the image could not be decoded): the stored ones, and the rest
    from one segmenter call, saved before they are returned."""
    keys = [box_text(b) for b in boxes]
    missing = list(dict.fromkeys(k for k in keys if k not in stored))
    found = dict(stored)
    stats.cached += sum(1 for k in keys if k in stored)
    if missing:
        image = load_image()
        if image is not None:
            xyxy = np.asarray([[float(v) for v in k.split(",")] for k in missing], np.float32)
            masks, iou = segmenter().segment(image, xyxy)
            rows = [(k, as_rle(m), float(s)) for k, m, s in zip(missing, masks, iou, strict=True)]
            save(rows)
            found.update({k: rle for k, rle, _ in rows})
            stats.computed += len(rows)
    return [found.get(k) for k in keys]
