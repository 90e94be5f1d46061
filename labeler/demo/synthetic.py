"""Synthetic images with exactly known boxes: demo samples and small training datasets.

The demo ships no photos; it makes them here. Each image is a few flat-coloured shapes (circles,
squares, triangles) on a textured background (noise, a gradient or stripes). Shapes never overlap,
and every box is measured from the pixels actually drawn, so a box is exact: ``xyxy`` is the pixel
extent of the shape, with exclusive right and bottom edges (a shape covering columns 10..19 has
``x1=10, x2=20``).

``domain="shifted"`` draws another domain with the same classes, for measuring how a detector
trained on the default one copes with a shift: other backgrounds (checkerboards, soft colour
blobs) and other object variants (outlined, hollow shapes, a little smaller).

Everything is a pure function of the seed (``numpy.random.Generator``), so the same call writes the
same bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageOps

from labeler.core.detections import Detections
from labeler.core.images import sha256_file
from labeler.export.dataset import ExportItem

__all__ = [
    "DOMAINS",
    "SHAPE_CLASSES",
    "make_shapes_image",
    "write_sample_images",
    "write_shapes_items",
]

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
_BACKGROUNDS = ("noise", "gradient", "stripes")
# Fraction of the shorter image side a shape's side may take; small enough that several fit.
_SIDE_FRACTION = (0.12, 0.32)
_PLACEMENT_TRIES = 50
_EXIF_ORIENTATION_TAG = 0x0112
DOMAINS: tuple[str, ...] = ("default", "shifted")
_SHIFTED_BACKGROUNDS = ("checker", "blobs")
_SHIFTED_SIDE_FRACTION = (0.10, 0.26)
# Outline width of a shifted-domain shape, as a fraction of its side (at least 2 pixels).
_SHIFTED_OUTLINE_FRACTION = (0.12, 0.22)


def _shifted_background(
    rng: np.random.Generator, image_wh: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """An ``(h, w, 3)`` uint8 texture of the shifted domain: a checkerboard or soft blobs."""
    width, height = image_wh
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = _SHIFTED_BACKGROUNDS[int(rng.integers(len(_SHIFTED_BACKGROUNDS)))]
    if kind == "checker":
        first, second = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        cell_px = int(rng.integers(5, 24))
        checker = ((xs // cell_px + ys // cell_px) % 2).astype(np.float32)
        base = first + checker[..., None] * (second - first)
    else:
        base = np.broadcast_to(rng.uniform(0, 255, size=3).astype(np.float32), (height, width, 3))
        for _ in range(int(rng.integers(3, 7))):
            centre_x, centre_y = rng.uniform(0, width), rng.uniform(0, height)
            radius = rng.uniform(0.1, 0.4) * min(width, height)
            weight = np.exp(-((xs - centre_x) ** 2 + (ys - centre_y) ** 2) / (2 * radius**2))
            colour = rng.uniform(0, 255, size=3).astype(np.float32)
            base = base + weight[..., None] * (colour - base)
    grain = rng.normal(0, 8, size=(height, width, 1)).astype(np.float32)
    textured: npt.NDArray[np.uint8] = np.clip(base + grain, 0, 255).astype(np.uint8)
    return textured


def _background(rng: np.random.Generator, image_wh: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """An ``(h, w, 3)`` uint8 texture: noise, a two-colour gradient or stripes, plus grain."""
    width, height = image_wh
    kind = _BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]
    if kind == "noise":
        base = rng.integers(40, 216, size=(height, width, 3)).astype(np.float32)
    elif kind == "gradient":
        start, end = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = xs * np.cos(angle) + ys * np.sin(angle)
        ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
        base = start + ramp[..., None] * (end - start)
    else:
        first, second = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        period_px = int(rng.integers(6, 40))
        coordinate = np.arange(width) if rng.random() < 0.5 else np.arange(height)[:, None]
        stripe = ((coordinate // period_px) % 2).astype(np.float32)
        stripe = np.broadcast_to(stripe, (height, width))
        base = first + stripe[..., None] * (second - first)
    # Grain keeps every background from being perfectly flat, as real photos never are.
    grain = rng.normal(0, 8, size=(height, width, 1)).astype(np.float32)
    textured: npt.NDArray[np.uint8] = np.clip(base + grain, 0, 255).astype(np.uint8)
    return textured


def _shape_mask(
    kind: str, image_wh: tuple[int, int], box: tuple[int, int, int, int], outline_px: int = 0
) -> Image.Image:
    """An ``L`` mask of one shape drawn inside ``box`` (x0, y0, x1, y1 with exclusive x1, y1);
    with ``outline_px`` > 0 only its outline, that many pixels wide (a hollow shape)."""
    x0, y0, x1, y1 = box
    mask = Image.new("L", image_wh, 0)
    draw = ImageDraw.Draw(mask)
    style: dict[str, Any] = (
        {"outline": 255, "width": outline_px} if outline_px > 0 else {"fill": 255}
    )
    # Pillow's coordinates are inclusive, hence the -1 on the far edges.
    if kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), **style)
    elif kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), **style)
    elif kind == "triangle":
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], **style)
    else:
        raise ValueError(f"unknown shape {kind!r}; known shapes: {', '.join(SHAPE_CLASSES)}")
    return mask


def _overlaps(box: tuple[int, int, int, int], placed: list[tuple[int, int, int, int]]) -> bool:
    gap = 2  # pixels kept between shapes so no box touches another shape
    x0, y0, x1, y1 = box
    return any(
        x0 < px1 + gap and px0 < x1 + gap and y0 < py1 + gap and py0 < y1 + gap
        for px0, py0, px1, py1 in placed
    )


def make_shapes_image(
    rng: np.random.Generator,
    image_wh: tuple[int, int],
    n_shapes: int,
    classes: Sequence[str] = SHAPE_CLASSES,
    *,
    domain: str = "default",
) -> tuple[Image.Image, Detections]:
    """An RGB image with up to ``n_shapes`` non-overlapping shapes and their exact boxes.

    ``classes`` names the shapes to draw (each of ``circle``, ``square``, ``triangle``); a box's
    ``class_id`` indexes ``classes``. Fewer than ``n_shapes`` are drawn only when no free place is
    found (tiny images). Confidence is 1.0; ``metadata["image_wh"]`` is ``image_wh``.
    ``domain="shifted"`` draws the shifted domain (see the module docstring); the default domain's
    images are the same whether or not it is named.
    """
    width, height = image_wh
    if width < 8 or height < 8:
        raise ValueError(f"image_wh must be at least 8x8 pixels, got {width}x{height}")
    if n_shapes < 0:
        raise ValueError(f"n_shapes must be >= 0, got {n_shapes}")
    if not classes:
        raise ValueError("classes must name at least one shape")
    unknown = [name for name in classes if name not in SHAPE_CLASSES]
    if unknown:
        raise ValueError(f"unknown shapes {unknown}; known shapes: {', '.join(SHAPE_CLASSES)}")
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    shifted = domain == "shifted"

    background = _shifted_background if shifted else _background
    canvas = Image.fromarray(background(rng, image_wh), "RGB")
    short_side = min(width, height)
    side_fraction = _SHIFTED_SIDE_FRACTION if shifted else _SIDE_FRACTION
    side_lo = max(4, round(short_side * side_fraction[0]))
    side_hi = max(side_lo + 1, round(short_side * side_fraction[1]))
    placed: list[tuple[int, int, int, int]] = []
    xyxy: list[tuple[int, int, int, int]] = []
    class_ids: list[int] = []
    for _ in range(n_shapes):
        class_id = int(rng.integers(len(classes)))
        for _ in range(_PLACEMENT_TRIES):
            side_w = int(rng.integers(side_lo, min(side_hi, width) + 1))
            # Squares and circles stay square; triangles may be a little wider or taller.
            aspect = rng.uniform(0.75, 1.33) if classes[class_id] == "triangle" else 1.0
            side_h = int(np.clip(round(side_w * aspect), side_lo, height))
            x0 = int(rng.integers(0, width - side_w + 1))
            y0 = int(rng.integers(0, height - side_h + 1))
            box = (x0, y0, x0 + side_w, y0 + side_h)
            if not _overlaps(box, placed):
                break
        else:
            continue
        outline_px = 0
        if shifted:
            outline_fraction = rng.uniform(*_SHIFTED_OUTLINE_FRACTION)
            outline_px = max(2, round(min(side_w, side_h) * outline_fraction))
        mask = _shape_mask(classes[class_id], image_wh, box, outline_px)
        drawn = mask.getbbox()  # measured, so the box is exact whatever Pillow's rasteriser does
        if drawn is None:
            continue
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        canvas.paste(colour, (0, 0), mask)
        placed.append(box)
        xyxy.append(drawn)
        class_ids.append(class_id)

    detections = Detections(
        xyxy=np.asarray(xyxy, np.float32).reshape(-1, 4),
        class_id=np.asarray(class_ids, np.int64),
        confidence=np.ones(len(class_ids), np.float32),
        metadata={"image_wh": (width, height)},
    )
    return canvas, detections


# (relative path, image_wh, variant): one row per sample, cycled when more are asked for. Each
# variant exercises one loader path: EXIF rotation, grayscale, an uppercase extension, a subfolder.
_SAMPLE_SPECS: tuple[tuple[str, tuple[int, int], str], ...] = (
    ("shapes-{i:03d}.jpg", (640, 480), "jpeg"),
    ("shapes-{i:03d}.png", (512, 384), "png"),
    ("rotated-{i:03d}.jpg", (640, 480), "exif6"),
    ("gray-{i:03d}.png", (480, 360), "gray"),
    ("UPPER-{i:03d}.JPG", (640, 480), "jpeg"),
    ("nested/shapes-{i:03d}.jpg", (400, 300), "jpeg"),
    ("wide-{i:03d}.png", (800, 450), "png"),
    ("small-{i:03d}.jpg", (320, 240), "jpeg"),
)


def _save_sample(image: Image.Image, path: Path, variant: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant == "jpeg":
        image.save(path, "JPEG", quality=90)
    elif variant == "png":
        image.save(path, "PNG")
    elif variant == "gray":
        ImageOps.grayscale(image).save(path, "PNG")
    elif variant == "exif6":
        # Orientation 6 means "rotate 90 degrees clockwise to display", so store the picture
        # turned the other way: a loader that applies EXIF gets ``image`` (and its boxes) back.
        exif = Image.Exif()
        exif[_EXIF_ORIENTATION_TAG] = 6
        image.transpose(Image.Transpose.ROTATE_90).save(
            path, "JPEG", quality=90, exif=exif.tobytes()
        )
    else:
        raise ValueError(f"unknown sample variant {variant!r}")


def write_sample_images(out_dir: str | Path, n: int = 8, seed: int = 0) -> list[Path]:
    """Write ``n`` sample images below ``out_dir`` and return their paths, in writing order.

    The first eight are, in order: a JPEG, a PNG, a JPEG with EXIF orientation 6 (stored rotated,
    displayed 640x480), a grayscale PNG, a JPEG with an uppercase ``.JPG`` extension, a JPEG in the
    subfolder ``nested/``, a wide PNG and a small JPEG; more cycle through the same kinds. Same
    ``seed``, same bytes. Shapes come from ``make_shapes_image`` with the default classes.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    for i in range(n):
        name, image_wh, variant = _SAMPLE_SPECS[i % len(_SAMPLE_SPECS)]
        image, _ = make_shapes_image(rng, image_wh, n_shapes=int(rng.integers(1, 5)))
        path = out_dir / name.format(i=i)
        _save_sample(image, path, variant)
        paths.append(path)
    return paths


def write_shapes_items(
    out_dir: str | Path,
    n: int = 16,
    seed: int = 0,
    *,
    image_wh: tuple[int, int] = (128, 128),
    classes: Sequence[str] = SHAPE_CLASSES,
    max_shapes: int = 4,
) -> list[ExportItem]:
    """Write ``n`` lossless PNG shape images and return them as export items with exact boxes.

    Feed the result to ``labeler.export.dataset.export_dataset(items, classes, dataset_dir)``
    to get a small labeled dataset for training tests. An image may get zero shapes (a
    background image).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    items: list[ExportItem] = []
    for i in range(n):
        image, detections = make_shapes_image(
            rng, image_wh, n_shapes=int(rng.integers(0, max_shapes + 1)), classes=classes
        )
        path = out_dir / f"shapes-{i:04d}.png"
        image.save(path, "PNG")
        items.append(
            ExportItem(
                source_path=path,
                sha256=sha256_file(path),
                image_wh=image.size,
                detections=detections,
            )
        )
    return items
