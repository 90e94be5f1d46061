"""Export accepted boxes as a dataset that Ultralytics trains on as-is and pycocotools loads.

Layout written under ``out_dir``::

    data.yaml                                  train/val folders and class names
    images/{train,val}/<stem>-<sha256[:8]>.<ext>
    labels/{train,val}/<stem>-<sha256[:8]>.txt   YOLO rows: class_id cx cy w h, normalized
    annotations/instances_{train,val}.json     COCO

Masks (a segmentation dataset): when any box carries a mask (``detections.data["mask"]``, one COCO
RLE dict or None per box, in original-image pixels), every YOLO row is a polygon
``class_id x1 y1 x2 y2 ...`` (normalized) and every COCO annotation has a ``segmentation``: see
``labeler.export.masks``. A mask in several pieces is one YOLO polygon joined as Ultralytics joins
them, and a list of polygons in COCO (``iscrowd`` 0: in COCO, 1 marks a crowd region that
evaluation ignores, which no labeled object is); COCO ``bbox`` and ``area`` then come from the mask
(pycocotools). A box without a mask, or whose mask has no piece of 3 or more outline points, is
written as its box's four corners (logged), because Ultralytics drops every polygon of a dataset
whose rows mix boxes and polygons. Mask holes are not kept.

Conventions:

- COCO ``category_id`` is 1-based: ``category_id = class_id + 1`` (COCO's own convention; many
  tools keep 0 for "background"). YOLO class ids are 0-based indexes into ``class_names``. COCO
  image and annotation ids are 1-based, per split, in file-name order. COCO boxes are pixel
  ``[x, y, w, h]`` rounded to 0.001 px.
- Boxes are always in the frame of the image with its EXIF orientation applied. A file is copied
  byte for byte (hard-linked when the file system allows) unless it must be re-encoded: an EXIF
  orientation other than 1, a mode other than RGB, several frames, or a format outside
  JPEG/PNG/BMP/WebP. JPEG sources are re-encoded as JPEG quality 95 (no chroma subsampling),
  everything else as PNG. A JPEG with bytes after its end marker is copied without them. The
  orientation is read as ``ImageOps.exif_transpose`` (and so ``load_image``) reads it: an eXIf
  chunk, XMP ``tiff:Orientation`` or ImageMagick's ``Raw profile type exif`` text chunk all count.
- The split is a pure function of each image's content hash (``split_for``), so adding images
  never moves the others. With two or more images both splits are made non-empty: if the hashes
  put none in val, the train image whose hash is closest to the val range moves (and the other way
  round). With ``val_fraction=0`` or a single image there is no val split and ``data.yaml``'s
  ``val`` points at ``images/train`` (``instances_val.json`` is then written with no images).
- ``data.yaml`` has no ``path:`` key: Ultralytics then resolves ``train``/``val`` against the
  folder holding the YAML, so the dataset can be moved or copied as a whole.
- Images with no accepted box are kept as background images: an empty label file, no annotations.
- Only ``images/``, ``labels/``, ``annotations/`` and ``data.yaml`` are managed. A new export is
  built beside them and then swapped in, so files of a previous export never linger, and anything
  else in ``out_dir`` (``report.json``, a ``.promptlabel/`` workspace) is left alone. A managed
  folder that holds files but was not written by this exporter is never deleted (InputError).
- Same input, same bytes: file names, ids, JSON key order and re-encoded pixels are deterministic.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image

from labeler.core.detections import Detections
from labeler.core.exceptions import ImageError, InputError
from labeler.core.images import load_image
from labeler.export import masks as mask_ops

__all__ = [
    "DEFAULT_VAL_FRACTION",
    "MIN_BOX_SIDE_PX",
    "ExportItem",
    "ExportSummary",
    "export_dataset",
    "split_for",
    "unwritable_reasons",
    "writable_boxes",
]

logger = logging.getLogger(__name__)

Split = Literal["train", "val"]
SPLITS: tuple[Split, Split] = ("train", "val")
DEFAULT_VAL_FRACTION = 0.2  # share of images in the val split
# Boxes narrower or shorter than this after clipping are dropped (``writable_boxes``): they carry
# no trainable signal and would round to zero width in a 6-decimal YOLO row of a large image.
MIN_BOX_SIDE_PX = 1.0
MANAGED = ("images", "labels", "annotations", "data.yaml")
_MARKER = ".promptlabel-export"
_MARKER_TEXT = "Written by promptlabel's exporter; this folder is replaced on every export.\n"
_YAML_HEADER = (
    "# Written by promptlabel's exporter; replaced on every export.\n"
    "# No 'path:' key: Ultralytics resolves train/val against this file's folder.\n"
)
_STAGING_PREFIX = ".promptlabel-export-staging-"
_COPYABLE_FORMATS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp"}
_JPEG_FORMATS = {"JPEG", "MPO"}
_JPEG_QUALITY = 95
_EXIF_ORIENTATION_TAG = 0x0112
# The orientations exif_transpose acts on; any other value (9, 0, garbage) leaves the image as is.
_TRANSPOSED_ORIENTATIONS = frozenset(range(2, 9))
# A PNG keeps metadata only in these chunks; without any of them it has no orientation to read.
_PNG_METADATA_CHUNKS = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")
_MAX_STEM_CHARS = 80
# File systems cap a name at 255 bytes (ext4, APFS: UTF-8; NTFS: 255 UTF-16 units, never more
# than the UTF-8 bytes). The stem leaves room for "-<sha256[:8]>", a "-<n>" counter and ".webp".
_MAX_STEM_BYTES = 200
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ExportItem:
    """One image to export with its accepted boxes (``class_id`` indexes ``class_names``)."""

    source_path: Path  # the original image file
    sha256: str  # content hash of the original file
    image_wh: tuple[int, int]  # size after EXIF orientation: the frame the boxes are in
    detections: Detections  # accepted boxes only; may be empty


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote. ``skipped`` maps a source path to why it was left out."""

    images: dict[str, int]  # per split
    boxes: dict[str, int]  # per split
    background: int  # images with no box, over both splits
    out_dir: Path
    skipped: dict[str, str] = field(default_factory=dict)
    # image sha256 -> where the image is in the dataset: "images/<split>/<file name>"
    files: dict[str, str] = field(default_factory=dict)
    # Boxes given but not written (see ``writable_boxes``); the label run routes such boxes
    # rejected, so from it this is always 0.
    dropped_boxes: int = 0

    @property
    def data_yaml(self) -> Path:
        return self.out_dir / "data.yaml"


@dataclass(frozen=True)
class _Staged:
    """An image written to the staging folder, with its boxes ready to serialize."""

    item: ExportItem
    file_name: str  # name inside images/<split>/
    image_wh: tuple[int, int]
    xyxy: npt.NDArray[np.float64]  # (n, 4) clipped, degenerate boxes dropped
    class_id: npt.NDArray[np.int64]  # (n,)
    masks: list[Any]  # (n,) COCO RLE dict or None per kept box


def _check_val_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(
            f"val_fraction must be at least 0 and below 1 (got {val_fraction}); "
            "set it with --val-fraction or PROMPTLABEL_VAL_FRACTION"
        )


def _hash_position(sha256: str) -> float:
    """Where a hash falls in [0, 1): its first 64 bits over 2**64."""
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex sha256 digest: {sha256!r}")
    return int(sha256[:16], 16) / 2.0**64


def split_for(sha256: str, val_fraction: float) -> Split:
    """``"val"`` for about ``val_fraction`` of hashes, ``"train"`` for the rest; never changes.

    The decision reads only the image's own hash, so it does not depend on which other images are
    exported. ``export_dataset`` overrides it only to keep both splits non-empty.
    """
    _check_val_fraction(val_fraction)
    return "val" if _hash_position(sha256) < val_fraction else "train"


def _safe_stem(stem: str) -> str:
    """A file-name stem that is safe on every OS, never hidden, and short enough in bytes."""
    safe = re.sub(r"[^\w.-]+", "_", stem).strip("._-")[:_MAX_STEM_CHARS]
    # Cut by UTF-8 bytes; "ignore" drops only a character the cut split (``\w`` never matches a
    # lone surrogate, so everything else encodes).
    safe = safe.encode("utf-8")[:_MAX_STEM_BYTES].decode("utf-8", "ignore").rstrip("._-")
    return safe or "image"


def _unique_stems(items: Sequence[ExportItem]) -> list[str]:
    """``<stem>-<sha256[:8]>`` per item, made unique (case-insensitively) with ``-2``, ``-3``..."""
    seen_paths: set[Path] = set()
    for item in items:
        _hash_position(item.sha256)  # a malformed hash would only show later, as "changed"
        if item.source_path in seen_paths:
            raise ValueError(f"export_dataset: {item.source_path} is listed twice")
        seen_paths.add(item.source_path)
    stems: list[str] = [""] * len(items)
    used: set[str] = set()
    # Suffixes go in hash-then-path order, so they do not depend on the order of ``items``.
    order = sorted(range(len(items)), key=lambda i: (items[i].sha256, str(items[i].source_path)))
    for index in order:
        item = items[index]
        base = f"{_safe_stem(item.source_path.stem)}-{item.sha256[:8]}"
        stem, counter = base, 1
        while stem.casefold() in used:
            counter += 1
            stem = f"{base}-{counter}"
        used.add(stem.casefold())
        stems[index] = stem
    return stems


@dataclass(frozen=True)
class _Header:
    format: str
    mode: str
    size: tuple[int, int]
    orientation: int
    frames: int


def _orientation(image: Image.Image, data: bytes) -> int:
    """The EXIF orientation exactly as ``ImageOps.exif_transpose`` (so ``load_image``) applies it.

    1 when exif_transpose leaves the image as is. exif_transpose calls ``load()`` and then
    ``getexif()``, which also reads XMP ``tiff:Orientation`` and ImageMagick's
    ``Raw profile type exif``. Only a PNG gains metadata in ``load()`` (text chunks after its pixel
    data), and loading decodes the pixels, so a PNG is loaded only when it has a metadata chunk.
    """
    if image.format == "PNG":
        if not any(chunk in data for chunk in _PNG_METADATA_CHUNKS):
            return 1
        image.load()
    value = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    return int(value) if value in _TRANSPOSED_ORIENTATIONS else 1


def _read_header(data: bytes, path: Path) -> _Header:
    """Format, mode, stored size, EXIF orientation and frame count.

    Pixels are decoded only for a PNG with metadata chunks (see ``_orientation``).
    """
    try:
        with warnings.catch_warnings():
            # Every exported image was decoded once already; the size limit was enforced then.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                orientation = _orientation(image, data)
                return _Header(
                    format=image.format or "",
                    mode=image.mode,
                    size=image.size,
                    orientation=orientation,
                    frames=int(getattr(image, "n_frames", 1)),
                )
    except Exception as exc:  # any decoder failure means the same thing here
        raise ImageError(str(path), "corrupt", str(exc)) from None


def _oriented_size(header: _Header) -> tuple[int, int]:
    width, height = header.size
    return (height, width) if header.orientation in {5, 6, 7, 8} else (width, height)


def _check_size(item: ExportItem, image_wh: tuple[int, int]) -> None:
    """ImageError ``size_mismatch`` when the boxes were made in a frame of another size."""
    if image_wh != tuple(item.image_wh):
        raise ImageError(
            str(item.source_path),
            "size_mismatch",
            f"it is {image_wh[0]}x{image_wh[1]} after EXIF orientation, but it was labeled as "
            f"{item.image_wh[0]}x{item.image_wh[1]}; label it again",
        )


def writable_boxes(
    xyxy: npt.ArrayLike, image_wh: tuple[int, int]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The exporter's one rule for which boxes a dataset can hold, and the boxes as it writes them.

    Returns the ``(n, 4)`` boxes clipped to the image (float64 pixels) and a mask of those whose
    width and height are both at least ``MIN_BOX_SIDE_PX`` after clipping: only these are
    written, to the YOLO rows and the COCO annotations alike (no image the labeler reads is over
    ``MAX_SIDE`` = 65535 px a side, so such a box is at least 1.5e-5 of it and never reads 0 in a
    6-decimal YOLO row). The label run routes proposals with the same function, so a box it
    accepts is a box the dataset holds.
    """
    width, height = image_wh
    clipped32 = np.array(xyxy, dtype=np.float32).reshape(-1, 4)
    clipped32[:, [0, 2]] = clipped32[:, [0, 2]].clip(0, width)
    clipped32[:, [1, 3]] = clipped32[:, [1, 3]].clip(0, height)
    clipped = clipped32.astype(np.float64)
    sides = clipped[:, 2:] - clipped[:, :2]
    # A NaN side compares False: a box with a NaN coordinate is never written.
    keep = np.all(sides >= MIN_BOX_SIDE_PX, axis=1)
    return clipped, keep


def unwritable_reasons(xyxy: npt.ArrayLike, image_wh: tuple[int, int]) -> list[str | None]:
    """Per box, None when ``writable_boxes`` keeps it, else why the dataset cannot hold it."""
    clipped, keep = writable_boxes(xyxy, image_wh)
    sides = clipped[:, 2:] - clipped[:, :2]
    return [
        None
        if ok
        else (
            f"too small to export: {w:.2f}x{h:.2f} px inside the {image_wh[0]}x{image_wh[1]} "
            f"image, under {MIN_BOX_SIDE_PX:g} px a side"
        )
        for ok, (w, h) in zip(keep.tolist(), sides.tolist(), strict=True)
    ]


def _boxes(
    item: ExportItem, image_wh: tuple[int, int], n_classes: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], list[Any]]:
    """Boxes clipped to the image and their masks, those ``writable_boxes`` rejects dropped."""
    class_id = item.detections.class_id
    if len(class_id) and (class_id.min() < 0 or class_id.max() >= n_classes):
        raise ValueError(
            f"export_dataset: {item.source_path} has class ids {sorted(set(class_id.tolist()))}, "
            f"but there are only {n_classes} class names"
        )
    xyxy, keep = writable_boxes(item.detections.xyxy, image_wh)
    masks = item.detections.data.get("mask")
    kept_masks = [None] * int(keep.sum()) if masks is None else list(np.asarray(masks)[keep])
    for rle in kept_masks:
        if rle is not None:
            try:
                mask_ops.check_rle(rle, image_wh)
            except mask_ops.MaskError as exc:
                raise ValueError(f"export_dataset: {item.source_path}: {exc}") from None
    return xyxy[keep], class_id[keep], kept_masks


def _jpeg_end(data: bytes) -> int | None:
    """Length of a JPEG up to its end-of-image marker, or None when the marker is missing.

    Ultralytics rewrites a JPEG that does not end with the marker; trimming what follows it (camera
    padding, appended data) keeps the pixels and spares the dataset that rewrite.
    """
    if data.endswith(b"\xff\xd9"):
        return len(data)
    end = data.rfind(b"\xff\xd9")
    return end + 2 if end > 0 else None


def _stage_image(
    item: ExportItem, stem: str, pending_dir: Path, *, n_classes: int, link: bool
) -> _Staged:
    """Copy, link or re-encode one image into ``pending_dir``; ImageError when it cannot be used."""
    path = item.source_path
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageError(
            str(path), "missing", "the file was moved or deleted after labeling"
        ) from None
    except OSError as exc:
        raise ImageError(str(path), "unreadable", exc.strerror or str(exc)) from None
    if hashlib.sha256(data).hexdigest() != item.sha256:
        raise ImageError(str(path), "changed", "the file changed after labeling; label it again")

    header = _read_header(data, path)
    image_wh = _oriented_size(header)
    _check_size(item, image_wh)
    xyxy, class_id, kept_masks = _boxes(item, image_wh, n_classes)

    jpeg_end = _jpeg_end(data) if header.format == "JPEG" else len(data)
    needs_reencode = (
        header.format not in _COPYABLE_FORMATS
        or header.mode != "RGB"
        or header.orientation in {2, 3, 4, 5, 6, 7, 8}
        or header.frames > 1
        or jpeg_end is None
    )
    if needs_reencode:
        # The same decoder the detector saw (EXIF applied, RGB), so pixels and boxes agree.
        loaded = load_image(path, max_pixels=2**62)
        if loaded.sha256 != item.sha256:
            raise ImageError(str(path), "changed", "the file changed during export; run it again")
        _check_size(item, loaded.image_wh)
        as_jpeg = header.format in _JPEG_FORMATS
        file_name = stem + (".jpg" if as_jpeg else ".png")
        target = pending_dir / file_name
        if as_jpeg:
            loaded.image.save(target, "JPEG", quality=_JPEG_QUALITY, subsampling=0)
        else:
            # Level 3 is about 2.5x faster than the default 6 for a few percent more bytes.
            loaded.image.save(target, "PNG", compress_level=3)
    else:
        file_name = stem + _COPYABLE_FORMATS[header.format]
        target = pending_dir / file_name
        if jpeg_end == len(data) and link:
            try:
                os.link(path, target)
            except OSError:  # another file system, or one without hard links
                target.write_bytes(data)
        else:
            target.write_bytes(data[:jpeg_end])
    return _Staged(
        item=item,
        file_name=file_name,
        image_wh=image_wh,
        xyxy=xyxy,
        class_id=class_id,
        masks=kept_masks,
    )


def _assign_splits(staged: Sequence[_Staged], val_fraction: float) -> dict[str, Split]:
    """Split by hash, then move one image if a split would be empty (two or more images)."""
    splits: dict[str, Split] = {s.file_name: split_for(s.item.sha256, val_fraction) for s in staged}
    if len(staged) < 2 or val_fraction == 0:
        return dict.fromkeys(splits, "train")
    by_position = sorted(staged, key=lambda s: (_hash_position(s.item.sha256), s.file_name))
    if "val" not in splits.values():
        # The train image nearest to the val range (positions below val_fraction) moves.
        splits[by_position[0].file_name] = "val"
    elif "train" not in splits.values():
        splits[by_position[-1].file_name] = "train"
    return splits


def _pieces(entry: _Staged, index: int) -> list[mask_ops.Polygon]:
    """Polygons of box ``index`` in a segmentation dataset: its mask's pieces, else its box."""
    rle = entry.masks[index]
    if rle is not None:
        try:
            return mask_ops.rle_to_polygons(rle)
        except mask_ops.MaskError as exc:
            logger.warning(
                "export_dataset: %s box %d written as its box polygon: %s",
                entry.item.source_path,
                index,
                exc,
            )
    return [mask_ops.box_polygon(entry.xyxy[index])]


def _yolo_rows(staged: _Staged, segment: bool = False) -> str:
    width, height = staged.image_wh
    if segment:
        return "".join(
            mask_ops.yolo_segment_row(
                int(class_id), mask_ops.join_pieces(_pieces(staged, index)), staged.image_wh
            )
            for index, class_id in enumerate(staged.class_id)
        )
    rows = []
    for (x1, y1, x2, y2), class_id in zip(staged.xyxy, staged.class_id, strict=True):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        rows.append(f"{int(class_id)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(rows)


def _coco(
    staged: Sequence[_Staged], class_names: Sequence[str], segment: bool = False
) -> dict[str, Any]:
    """A COCO instances document; ``staged`` must already be in file-name order."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, entry in enumerate(staged, start=1):
        images.append(
            {
                "id": image_id,
                "file_name": entry.file_name,
                "width": entry.image_wh[0],
                "height": entry.image_wh[1],
            }
        )
        for index, ((x1, y1, x2, y2), class_id) in enumerate(
            zip(entry.xyxy, entry.class_id, strict=True)
        ):
            w, h = round(float(x2 - x1), 3), round(float(y2 - y1), 3)
            annotation: dict[str, Any] = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(class_id) + 1,
                "bbox": [round(float(x1), 3), round(float(y1), 3), w, h],
                "area": round(w * h, 3),
                "iscrowd": 0,
            }
            if segment:
                pieces = _pieces(entry, index)
                annotation["segmentation"] = [
                    [round(float(v), 3) for v in piece.reshape(-1)] for piece in pieces
                ]
                rle = entry.masks[index]
                if rle is not None and len(pieces) and mask_ops.mask_area(rle) > 0:
                    annotation["bbox"] = [round(v, 3) for v in mask_ops.mask_bbox_xywh(rle)]
                    annotation["area"] = mask_ops.mask_area(rle)
            annotations.append(annotation)
    return {
        "info": {"description": "promptlabel export", "version": "1"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(class_names)],
    }


def _data_yaml(class_names: Sequence[str], has_val: bool) -> str:
    document = {
        "train": "images/train",
        "val": "images/val" if has_val else "images/train",
        "names": dict(enumerate(class_names)),
    }
    return _YAML_HEADER + str(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))


def _is_ours_or_empty(path: Path) -> bool:
    """Whether a managed path may be replaced: written by this exporter, or an empty folder."""
    if path.is_symlink() or path.is_file():
        if path.name == "data.yaml" and not path.is_symlink():
            with path.open(encoding="utf-8", errors="replace") as handle:
                return handle.readline() == _YAML_HEADER.splitlines(keepends=True)[0]
        return False
    return (path / _MARKER).is_file() or not any(path.iterdir())


def _check_replaceable(out_dir: Path) -> None:
    for name in MANAGED:
        path = out_dir / name
        if (path.exists() or path.is_symlink()) and not _is_ours_or_empty(path):
            raise InputError(
                f"{path} exists and was not written by promptlabel; refusing to replace it. "
                "Choose another output folder or move it away."
            )


def _swap_into_place(staging: Path, out_dir: Path) -> None:
    """Move the staged dataset into ``out_dir``; the previous one goes into ``staging``."""
    retired = staging / "previous"
    retired.mkdir()
    for name in MANAGED:
        target = out_dir / name
        if target.exists() or target.is_symlink():
            target.rename(retired / name)
        (staging / name).rename(target)


def export_dataset(
    items: Sequence[ExportItem],
    class_names: Sequence[str],
    out_dir: Path,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    link: bool = True,
) -> ExportSummary:
    """Write ``items`` as a YOLO + COCO dataset in ``out_dir``, replacing a previous export.

    An item whose file is gone or changed since labeling, or whose ``image_wh`` is not the file's
    size after EXIF orientation (``size_mismatch``), is left out and named in
    ``ExportSummary.skipped`` with its reason; the rest is exported. ``link=False`` always copies
    bytes instead of hard-linking (a hard-linked image shares its bytes with the original: edit it
    in place and the original changes too). Raises InputError for a bad ``val_fraction`` or when a
    managed path in ``out_dir`` holds files this exporter did not write; ValueError for items that
    contradict themselves (a malformed hash, a path listed twice, a class id out of range).
    """
    _check_val_fraction(val_fraction)
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names) or not all(class_names):
        raise ValueError(f"export_dataset: class names must be unique and non-empty: {class_names}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_replaceable(out_dir)
    for stale in out_dir.glob(f"{_STAGING_PREFIX}*"):  # left by an export that was killed
        shutil.rmtree(stale, ignore_errors=True)
    if not items:
        logger.warning("export_dataset: no images to export; writing an empty dataset")

    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=out_dir))
    try:
        pending_dir = staging / "pending"
        pending_dir.mkdir()
        staged: list[_Staged] = []
        skipped: dict[str, str] = {}
        for item, stem in zip(items, _unique_stems(items), strict=True):
            try:
                staged.append(
                    _stage_image(item, stem, pending_dir, n_classes=len(class_names), link=link)
                )
            except ImageError as exc:
                logger.warning("export_dataset: leaving out %s", exc)
                skipped[str(item.source_path)] = exc.reason

        splits = _assign_splits(staged, val_fraction)
        for folder in ("images", "labels"):
            for split in SPLITS:
                (staging / folder / split).mkdir(parents=True)
            (staging / folder / _MARKER).write_text(_MARKER_TEXT)
        (staging / "annotations").mkdir()
        (staging / "annotations" / _MARKER).write_text(_MARKER_TEXT)

        # One box with a mask makes the whole dataset a segmentation dataset (see the docstring).
        segment = any(rle is not None for s in staged for rle in s.masks)
        images: dict[str, int] = dict.fromkeys(SPLITS, 0)
        boxes: dict[str, int] = dict.fromkeys(SPLITS, 0)
        background = 0
        files: dict[str, str] = {}
        for split in SPLITS:
            in_split = sorted(
                (s for s in staged if splits[s.file_name] == split), key=lambda s: s.file_name
            )
            for entry in in_split:
                (pending_dir / entry.file_name).rename(staging / "images" / split / entry.file_name)
                files[entry.item.sha256] = f"images/{split}/{entry.file_name}"
                label_name = Path(entry.file_name).stem + ".txt"
                (staging / "labels" / split / label_name).write_text(_yolo_rows(entry, segment))
                boxes[split] += len(entry.xyxy)
                background += int(len(entry.xyxy) == 0)
            images[split] = len(in_split)
            document = _coco(in_split, class_names, segment)
            (staging / "annotations" / f"instances_{split}.json").write_text(
                json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n",
                encoding="utf-8",
            )
        (staging / "data.yaml").write_text(
            _data_yaml(class_names, has_val=images["val"] > 0), encoding="utf-8"
        )
        _swap_into_place(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    dropped_boxes = sum(len(entry.item.detections) - len(entry.xyxy) for entry in staged)
    if dropped_boxes:
        logger.warning(
            "export_dataset: left out %d boxes too small to write (see writable_boxes)",
            dropped_boxes,
        )
    logger.info(
        "exported %d train and %d val images (%d background) to %s",
        images["train"],
        images["val"],
        background,
        out_dir,
    )
    return ExportSummary(
        images=images,
        boxes=boxes,
        background=background,
        out_dir=out_dir,
        skipped=skipped,
        files=files,
        dropped_boxes=dropped_boxes,
    )
