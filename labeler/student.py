"""What a deployed student predicted on images, read back for labeling (``--student-predictions``).

Two files say it: a device's outbox folder (``promptlabel predict --collect OUTBOX``: one
``<frame>.json`` manifest per frame with its ``sha256`` and ``predictions``), or the output of
``promptlabel predict --json`` (``{"images": [{"path", "detections"}]}``, whose images are hashed
here). Either gives ``{image SHA-256: [{"class": name, "xyxy": [x1, y1, x2, y2]}, ...]}``, what
``LabelConfig.student_predictions`` takes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from labeler.core.exceptions import InputError

__all__ = ["load_student_predictions"]


def load_student_predictions(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The student's boxes per image SHA-256; InputError naming the file at fault."""
    if path.is_dir():
        found: dict[str, list[dict[str, Any]]] = {}
        for manifest_path in sorted(path.glob("*.json")):
            manifest = _read_json(manifest_path)
            if not isinstance(manifest, dict) or manifest_path.name == "state.json":
                continue
            if "sha256" not in manifest or "predictions" not in manifest:
                raise InputError(
                    f"{manifest_path}: not an outbox manifest (needs sha256 and predictions)"
                )
            found[str(manifest["sha256"])] = _boxes(manifest["predictions"], manifest_path)
        if not found:
            raise InputError(f"{path}: no outbox manifests (<frame>.json) in this folder")
        return found
    document = _read_json(path)
    images = document.get("images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise InputError(
            f'{path}: expected `promptlabel predict --json` output ({{"images": [...]}}) '
            "or an outbox folder"
        )
    found = {}
    for index, image in enumerate(images):
        where = f"{path}: images[{index}]"
        if not isinstance(image, dict) or "path" not in image or "detections" not in image:
            raise InputError(f"{where}: needs path and detections")
        image_path = Path(str(image["path"]))
        try:
            digest = hashlib.sha256(image_path.read_bytes()).hexdigest()
        except OSError as error:
            raise InputError(f"{where}: {image_path}: {error.strerror or error}") from None
        found[digest] = _boxes(image["detections"], f"{where}.detections")
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise InputError(f"{path}: {error.strerror or error}") from None
    except ValueError as error:
        raise InputError(f"{path}: not JSON ({error})") from None


def _boxes(records: Any, where: object) -> list[dict[str, Any]]:
    if not isinstance(records, list):
        raise InputError(f"{where}: expected a list of detections")
    boxes = []
    for index, record in enumerate(records):
        try:
            xyxy = [float(v) for v in record["xyxy"]]
            name = str(record["class"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{where}[{index}]: needs class and xyxy (4 numbers)") from None
        if len(xyxy) != 4:
            raise InputError(f"{where}[{index}]: xyxy must be 4 numbers, got {len(xyxy)}")
        boxes.append({"class": name, "xyxy": xyxy})
    return boxes
