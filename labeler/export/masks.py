"""Masks for the exporters: COCO RLE in, polygons out (YOLO segmentation rows, COCO polygons).

A mask travels as COCO RLE in original-image pixels, ``{"size": [height, width], "counts": str}``
(issue 15's contract). pycocotools does every encode, decode, area and bbox; OpenCV's
``findContours`` traces the outlines (``opencv-python`` is the package Ultralytics already pulls
in, so the label extra adds no second copy of ``cv2``); a mask in several pieces becomes one YOLO
polygon the way Ultralytics joins COCO pieces, with its own ``merge_multi_segment``.

Promises:

- ``rle_to_polygons`` returns the outer outline of every piece (holes are not kept: neither a
  YOLO row nor a COCO ``iscrowd=0`` polygon can hold one), traced along pixel edges so that
  pycocotools rasterises it back to the same pixels; even a single pixel is a 4-point square. An
  empty mask raises ``MaskError``; so would a piece of fewer than 3 points, which this tracing
  does not produce.
- ``polygons_to_rle`` rasterises polygons back to RLE exactly as pycocotools does for COCO
  ``segmentation`` polygons, so a round trip is what a COCO reader sees.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MIN_POLYGON_POINTS",
    "MaskError",
    "box_polygon",
    "check_rle",
    "decode_rle",
    "encode_mask",
    "join_pieces",
    "mask_area",
    "mask_bbox_xywh",
    "polygons_to_rle",
    "rle_to_polygons",
    "yolo_segment_row",
]

MIN_POLYGON_POINTS = 3  # fewer points enclose no area

Polygon = npt.NDArray[np.float64]  # (k, 2) x, y in pixels


def _coco() -> Any:
    # Imported on first use: labeler.export.dataset imports this module, and the device's base
    # install (no pycocotools) imports the dataset module through the CLI without any mask.
    from pycocotools import mask

    return mask


class MaskError(ValueError):
    """A mask that cannot become a polygon, or an RLE that is not the contract's shape."""


def encode_mask(mask: npt.ArrayLike) -> dict[str, Any]:
    """The contract's RLE of a ``(height, width)`` boolean or 0/1 array."""
    array = np.asfortranarray(np.asarray(mask).astype(np.uint8))
    if array.ndim != 2:
        raise MaskError(f"a mask must be 2-D (height, width), got shape {array.shape}")
    rle = _coco().encode(array)
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def check_rle(rle: Any, image_wh: tuple[int, int] | None = None) -> dict[str, Any]:
    """``rle`` as pycocotools takes it (``counts`` as bytes); MaskError naming what is wrong."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        raise MaskError(
            f'a mask must be {{"size": [height, width], "counts": str}}, got {rle!r:.80}'
        )
    size = rle["size"]
    if (
        not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise MaskError(f"mask size must be [height, width] in pixels, got {size!r}")
    if image_wh is not None and (size[1], size[0]) != tuple(image_wh):
        raise MaskError(
            f"mask size is {size[1]}x{size[0]} (width x height) but the image is "
            f"{image_wh[0]}x{image_wh[1]}; masks are in original-image pixels"
        )
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise MaskError("mask counts must be a compressed RLE string (pycocotools' mask.encode)")
    return {"size": [int(size[0]), int(size[1])], "counts": counts}


def decode_rle(rle: Any) -> npt.NDArray[np.uint8]:
    """The ``(height, width)`` 0/1 array of an RLE."""
    return np.asarray(_coco().decode(check_rle(rle)), dtype=np.uint8)


def mask_area(rle: Any) -> int:
    """Mask pixels, counted by pycocotools."""
    return int(_coco().area(check_rle(rle)))


def mask_bbox_xywh(rle: Any) -> list[float]:
    """The mask's tight COCO box ``[x, y, w, h]`` in pixels, from pycocotools."""
    return [float(v) for v in _coco().toBbox(check_rle(rle))]


def rle_to_polygons(rle: Any) -> list[Polygon]:
    """Outer outlines of the mask's pieces, largest first, each ``(k, 2)`` pixels with k >= 3.

    MaskError when the mask is empty or no piece has 3 points.
    """
    import cv2  # imported only where outlines are traced

    mask = decode_rle(rle)
    if not mask.any():
        raise MaskError("the mask is empty (no pixel set)")
    # Traced on the mask doubled in size, an outline point u maps back to (u + 0.5) / 2: a quarter
    # pixel inside the mask's edge. Traced at full size, outlines run through the centres of the
    # edge pixels and pycocotools rasterises them half a pixel short on every side (IoU 0.87 on a
    # 16x30 px ellipse, against 1.0 this way).
    # Only the mask's box is doubled (a 1280x720 frame: 5 ms, against 50 ms for all of it).
    x, y, w, h = (int(v) for v in mask_bbox_xywh(rle))
    doubled = mask[y : y + h, x : x + w].repeat(2, axis=0).repeat(2, axis=1)
    contours, _ = cv2.findContours(doubled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = [
        (np.asarray(c, dtype=np.float64).reshape(-1, 2) + 0.5) / 2 + (x, y)
        for c in contours
        if len(c) >= MIN_POLYGON_POINTS
    ]
    if not polygons:
        raise MaskError(
            f"the mask has no piece with {MIN_POLYGON_POINTS} or more outline points "
            f"({int(mask.sum())} pixels in lines or dots)"
        )
    polygons.sort(key=lambda p: -abs(_shoelace(p)))
    return polygons


def _shoelace(polygon: Polygon) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return float(0.5 * (np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygons_to_rle(polygons: Sequence[npt.ArrayLike], image_wh: tuple[int, int]) -> dict[str, Any]:
    """The contract's RLE of polygons (pixels), rasterised as pycocotools reads COCO polygons."""
    width, height = image_wh
    flat = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in polygons]
    rle = _coco().merge(_coco().frPyObjects(flat, height, width))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def box_polygon(xyxy: Sequence[float]) -> Polygon:
    """The four corners of a pixel box, clockwise from top-left."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)


def join_pieces(polygons: Sequence[Polygon]) -> Polygon:
    """One polygon from several pieces, joined as Ultralytics joins a multi-piece COCO mask.

    Ultralytics' ``merge_multi_segment`` links the pieces by thin two-way bridges between their
    closest points (what ``ultralytics.data.converter.convert_coco`` does), so a YOLO-seg row of a
    mask in pieces rasterises as its pieces.
    """
    if len(polygons) == 1:
        return np.asarray(polygons[0], dtype=np.float64).reshape(-1, 2)
    try:
        from ultralytics.data.converter import merge_multi_segment
    except ImportError as exc:
        raise MaskError(
            "joining a mask in several pieces into one YOLO polygon uses Ultralytics; "
            "pip install 'promptlabel[train]'"
        ) from exc
    pieces = merge_multi_segment([np.asarray(p).reshape(-1).tolist() for p in polygons])
    return np.concatenate(pieces, axis=0).astype(np.float64).reshape(-1, 2)


def yolo_segment_row(class_id: int, polygon: Polygon, image_wh: tuple[int, int]) -> str:
    """``class x1 y1 x2 y2 ...`` normalised to the image, 6 decimals, clipped to [0, 1]."""
    width, height = image_wh
    normalised = np.asarray(polygon, dtype=np.float64).reshape(-1, 2) / (width, height)
    coords = " ".join(f"{v:.6f}" for v in normalised.clip(0.0, 1.0).reshape(-1))
    return f"{int(class_id)} {coords}\n"
