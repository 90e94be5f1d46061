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
mask costs its box's area, not the image's: step 1 reads only the prototype pixels the box's
bilinear taps reach, and steps 2 and 3 resize by gathering each output pixel's two taps per axis
(``_Taps``) rather than multiplying by mostly-zero interpolation matrices; step 3 on a 0/1
mask is a plain byte gather when one tap outweighs the rest at every pixel (any 2x enlargement,
such as 1280x720 seen at 640). Only the masks that are kept get an image-size array.
``mask_to_rle`` writes a mask as COCO's uncompressed RLE ``{"size": [h, w], "counts": [ints]}``,
which ``pycocotools.mask.frPyObjects`` reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Taps:
    """Bilinear taps of each target pixel: ``(1 - fraction) * x[first] + fraction * x[second]``.

    The same numbers as ``bilinear_weights`` (two non-zero weights per row), kept as indices so a
    window is resized by two gathers instead of a product with a mostly-zero matrix.
    """

    first: npt.NDArray[np.intp]
    second: npt.NDArray[np.intp]
    fraction: npt.NDArray[np.float32]

    @classmethod
    def of(cls, source: int, target: int) -> _Taps:
        scale = np.float32(source / target)
        centre = (np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
        centre = np.maximum(centre, np.float32(0))
        first = np.minimum(np.floor(centre).astype(np.intp), source - 1)
        second = np.minimum(first + 1, source - 1)
        return cls(first, second, (centre - first.astype(np.float32)).astype(np.float32))


def _resample(
    values: npt.NDArray[np.float32], taps: _Taps, targets: slice, source_start: int, axis: int
) -> npt.NDArray[np.float32]:
    """``values`` (source pixels ``source_start ...`` along ``axis``) at target pixels ``targets``.

    Taps that fall outside ``values`` read zero: the callers pass windows outside of which the
    signal is zero.
    """
    size = values.shape[axis]
    first = taps.first[targets] - source_start
    second = taps.second[targets] - source_start
    fraction = taps.fraction[targets]
    zero = np.float32(0)
    near_weight = np.where((first >= 0) & (first < size), np.float32(1) - fraction, zero)
    far_weight = np.where((second >= 0) & (second < size), fraction, zero)
    shape = [-1 if a == axis else 1 for a in range(values.ndim)]
    near = np.take(values, np.clip(first, 0, size - 1), axis=axis)
    near *= near_weight.reshape(shape)
    far = np.take(values, np.clip(second, 0, size - 1), axis=axis)
    far *= far_weight.reshape(shape)
    near += far
    return near


def _binary_resized(
    mask: npt.NDArray[np.bool_],
    y_taps: _Taps,
    rows: slice,
    row_start: int,
    x_taps: _Taps,
    cols: slice,
    col_start: int,
) -> npt.NDArray[np.bool_]:
    """``bilinear(mask) > 0.5`` at target ``rows`` x ``cols`` of a 0/1 ``mask`` window.

    A target pixel's value is a weighted sum of 0s and 1s: when one tap weighs more than 0.5,
    the pixel is that tap's value whatever the others are. With a product of the heavier tap
    per axis above 0.5 for every pixel (every 2x enlargement: 0.75 x 0.75), the result is a
    gather of bytes; otherwise the bilinear values are computed.
    """
    fraction_y, fraction_x = y_taps.fraction[rows], x_taps.fraction[cols]
    heaviest_y = np.maximum(fraction_y, np.float32(1) - fraction_y)
    heaviest_x = np.maximum(fraction_x, np.float32(1) - fraction_x)
    # The margin keeps float rounding of products near 0.5 out of the decision.
    if float(heaviest_y.min()) * float(heaviest_x.min()) <= 0.5 + 1e-4:
        values = mask.astype(np.float32)
        scaled = _resample(values, x_taps, cols, col_start, axis=1)
        return _resample(scaled, y_taps, rows, row_start, axis=0) > np.float32(0.5)
    # Taps outside the window read the zero border.
    padded = np.pad(mask, 1)
    tap_y = np.where(fraction_y > 0.5, y_taps.second[rows], y_taps.first[rows]) - row_start + 1
    tap_x = np.where(fraction_x > 0.5, x_taps.second[cols], x_taps.first[cols]) - col_start + 1
    tap_y = np.clip(tap_y, 0, padded.shape[0] - 1)
    tap_x = np.clip(tap_x, 0, padded.shape[1] - 1)
    result: npt.NDArray[np.bool_] = padded[:, tap_x][tap_y]
    return result


def _reach(taps: _Taps, source_start: int, source_stop: int) -> slice:
    """The target pixels with a tap inside source pixels ``[source_start, source_stop)``.

    Taps are non-decreasing in the target, so these form one run.
    """
    start = int(np.searchsorted(taps.second, source_start, side="left"))
    stop = int(np.searchsorted(taps.first, source_stop, side="left"))
    return slice(start, max(start, stop))


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
    """Masks of ``n`` boxes (``xyxy_input`` in model-input pixels) in original-image pixels.

    ``protos`` is one image's ``(nm, mh, mw)`` prototypes, ``coeffs`` the ``(n, nm)`` mask
    coefficients of the kept boxes; the letterbox is ``resized_wh`` at ``(left, top)`` inside
    ``input_hw``. Returns ``present``, which masks are non-empty at input resolution (Ultralytics
    drops the boxes whose mask is empty there), and the ``(present.sum(), image_h, image_w)``
    masks of those boxes only, so that no array is allocated for the dropped ones.
    """
    count = len(coeffs)
    image_w, image_h = image_wh
    present = np.zeros(count, np.bool_)
    if count == 0:
        return np.zeros((0, image_h, image_w), np.bool_), present
    _, proto_h, proto_w = protos.shape
    input_h, input_w = input_hw
    protos = np.ascontiguousarray(protos, np.float32)
    coeffs = np.asarray(coeffs, np.float32)
    up_y, up_x = _Taps.of(proto_h, input_h), _Taps.of(proto_w, input_w)
    resized_w, resized_h = resized_wh
    # The letterbox content back to the original image, as ``scale_masks`` (bilinear, > 0.5).
    down_y, down_x = _Taps.of(resized_h, image_h), _Taps.of(resized_w, image_w)
    # (instance, first row, first column, mask window) of each mask that survives both steps.
    windows: list[tuple[int, int, int, npt.NDArray[np.bool_]]] = []
    for index in range(count):
        x1, y1, x2, y2 = (float(v) for v in xyxy_input[index])
        # crop_mask keeps columns c with x1 <= c < x2 (and rows alike) of the input-size mask.
        col0, col1 = _span(x1, x2, input_w)
        row0, row1 = _span(y1, y2, input_h)
        if col1 <= col0 or row1 <= row0:
            continue
        # Only the logits the window's taps read: a box costs its own area. einsum, not a BLAS
        # product: waking BLAS threads while onnxruntime's spin costs more than this sum.
        proto_rows = slice(int(up_y.first[row0]), int(up_y.second[row1 - 1]) + 1)
        proto_cols = slice(int(up_x.first[col0]), int(up_x.second[col1 - 1]) + 1)
        window_logits = np.einsum("chw,c->hw", protos[:, proto_rows, proto_cols], coeffs[index])
        # Columns first, on the smaller array: the gather along rows (whole-row copies) is the
        # cheaper one, so it goes on the larger.
        logits = _resample(window_logits, up_x, slice(col0, col1), proto_cols.start, axis=1)
        logits = _resample(logits, up_y, slice(row0, row1), proto_rows.start, axis=0)
        columns = np.arange(col0, col1, dtype=np.float32)
        rows = np.arange(row0, row1, dtype=np.float32)
        inside_x = (columns >= np.float32(x1)) & (columns < np.float32(x2))
        inside_y = (rows >= np.float32(y1)) & (rows < np.float32(y2))
        binary = (logits > 0) & inside_y[:, None] & inside_x[None, :]
        present[index] = binary.any()
        if not present[index]:
            continue
        # The window in the letterbox content's coordinates (what scale_masks crops); padding
        # and everything outside the window are zero.
        content_row0, content_col0 = row0 - top, col0 - left
        src_r0 = max(content_row0, 0)
        src_r1 = min(content_row0 + binary.shape[0], resized_h)
        src_c0 = max(content_col0, 0)
        src_c1 = min(content_col0 + binary.shape[1], resized_w)
        if src_r1 <= src_r0 or src_c1 <= src_c0:
            continue
        part = binary[
            src_r0 - content_row0 : src_r1 - content_row0,
            src_c0 - content_col0 : src_c1 - content_col0,
        ]
        out_rows, out_cols = _reach(down_y, src_r0, src_r1), _reach(down_x, src_c0, src_c1)
        if out_rows.stop <= out_rows.start or out_cols.stop <= out_cols.start:
            continue
        scaled = _binary_resized(part, down_y, out_rows, src_r0, down_x, out_cols, src_c0)
        windows.append((index, out_rows.start, out_cols.start, scaled))
    kept = np.flatnonzero(present)
    slot = {int(index): position for position, index in enumerate(kept)}
    # np.zeros maps untouched pages lazily: only the windows are written.
    masks = np.zeros((len(kept), image_h, image_w), np.bool_)
    for index, row, col, window in windows:
        masks[slot[index], row : row + window.shape[0], col : col + window.shape[1]] = window
    return masks, present


def mask_to_rle(mask: npt.NDArray[np.bool_]) -> dict[str, Any]:
    """COCO's uncompressed RLE of an ``(h, w)`` mask: ``{"size": [h, w], "counts": [ints]}``.

    Runs over the column-major (Fortran) pixel order, starting with a run of zeros (maybe 0).
    """
    height, width = mask.shape
    mask = np.asarray(mask, np.bool_)
    total = height * width
    columns = np.flatnonzero(mask.any(axis=0))
    if len(columns) == 0:
        return {"size": [int(height), int(width)], "counts": [total]}
    # Only the band of columns holding the mask is scanned; the columns either side are zeros.
    first, last = int(columns[0]), int(columns[-1]) + 1
    band = np.zeros(height * (last - first) + 2, np.bool_)
    band[1:-1] = mask[:, first:last].T.reshape(-1)
    # Pixel indices (column-major) where the value changes; 0 means the first pixel is set.
    changes = np.flatnonzero(band[1:] != band[:-1]) + first * height
    bounds = np.concatenate([[0], changes[changes < total], [total]])
    counts = np.diff(bounds)
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
