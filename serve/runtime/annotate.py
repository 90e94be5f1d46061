"""Drawing detections on an image for people to look at (``predict --save-annotated``)."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from labeler.core.detections import Detections

__all__ = ["draw_detections"]

# Distinct, readable colours (Tableau 10); class i gets colour i mod 10.
_PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def draw_detections(
    image: Image.Image, detections: Detections, names: Sequence[str]
) -> Image.Image:
    """A copy of ``image`` with each box outlined and labelled ``name score``."""
    canvas = image.convert("RGB")
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
