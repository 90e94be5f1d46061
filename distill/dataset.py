"""Check a YOLO dataset before any training starts, and read its labels.

``check_dataset`` reads ``data.yaml`` the way Ultralytics does (``train``/``val`` resolved against
the YAML's folder, or against its ``path:`` key; an image ``.../images/x.jpg`` has its labels in
``.../labels/x.txt``) and fails with an InputError that names the file, and the line for a label
row, on anything that would make training fail or learn garbage: a missing or unreadable YAML, a
split folder that is missing or holds no images, an image that cannot be decoded, a malformed row,
a class id outside ``names``. A missing label file means "no objects" (a background image), as in
Ultralytics.

``label_hash`` identifies the labels a model was trained on: the SHA-256 of the class names and of
every image's label file (relative path and bytes; an image without a label file counts as an
empty file at its label path, so adding a background image changes the hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import yaml
from PIL import Image

from labeler.core.exceptions import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "DatasetInfo",
    "LabelRows",
    "Task",
    "check_dataset",
    "label_path_for",
    "list_split_images",
    "read_label_file",
    "resolve_data_yaml",
]

Task = Literal["detect", "segment"]

# The image suffixes Ultralytics' loaders pick up (ultralytics.data.utils.IMG_FORMATS).
IMAGE_SUFFIXES = frozenset(
    {
        ".avif",
        ".bmp",
        ".dng",
        ".heic",
        ".heif",
        ".jp2",
        ".jpeg",
        ".jpg",
        ".mpo",
        ".png",
        ".pfm",
        ".tif",
        ".tiff",
        ".webp",
    }
)
REQUIRED_SPLITS = ("train", "val")
OPTIONAL_SPLITS = ("test", "hard_cases")  # hard_cases: a dataset version's (held out in val)
_BOX_VALUES = 5  # class cx cy w h
_MIN_POLYGON_VALUES = 7  # class and three points


@dataclass(frozen=True)
class DatasetInfo:
    """What ``check_dataset`` found. ``splits`` and ``instances`` count images and objects."""

    names: list[str]
    splits: dict[str, int]
    task: Task
    label_hash: str
    data_yaml: Path
    instances: dict[str, int] = field(default_factory=dict)
    images: dict[str, tuple[Path, ...]] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class LabelRows:
    """The rows of one label file. ``xyxy_norm`` is ``(n, 4)`` in 0..1 (a polygon's extent)."""

    class_id: npt.NDArray[np.int64]
    xyxy_norm: npt.NDArray[np.float64]
    has_polygons: bool
    first_box_line: int | None = None
    first_polygon_line: int | None = None


def resolve_data_yaml(dataset_dir: str | Path) -> Path:
    """``DATASET_DIR/data.yaml``, or ``dataset_dir`` itself when it is a YAML file."""
    path = Path(dataset_dir).expanduser()
    if path.suffix.lower() in {".yaml", ".yml"} and not path.is_dir():
        if not path.is_file():
            raise InputError(f"{path} does not exist")
        return path
    if not path.is_dir():
        raise InputError(f"dataset folder {path} does not exist")
    data_yaml = path / "data.yaml"
    if not data_yaml.is_file():
        raise InputError(
            f"{data_yaml} not found: a dataset folder holds a data.yaml with train/val folders and "
            "class names, as `promptlabel label` writes it"
        )
    return data_yaml


def _load_yaml(data_yaml: Path) -> dict[str, Any]:
    try:
        text = data_yaml.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{data_yaml}: cannot be read ({exc})") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InputError(f"{data_yaml}: not valid YAML ({exc})".replace("\n", " ")) from None
    if not isinstance(document, dict):
        raise InputError(f"{data_yaml}: expected a mapping with train, val and names keys")
    if "kpt_shape" in document:
        raise InputError(f"{data_yaml}: keypoint (pose) datasets are not supported")
    return document


def _parse_names(document: dict[str, Any], data_yaml: Path) -> list[str]:
    names = document.get("names")
    if isinstance(names, dict):
        by_id: dict[int, Any] = {}
        for key, name in names.items():
            if isinstance(key, bool) or not str(key).isdigit():
                raise InputError(
                    f"{data_yaml}: 'names' keys must be class ids 0, 1, ..., got {key!r}"
                )
            by_id[int(key)] = name
        if sorted(by_id) != list(range(len(by_id))):
            raise InputError(
                f"{data_yaml}: 'names' keys must be the class ids 0..{len(by_id) - 1} without "
                f"gaps, got {sorted(by_id)}"
            )
        names = [by_id[i] for i in range(len(by_id))]
    elif not isinstance(names, list):
        raise InputError(
            f"{data_yaml}: 'names' must be a list of class names or a mapping "
            f"{{0: name, 1: name, ...}}, got {type(names).__name__}"
        )
    if not names:
        raise InputError(f"{data_yaml}: 'names' lists no classes")
    bad = [n for n in names if not isinstance(n, str | int | float) or not str(n).strip()]
    if bad:
        raise InputError(f"{data_yaml}: class names must be non-empty strings, got {bad}")
    text_names = [str(n) for n in names]
    if len(set(text_names)) != len(text_names):
        raise InputError(f"{data_yaml}: class names must be unique, got {text_names}")
    return text_names


def _dataset_root(document: dict[str, Any], data_yaml: Path) -> Path:
    base = document.get("path")
    if base in (None, ""):
        return data_yaml.parent.resolve()
    base_path = Path(str(base)).expanduser()
    return (base_path if base_path.is_absolute() else data_yaml.parent / base_path).resolve()


def _images_in(folder: Path) -> list[Path]:
    # Ultralytics globs '**/*.*', which skips hidden files and folders.
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def list_split_images(data_yaml: str | Path, split: str) -> list[Path]:
    """The image files of one split of a dataset, sorted; InputError when there are none."""
    data_yaml = Path(data_yaml)
    document = _load_yaml(data_yaml)
    return _split_images(document, data_yaml, split)


def _split_images(document: dict[str, Any], data_yaml: Path, split: str) -> list[Path]:
    if split not in document or document[split] in (None, ""):
        raise InputError(f"{data_yaml}: no '{split}:' entry (the folder of {split} images)")
    entries = document[split]
    entries = entries if isinstance(entries, list) else [entries]
    root = _dataset_root(document, data_yaml)
    images: list[Path] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise InputError(f"{data_yaml}: '{split}:' must name a folder, got {entry!r}")
        location = Path(entry).expanduser()
        location = location if location.is_absolute() else root / location
        if location.is_dir():
            found = _images_in(location)
        elif location.is_file() and location.suffix == ".txt":
            # An Ultralytics image list: one path per line, relative to the list's folder.
            lines = location.read_text(encoding="utf-8").splitlines()
            found = [location.parent / line.strip() for line in lines if line.strip()]
            missing = [p for p in found if not p.is_file()]
            if missing:
                raise InputError(
                    f"{location}: lists {len(missing)} missing images, e.g. {missing[0]}"
                )
        else:
            raise InputError(
                f"{data_yaml}: '{split}: {entry}' points at {location}, which does not exist"
            )
        if not found:
            raise InputError(f"{data_yaml}: the {split} split ({location}) holds no images")
        images.extend(found)
    return images


def label_path_for(image_path: str | Path) -> Path:
    """Where Ultralytics looks for an image's labels: the last ``/images/`` becomes ``/labels/``."""
    text = str(image_path)
    images_part, labels_part = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if images_part in text:
        head, tail = text.rsplit(images_part, 1)
        text = head + labels_part + tail
    return Path(text).with_suffix(".txt")


def read_label_file(label_path: Path, n_classes: int) -> LabelRows:
    """Parse one YOLO label file; InputError naming the file and line of the first bad row.

    A row is ``class cx cy w h`` (a box) or ``class x1 y1 x2 y2 x3 y3 ...`` (a polygon), values
    normalized to 0..1. A missing file means no objects.
    """
    if not label_path.exists():
        return LabelRows(np.zeros(0, np.int64), np.zeros((0, 4)), has_polygons=False)
    try:
        text = label_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{label_path}: cannot be read ({exc})") from None
    class_ids: list[int] = []
    boxes: list[tuple[float, float, float, float]] = []
    first_box_line: int | None = None
    first_polygon_line: int | None = None
    for line_number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_path}:{line_number}"
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"{where}: expected numbers, got {line.strip()!r}") from None
        n_values = len(values)
        is_box = n_values == _BOX_VALUES
        is_polygon = n_values >= _MIN_POLYGON_VALUES and (n_values - 1) % 2 == 0
        if not (is_box or is_polygon):
            raise InputError(
                f"{where}: expected 'class cx cy w h' (5 values) or a polygon 'class x1 y1 x2 y2 "
                f"x3 y3 ...' (an odd count of at least 7), got {n_values} values"
            )
        class_value, coordinates = values[0], values[1:]
        if not class_value.is_integer() or class_value < 0:
            raise InputError(f"{where}: class id must be a whole number >= 0, got {fields[0]!r}")
        class_id = int(class_value)
        if class_id >= n_classes:
            raise InputError(
                f"{where}: class id {class_id} is outside the {n_classes} class names "
                f"(valid ids: 0..{n_classes - 1})"
            )
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in coordinates):
            raise InputError(
                f"{where}: coordinates must be normalized to 0..1, got {line.strip()!r}"
            )
        if is_box:
            cx, cy, w, h = coordinates
            if w <= 0 or h <= 0:
                raise InputError(f"{where}: box width and height must be above 0")
            boxes.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
            first_box_line = first_box_line or line_number
        else:
            xs, ys = coordinates[0::2], coordinates[1::2]
            boxes.append((min(xs), min(ys), max(xs), max(ys)))
            first_polygon_line = first_polygon_line or line_number
        class_ids.append(class_id)
    return LabelRows(
        class_id=np.asarray(class_ids, np.int64),
        xyxy_norm=np.asarray(boxes, np.float64).reshape(-1, 4),
        has_polygons=first_polygon_line is not None,
        first_box_line=first_box_line,
        first_polygon_line=first_polygon_line,
    )


def _check_image(path: Path) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()  # reads the whole file and its checksums, decodes no pixels
    except Exception as exc:  # any decoder failure means the same: this file is not an image
        raise InputError(f"{path}: cannot be read as an image ({exc})") from None


def _relative(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.resolve().as_posix()


def _label_hash(names: Sequence[str], label_files: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(list(names), ensure_ascii=False).encode("utf-8"))
    for relative, content in sorted(label_files):
        # Lengths before contents, so no two different datasets feed the same bytes.
        encoded = relative.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big") + encoded)
        digest.update(len(content).to_bytes(8, "big") + content)
    return digest.hexdigest()


def check_dataset(dataset_dir: str | Path) -> DatasetInfo:
    """Check a dataset folder (or its data.yaml) and describe it; InputError on any problem.

    ``task`` is ``"segment"`` when the label rows are polygons and ``"detect"`` when they are
    boxes; a dataset that mixes both is refused (Ultralytics would drop every polygon).
    """
    data_yaml = resolve_data_yaml(dataset_dir)
    document = _load_yaml(data_yaml)
    names = _parse_names(document, data_yaml)
    root = data_yaml.parent.resolve()
    split_names = [*REQUIRED_SPLITS, *(s for s in OPTIONAL_SPLITS if document.get(s))]

    images: dict[str, tuple[Path, ...]] = {}
    instances: dict[str, int] = {}
    label_files: dict[str, bytes] = {}
    first_box: str | None = None
    first_polygon: str | None = None
    checked: set[Path] = set()
    for split in split_names:
        split_images = _split_images(document, data_yaml, split)
        images[split] = tuple(split_images)
        instances[split] = 0
        for image_path in split_images:
            label_path = label_path_for(image_path)
            rows = read_label_file(label_path, len(names))
            instances[split] += len(rows.class_id)
            if image_path in checked:  # val may point at the train folder
                continue
            checked.add(image_path)
            _check_image(image_path)
            label_files[_relative(label_path, root)] = (
                label_path.read_bytes() if label_path.exists() else b""
            )
            if rows.first_box_line is not None and first_box is None:
                first_box = f"{label_path}:{rows.first_box_line}"
            if rows.first_polygon_line is not None and first_polygon is None:
                first_polygon = f"{label_path}:{rows.first_polygon_line}"
    if first_box and first_polygon:
        raise InputError(
            f"{data_yaml}: the labels mix boxes ({first_box}) and polygons ({first_polygon}); "
            "a dataset must be all boxes (detect) or all polygons (segment)"
        )
    return DatasetInfo(
        names=names,
        splits={split: len(paths) for split, paths in images.items()},
        task="segment" if first_polygon else "detect",
        label_hash=_label_hash(names, label_files.items()),
        data_yaml=data_yaml.resolve(),
        instances=instances,
        images=images,
    )
