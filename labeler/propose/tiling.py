"""Small objects: the detector also runs on overlapping tiles of each image (as SAHI does).

Each image is cut into ``tile_px`` squares overlapping by ``overlap`` (the last row and column
are shifted inwards so every tile is full-size, SAHI's ``get_slice_bboxes`` layout); the tiles go
through the detector together, ``batch_size`` at a time, then the whole image on its own (for the
objects larger than a tile). Boxes are mapped back to image pixels and merged per class by greedy
non-maximum MERGING (SAHI's ``greedy_nmm``, supervision's ``box_non_max_merge``): a box that a
tile border cut in two is one union box, not two boxes nor one half box.

Written here (about 60 lines) rather than taken from sahi or supervision: sahi pulls in
opencv, shapely, fire and terminaltables, supervision opencv, scipy and matplotlib, for a tile
layout and a merge loop that are a few lines over numpy and torchvision, which the label extra
already has. Each proposal records where it was found: ``data["tile_index"]`` (-1: the whole
image) and ``data["tile_xyxy"]`` (that tile in image pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image

from labeler.core.detections import Detections

__all__ = ["FULL_IMAGE", "MERGE_IOS", "merge_boxes", "propose_tiled", "tile_boxes"]

FULL_IMAGE = -1  # the tile_index of a box found on the whole image
MERGE_IOS = 0.5  # boxes of one class overlapping more of the smaller box than this are merged


def _starts(length: int, tile_px: int, stride: int) -> list[int]:
    if length <= tile_px:
        return [0]
    starts = list(range(0, length - tile_px, stride))
    return [*starts, length - tile_px]  # the last tile ends at the border


def tile_boxes(image_wh: tuple[int, int], tile_px: int, overlap: float) -> npt.NDArray[np.int64]:
    """``(k, 4)`` xyxy tiles covering the image, row by row; a side no longer than ``tile_px``
    is one tile of that side's length. An image no larger than a tile gets no tiles (the whole
    image already is one)."""
    width, height = image_wh
    if width <= tile_px and height <= tile_px:
        return np.zeros((0, 4), np.int64)
    stride = max(1, round(tile_px * (1.0 - overlap)))
    return np.asarray(
        [
            (x, y, min(x + tile_px, width), min(y + tile_px, height))
            for y in _starts(height, tile_px, stride)
            for x in _starts(width, tile_px, stride)
        ],
        dtype=np.int64,
    ).reshape(-1, 4)


def _ios(box: npt.NDArray[np.float32], others: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Intersection over the smaller box's area: a border-cut piece lies inside its whole box."""
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=1)
    areas = np.clip(others[:, 2:] - others[:, :2], 0, None).prod(axis=1)
    own = max(float(np.prod(np.clip(box[2:] - box[:2], 0, None))), 1e-9)
    smaller = np.minimum(areas, own)
    return np.asarray(inter / np.maximum(smaller, 1e-9), np.float32)


def merge_boxes(detections: Detections, threshold: float = MERGE_IOS) -> Detections:
    """Greedy class-aware merge, best first (larger first on a tie): each kept box absorbs the
    not-yet-taken boxes of its class that overlap it by more than ``threshold`` (intersection
    over the smaller box), growing to their union; it keeps its own score and data (the tile
    that found it best)."""
    # Best first; on equal scores the larger box, the more whole piece of a cut object.
    order = np.lexsort((-detections.area, -detections.confidence))
    taken = np.zeros(len(detections), bool)
    keep: list[int] = []
    xyxy = detections.xyxy.copy()
    for i in order:
        if taken[i]:
            continue
        taken[i] = True
        keep.append(int(i))
        while True:  # a grown box may now reach further pieces
            rest = np.flatnonzero(~taken & (detections.class_id == detections.class_id[i]))
            if not len(rest):
                break
            hits = rest[_ios(xyxy[i], detections.xyxy[rest]) > threshold]
            if not len(hits):
                break
            taken[hits] = True
            boxes = np.vstack([xyxy[i : i + 1], detections.xyxy[hits]])
            xyxy[i] = [*boxes[:, :2].min(axis=0), *boxes[:, 2:].max(axis=0)]
    merged = detections[np.asarray(keep, np.int64)]
    merged.xyxy = xyxy[keep].reshape(-1, 4)
    return merged


ProposeFn = Callable[[Sequence[Image.Image]], list[Detections]]


def propose_tiled(
    images: Sequence[Image.Image],
    propose: ProposeFn,
    *,
    tile_px: int,
    overlap: float,
    batch_size: int,
    max_det: int,
) -> list[Detections]:
    """One ``Detections`` per image from its tiles and the whole image, merged (see module).

    ``propose`` is the detector on a list of images (each ``Detections`` in that image's pixels);
    the tiles of an image go to it ``batch_size`` at a time (same-size crops, so no padding),
    the whole image in a call of its own. At most ``max_det`` boxes per image, best first.
    """
    results = []
    for image in images:
        tiles = tile_boxes(image.size, tile_px, overlap)
        crops = [image.crop((int(x1), int(y1), int(x2), int(y2))) for x1, y1, x2, y2 in tiles]
        found: list[Detections] = []
        for start in range(0, len(crops), batch_size):
            found.extend(propose(crops[start : start + batch_size]))
        parts = []
        for index, (tile, dets) in enumerate(zip(tiles, found, strict=True)):
            offset = np.asarray([tile[0], tile[1], tile[0], tile[1]], np.float32)
            parts.append(_with_tile(dets, dets.xyxy + offset, index, tile))
        whole = propose([image])[0]
        full_xyxy = np.asarray([0, 0, *image.size], np.int64)
        parts.append(_with_tile(whole, whole.xyxy, FULL_IMAGE, full_xyxy))
        merged = merge_boxes(Detections.merge(parts))
        order = np.argsort(-merged.confidence, kind="stable")[:max_det]
        best = merged[order]
        best.metadata = {"image_wh": image.size, "tiles": len(tiles)}
        results.append(best)
    return results


def _with_tile(
    dets: Detections, xyxy: npt.NDArray[np.float32], index: int, tile: npt.NDArray[np.int64]
) -> Detections:
    n = len(dets)
    return Detections(
        xyxy=xyxy,
        class_id=dets.class_id,
        confidence=dets.confidence,
        data={
            **dets.data,
            "tile_index": np.full(n, index, np.int64),
            "tile_xyxy": np.tile(np.asarray(tile, np.int64), (n, 1)),
        },
    )
