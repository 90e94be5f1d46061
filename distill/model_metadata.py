"""The contract between the exporter and the device runtime: what an exported file says about its
model.

Ultralytics' exporter writes ``names``, ``imgsz``, ``stride`` and ``task`` (and ``batch``,
``end2end``, ``args``) into an ONNX file's ``metadata_props``, each value as ``str()`` of a Python
value. ``promptlabel export`` checks a fresh file against this contract, the registry checks an
imported file, and ``serve.runtime`` reads it to know the classes and the input size. This module
needs nothing beyond the base install, so the device runtime can import it.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from labeler.core.exceptions import ModelLoadError

__all__ = [
    "REQUIRED_METADATA",
    "ModelMetadata",
    "check_required_metadata",
    "metadata_values",
    "parse_metadata",
]

# What the device runtime and Ultralytics' AutoBackend read from an exported file.
REQUIRED_METADATA = ("names", "imgsz", "stride", "task")


@dataclass(frozen=True)
class ModelMetadata:
    """What an Ultralytics export says about its model (the file's ``metadata_props``).

    ``imgsz`` is ``(h, w)`` at export time; ``end2end`` is True when the graph already removes
    duplicates (an end-to-end head or ``nms=True`` at export) and outputs ``(batch, n, 6)`` rows of
    ``x1, y1, x2, y2, score, class``.
    """

    names: tuple[str, ...]
    imgsz: tuple[int, int]
    stride: int
    task: str
    batch: int = 1
    end2end: bool = False
    dynamic: bool = False


def check_required_metadata(props: Mapping[str, Any], *, source: str = "model") -> None:
    """ModelLoadError naming ``source`` and the missing keys when ``REQUIRED_METADATA`` is not all
    there."""
    missing = [key for key in REQUIRED_METADATA if key not in props]
    if missing:
        raise ModelLoadError(
            f"{source}: lacks Ultralytics metadata {missing}; the device runtime reads "
            f"{list(REQUIRED_METADATA)} from an exported file to know its classes and input "
            "size, which Ultralytics writes on export: re-export it with `promptlabel export` "
            "(or YOLO(weights).export(format='onnx'))"
        )


def metadata_values(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Every metadata value as the Python value it was written from; a value that is no literal
    stays a string. Never raises (for recording what a file says, not for running it)."""
    parsed: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            parsed[key] = ast.literal_eval(value) if isinstance(value, str) else value
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed[key] = value
    return parsed


def _literal(value: Any, key: str, source: str) -> Any:
    """A Python literal from a metadata string; never ``eval``."""
    if not isinstance(value, str):
        return value
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise ModelLoadError(
            f"{source}: metadata {key!r} is not a Python literal ({type(exc).__name__}): "
            f"{value[:80]!r}"
        ) from None


def _parse_names(value: Any, source: str) -> tuple[str, ...]:
    names = _literal(value, "names", source)
    if isinstance(names, list | tuple):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ModelLoadError(f"{source}: metadata 'names' must be a non-empty dict {{0: 'name'}}")
    try:
        by_index = {int(k): str(v) for k, v in names.items()}
    except (TypeError, ValueError):
        raise ModelLoadError(f"{source}: metadata 'names' keys must be class indices") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise ModelLoadError(
            f"{source}: metadata 'names' must number classes 0..{len(by_index) - 1}, "
            f"got {sorted(by_index)[:10]}"
        )
    return tuple(by_index[i] for i in range(len(by_index)))


def _parse_imgsz(value: Any, source: str) -> tuple[int, int]:
    imgsz = _literal(value, "imgsz", source)
    if isinstance(imgsz, int):
        imgsz = [imgsz, imgsz]
    if (
        not isinstance(imgsz, list | tuple)
        or len(imgsz) != 2
        or not all(isinstance(x, int) and x > 0 for x in imgsz)
    ):
        raise ModelLoadError(f"{source}: metadata 'imgsz' must be [height, width], got {value!r}")
    return int(imgsz[0]), int(imgsz[1])


def parse_metadata(props: Mapping[str, Any], *, source: str = "model") -> ModelMetadata:
    """Read an export's metadata (strings, as in ``metadata_props``, or values already parsed)
    into a ``ModelMetadata``.

    ``names`` (a dict literal), ``imgsz``, ``stride`` and ``task`` are required; ``batch``,
    ``end2end`` and ``args`` (``nms``, ``dynamic``) are optional. Raises ModelLoadError naming
    ``source`` and what is missing or malformed. Which tasks a reader runs is the reader's
    business.
    """
    check_required_metadata(props, source=source)
    task = str(props["task"]).strip()
    try:
        stride = int(props["stride"])
        batch = int(props.get("batch", "1"))
    except (TypeError, ValueError):
        raise ModelLoadError(f"{source}: metadata 'stride' and 'batch' must be integers") from None
    if stride < 1 or batch < 1:
        raise ModelLoadError(f"{source}: metadata 'stride' and 'batch' must be >= 1")
    args = _literal(props["args"], "args", source) if "args" in props else {}
    if not isinstance(args, dict):
        args = {}
    end2end = _literal(props["end2end"], "end2end", source) if "end2end" in props else False
    return ModelMetadata(
        names=_parse_names(props["names"], source),
        imgsz=_parse_imgsz(props["imgsz"], source),
        stride=stride,
        task=task,
        batch=batch,
        end2end=bool(end2end) or bool(args.get("nms")),
        dynamic=bool(args.get("dynamic")),
    )
