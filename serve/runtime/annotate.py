"""Drawing detections on an image for people to look at (``predict --save-annotated``)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from labeler.core.detections import Detections

__all__ = ["draw_detections"]

# Distinct, readable colours (Tableau 10); class i gets colour i mod 10.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


_MASK_ALPHA = 0.4


def _eroded(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """Pixels whose four neighbours are all in ``mask`` (the image border counts as outside)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = (
        mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    )
    return inner


def draw_detections(
    image: Image.Image, detections: Detections, names: Sequence[str]
) -> Image.Image:
    """A copy of ``image`` with each box outlined and labelled ``name score``.

    Segmentation detections (``data["mask"]``, boolean ``(n, h, w)``) also get their mask drawn:
    a translucent fill in the class colour and a 1-pixel outline.
    """
    canvas = image.convert("RGB")
    masks = detections.data.get("mask")
    if masks is not None and len(masks):
        pixels = np.asarray(canvas).astype(np.float32)
        for mask, class_id in zip(masks, detections.class_id, strict=True):
            tint = np.array(_PALETTE[int(class_id) % len(_PALETTE)], np.float32)
            pixels[mask] = pixels[mask] * (1 - _MASK_ALPHA) + tint * _MASK_ALPHA
            edge = mask & ~_eroded(mask)
            pixels[edge] = tint
        canvas = Image.fromarray(pixels.round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    line_px = max(2, round(min(canvas.size) / 300))
    font = ImageFont.load_default(size=max(12, round(min(canvas.size) / 40)))
    for xyxy, class_id, score in detections:
        colour = _PALETTE[class_id % len(_PALETTE)]
        x1, y1, x2, y2 = (float(v) for v in xyxy)
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line_px)
        name = names[class_id] if 0 <= class_id < len(names) else str(class_id)
        text = f"{name} {score:.2f}"
        left, top, right, bottom = draw.textbbox((x1, y1), text, font=font)
        label_top = max(0.0, y1 - (bottom - top) - 2)
        draw.rectangle(
            (x1, label_top, x1 + right - left + 4, label_top + bottom - top + 2), fill=colour
        )
        draw.text((x1 + 2, label_top - (top - y1)), text, fill=(255, 255, 255), font=font)
    return canvas
