"""What the verifier shows the model: a padded, upscaled crop of one box, or numbered boxes.

Crops keep some context around the box (a person's glasses are judged better with the head
around them) and are upscaled so that small boxes reach the resolution VLM encoders expect.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "CropOptions",
    "MarksOptions",
    "crop_with_context",
    "draw_marks",
    "encode_jpeg_data_url",
]


@dataclass(frozen=True)
class CropOptions:
    """How a box becomes the image the verifier sees."""

    context: float = 0.25  # padding on each side, as a fraction of the box's width / height
    min_short_side_px: int = 336  # upscale until the short side reaches this
    max_long_side_px: int = 1024  # but never beyond this on the long side
    min_box_px: float = 1.0  # degenerate boxes are widened to this before padding


@dataclass(frozen=True)
class MarksOptions:
    """How numbered boxes are drawn on a full image."""

    min_short_side_px: int = 512  # small images are upscaled so labels stay readable
    max_long_side_px: int = 1536  # large ones are shrunk; API models downscale anyway


# Distinct, saturated colours that read on most photos; labels get black or white text.
_PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)


def _check_box(xyxy: Sequence[float] | npt.NDArray[np.floating]) -> tuple[float, ...]:
    box = tuple(float(v) for v in np.asarray(xyxy, dtype=np.float64).reshape(-1))
    if len(box) != 4 or not all(math.isfinite(v) for v in box):
        raise ValueError(f"box must be 4 finite numbers (x1, y1, x2, y2), got {box}")
    return box


def crop_with_context(
    image: Image.Image,
    xyxy: Sequence[float] | npt.NDArray[np.floating],
    options: CropOptions = CropOptions(),
) -> Image.Image:
    """The box plus ``context`` padding on each side, clipped to the image, as an RGB crop.

    The crop is upscaled so its short side is at least ``min_short_side_px`` without its long
    side passing ``max_long_side_px``; it is never downscaled unless the long side is over that.
    Raises ValueError when the box is not finite or does not overlap the image.
    """
    x1, y1, x2, y2 = _check_box(xyxy)
    width, height = image.size
    x1, x2 = min(x1, x2), max(x1, x2)
    y1, y2 = min(y1, y2), max(y1, y2)
    box_w = max(x2 - x1, options.min_box_px)
    box_h = max(y2 - y1, options.min_box_px)
    center_x, center_y = (x1 + x2) / 2, (y1 + y2) / 2
    half_w = box_w * (0.5 + options.context)
    half_h = box_h * (0.5 + options.context)
    left = max(0, math.floor(center_x - half_w))
    top = max(0, math.floor(center_y - half_h))
    right = min(width, math.ceil(center_x + half_w))
    bottom = min(height, math.ceil(center_y + half_h))
    if right <= left or bottom <= top:
        raise ValueError(f"box {[x1, y1, x2, y2]} does not overlap the {width}x{height} image")
    crop = image.crop((left, top, right, bottom))
    crop = crop.convert("RGB") if crop.mode != "RGB" else crop
    crop_w, crop_h = crop.size
    scale = max(1.0, options.min_short_side_px / min(crop_w, crop_h))
    scale = min(scale, options.max_long_side_px / max(crop_w, crop_h))
    if abs(scale - 1.0) > 1e-3:
        size = (max(1, round(crop_w * scale)), max(1, round(crop_h * scale)))
        crop = crop.resize(size, Image.Resampling.BICUBIC)
    return crop


def encode_jpeg_data_url(image: Image.Image, *, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` for ``image`` (converted to RGB)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def draw_marks(
    image: Image.Image,
    xyxy: npt.NDArray[np.floating] | Sequence[Sequence[float]],
    labels: Sequence[str],
    options: MarksOptions = MarksOptions(),
) -> Image.Image:
    """A resized RGB copy of ``image`` with each box outlined and tagged with its label.

    Labels sit on a filled tag at the box's top-left corner (inside the image), in a font sized
    to the image so that "12" is readable after the model's own downscaling.
    """
    boxes = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    width, height = image.size
    scale = max(1.0, options.min_short_side_px / max(1, min(width, height)))
    scale = min(scale, options.max_long_side_px / max(1, max(width, height)))
    canvas = image.convert("RGB")
    if abs(scale - 1.0) > 1e-3:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = canvas.resize(size, Image.Resampling.BICUBIC)
    else:
        canvas = canvas.copy()
    canvas_w, canvas_h = canvas.size
    draw = ImageDraw.Draw(canvas)
    line_px = max(2, round(min(canvas_w, canvas_h) / 200))
    font_px = max(14, round(min(canvas_w, canvas_h) / 28))
    font = ImageFont.load_default(size=font_px)
    for index, (box, label) in enumerate(zip(boxes * scale, labels, strict=True)):
        if not np.all(np.isfinite(box)):
            continue
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = sorted((min(max(x1, 0), canvas_w - 1), min(max(x2, 0), canvas_w - 1)))
        y1, y2 = sorted((min(max(y1, 0), canvas_h - 1), min(max(y2, 0), canvas_h - 1)))
        color = _PALETTE[index % len(_PALETTE)]
        draw.rectangle((x1, y1, x2, y2), outline=color, width=line_px)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        pad = max(2, font_px // 5)
        tag_w, tag_h = right - left + 2 * pad, bottom - top + 2 * pad
        tag_x = min(max(0.0, x1), canvas_w - tag_w)
        # Above the box when there is room, else just inside its top edge.
        tag_y = y1 - tag_h if y1 - tag_h >= 0 else min(y1, canvas_h - tag_h)
        draw.rectangle((tag_x, tag_y, tag_x + tag_w, tag_y + tag_h), fill=color)
        draw.text(
            (tag_x + pad - left, tag_y + pad - top), label, fill=_text_color(color), font=font
        )
    return canvas
