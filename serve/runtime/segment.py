"""Segmentation students on devices: prototype masks decoded with numpy alone.

An Ultralytics ``-seg`` export has two outputs: ``(batch, 4 + nc + nm, anchors)`` rows (boxes,
class scores and ``nm`` mask coefficients per anchor) and ``(batch, nm, mh, mw)`` prototypes.
``instance_masks`` turns the boxes NMS kept into boolean masks in original-image pixels the way
``SegmentationPredictor`` does (``retina_masks=False``) followed by ``ops.scale_masks``:

1. ``coeffs @ protos``: mask logits at prototype resolution;
2. bilinear upsampling to the letterboxed input (``F.interpolate(..., mode="bilinear")``,
   ``align_corners=False``), ``logit > 0`` (that is, ``sigmoid > 0.5``), cropped to the box
   (``crop_mask``: columns ``x1 <= c < x2``, rows ``y1 <= r < y2``);
3. the letterbox content region bilinearly scaled to the original image, ``> 0.5``.

Every step only touches the pixels around its box (the rest is zero by construction), so a
mask costs its box's area, not the image's. ``mask_to_rle`` writes a mask as COCO's uncompressed
RLE ``{"size": [h, w], "counts": [ints]}``, which ``pycocotools.mask.frPyObjects`` reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from labeler.core.detections import Detections, as_records

__all__ = ["bilinear_weights", "instance_masks", "mask_to_rle", "records_with_masks", "rle_to_mask"]


def bilinear_weights(source: int, target: int) -> npt.NDArray[np.float32]:
    """``(target, source)`` matrix of torch's bilinear interpolation (``align_corners=False``).

    Output ``d`` samples ``(d + 0.5) * source / target - 0.5`` (negative centres clamp to 0, the
    last pixel repeats), so ``weights @ column`` resizes a column as ``F.interpolate`` does.
    """
    scale = np.float32(source / target)
    centre = (np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    centre = np.maximum(centre, np.float32(0))
    first = np.minimum(np.floor(centre).astype(np.intp), source - 1)
    second = np.minimum(first + 1, source - 1)
    fraction = centre - first.astype(np.float32)
    weights = np.zeros((target, source), np.float32)
    rows = np.arange(target)
    np.add.at(weights, (rows, first), np.float32(1) - fraction)
    np.add.at(weights, (rows, second), fraction)
    return weights


def _span(low: float, high: float, limit: int) -> tuple[int, int]:
    return max(math.floor(low), 0), min(math.ceil(high), limit)


def instance_masks(
    protos: npt.NDArray[np.floating[Any]],
    coeffs: npt.NDArray[np.floating[Any]],
    xyxy_input: npt.NDArray[np.float32],
    *,
    input_hw: tuple[int, int],
    resized_wh: tuple[int, int],
    left: int,
    top: int,
    image_wh: tuple[int, int],
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """``(n, image_h, image_w)`` masks of ``n`` boxes (``xyxy_input`` in model-input pixels).

    ``protos`` is one image's ``(nm, mh, mw)`` prototypes, ``coeffs`` the ``(n, nm)`` mask
    coefficients of the kept boxes; the letterbox is ``resized_wh`` at ``(left, top)`` inside
    ``input_hw``. Also returns which masks are non-empty at input resolution (Ultralytics drops
    the boxes whose mask is empty there).
    """
    count = len(coeffs)
    image_w, image_h = image_wh
    masks = np.zeros((count, image_h, image_w), np.bool_)
    present = np.zeros(count, np.bool_)
    if count == 0:
        return masks, present
    nm, proto_h, proto_w = protos.shape
    input_h, input_w = input_hw
    flat = protos.reshape(nm, -1).astype(np.float32, copy=False)
    logits = (np.asarray(coeffs, np.float32) @ flat).reshape(count, proto_h, proto_w)
    up_y = bilinear_weights(proto_h, input_h)  # (input_h, proto_h)
    up_x = bilinear_weights(proto_w, input_w)  # (input_w, proto_w)
    resized_w, resized_h = resized_wh
    # The letterbox content back to the original image, as ``scale_masks`` (bilinear, > 0.5).
    down_y = bilinear_weights(resized_h, image_h)  # (image_h, resized_h)
    down_x = bilinear_weights(resized_w, image_w)  # (image_w, resized_w)
    gain_x, gain_y = resized_w / image_w, resized_h / image_h
    margin_x, margin_y = math.ceil(1 / gain_x) + 2, math.ceil(1 / gain_y) + 2
    for index in range(count):
        x1, y1, x2, y2 = (float(v) for v in xyxy_input[index])
        # crop_mask keeps columns c with x1 <= c < x2 (and rows alike) of the input-size mask.
        col0, col1 = _span(x1, x2, input_w)
        row0, row1 = _span(y1, y2, input_h)
        if col1 <= col0 or row1 <= row0:
            continue
        columns = np.arange(col0, col1, dtype=np.float32)
        rows = np.arange(row0, row1, dtype=np.float32)
        inside_x = (columns >= np.float32(x1)) & (columns < np.float32(x2))
        inside_y = (rows >= np.float32(y1)) & (rows < np.float32(y2))
        window = up_y[row0:row1] @ logits[index] @ up_x[col0:col1].T
        binary = (window > 0) & inside_y[:, None] & inside_x[None, :]
        present[index] = binary.any()
        # Place it in the letterbox content's coordinates (what scale_masks crops).
        content = np.zeros((row1 - row0, col1 - col0), np.float32)
        content[binary] = 1
        content_row0, content_col0 = row0 - top, col0 - left
        # Original-image rows and columns whose bilinear taps can reach this window.
        out_row0, out_row1 = _span(
            content_row0 / gain_y - margin_y,
            (content_row0 + content.shape[0]) / gain_y + margin_y,
            image_h,
        )
        out_col0, out_col1 = _span(
            content_col0 / gain_x - margin_x,
            (content_col0 + content.shape[1]) / gain_x + margin_x,
            image_w,
        )
        if out_row1 <= out_row0 or out_col1 <= out_col0:
            continue
        # Taps outside the content (padding) or outside the window are zero: drop those columns.
        src_r0, src_r1 = max(content_row0, 0), min(content_row0 + content.shape[0], resized_h)
        src_c0, src_c1 = max(content_col0, 0), min(content_col0 + content.shape[1], resized_w)
        if src_r1 <= src_r0 or src_c1 <= src_c0:
            continue
        part = content[
            src_r0 - content_row0 : src_r1 - content_row0,
            src_c0 - content_col0 : src_c1 - content_col0,
        ]
        scaled = (
            down_y[out_row0:out_row1, src_r0:src_r1]
            @ part
            @ down_x[out_col0:out_col1, src_c0:src_c1].T
        )
        masks[index, out_row0:out_row1, out_col0:out_col1] = scaled > np.float32(0.5)
    return masks, present


def mask_to_rle(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """COCO's uncompressed RLE of an ``(h, w)`` mask: ``{"size": [h, w], "counts": [ints]}``.

    Runs over the column-major (Fortran) pixel order, starting with a run of zeros (maybe 0).
    """
    height, width = mask.shape
    flat = np.asarray(mask, np.bool_).T.reshape(-1)
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(height), int(width)], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict[str, Any]) -> npt.NDArray[np.bool_]:
    """The ``(h, w)`` mask of an uncompressed RLE (the inverse of ``mask_to_rle``)."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], np.int64)
    if counts.sum() != height * width:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {height * width}")
    values = np.arange(len(counts)) % 2 == 1
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T.copy()


def records_with_masks(detections: Detections, names: Sequence[str]) -> list[dict[str, Any]]:
    """``as_records`` plus, for a segmentation model, each box's ``"mask"`` as COCO RLE.

    Detection models' records are unchanged (no ``"mask"`` key).
    """
    records = as_records(detections, names)
    masks = detections.data.get("mask")
    if masks is not None:
        for record, mask in zip(records, masks, strict=True):
            record["mask"] = mask_to_rle(mask)
    return records
