"""The one record every stage speaks: boxes, classes and scores for one image.

Modelled on supervision's ``Detections`` but numpy-only, so the device runtime can use it with the
base install (numpy, pillow, onnxruntime). Model output enters through an adapter here
(``from_ultralytics``) and leaves as JSON through one function (``as_records``), the record that
``promptlabel predict --json``, ``POST /predict`` and ``labels.jsonl`` all write.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "SCORE_DECIMALS",
    "XYXY_DECIMALS",
    "Detections",
    "as_records",
    "box_iou",
    "from_ultralytics",
]

# The one rounding rule of a detection record: a hundredth of a pixel, a ten-thousandth of score.
XYXY_DECIMALS = 2
SCORE_DECIMALS = 4


@dataclass(eq=False)
class Detections:
    """Detections for one image.

    ``xyxy`` is ``(n, 4)`` float32 in pixels of the original image, ``class_id`` ``(n,)`` int64 (an
    index into the ontology's classes), ``confidence`` ``(n,)`` float32. ``data`` holds per-box
    extras, each an array of length ``n``; ``metadata`` holds per-image facts (``image_wh`` ...).
    """

    xyxy: npt.NDArray[np.float32]
    class_id: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float32]
    data: dict[str, npt.NDArray[Any]] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, dtype=np.float32).reshape(-1, 4)
        n = len(self.xyxy)
        self.class_id = np.asarray(self.class_id, dtype=np.int64).reshape(-1)
        self.confidence = np.asarray(self.confidence, dtype=np.float32).reshape(-1)
        if len(self.class_id) != n or len(self.confidence) != n:
            raise ValueError(
                f"Detections: xyxy has {n} rows but class_id has {len(self.class_id)} "
                f"and confidence has {len(self.confidence)}"
            )
        for key, value in self.data.items():
            value = np.asarray(value)
            if len(value) != n:
                raise ValueError(f"Detections.data[{key!r}] has {len(value)} rows, expected {n}")
            self.data[key] = value

    @classmethod
    def empty(cls, **metadata: Any) -> Detections:
        return cls(
            xyxy=np.zeros((0, 4), np.float32),
            class_id=np.zeros(0, np.int64),
            confidence=np.zeros(0, np.float32),
            metadata=dict(metadata),
        )

    @classmethod
    def merge(cls, parts: Iterable[Detections]) -> Detections:
        """Concatenate detections of the same image; metadata comes from the first part."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        keys = set(parts[0].data)
        if any(set(p.data) != keys for p in parts):
            raise ValueError("Detections.merge: parts carry different data keys")
        return cls(
            xyxy=np.concatenate([p.xyxy for p in parts]),
            class_id=np.concatenate([p.class_id for p in parts]),
            confidence=np.concatenate([p.confidence for p in parts]),
            data={k: np.concatenate([p.data[k] for p in parts]) for k in keys},
            metadata=dict(parts[0].metadata),
        )

    def __len__(self) -> int:
        return len(self.xyxy)

    def __iter__(self) -> Iterator[tuple[npt.NDArray[np.float32], int, float]]:
        for i in range(len(self)):
            yield self.xyxy[i], int(self.class_id[i]), float(self.confidence[i])

    def __getitem__(self, index: Any) -> Detections:
        """Select boxes with an int, a slice, an index array or a boolean mask."""
        if isinstance(index, int | np.integer):
            index = [int(index)]
        return Detections(
            xyxy=self.xyxy[index],
            class_id=self.class_id[index],
            confidence=self.confidence[index],
            data={k: v[index] for k, v in self.data.items()},
            metadata=dict(self.metadata),
        )

    @property
    def area(self) -> npt.NDArray[np.float32]:
        wh = np.clip(self.xyxy[:, 2:] - self.xyxy[:, :2], 0, None)
        area: npt.NDArray[np.float32] = wh[:, 0] * wh[:, 1]
        return area


def as_records(
    detections: Detections, names: Sequence[str] | Mapping[int, str]
) -> list[dict[str, Any]]:
    """One JSON-ready record per box, in the order of ``detections``.

    Each record is ``{"class_id": int, "class": str, "score": float, "xyxy": [x1, y1, x2, y2]}``:
    ``class`` is ``names[class_id]``, ``score`` the confidence rounded to ``SCORE_DECIMALS``,
    ``xyxy`` pixels of the original image rounded to ``XYXY_DECIMALS``. Callers may add keys of
    their own (a labeler's status and verifier answer) but never redefine these.
    """
    return [
        {
            "class_id": class_id,
            "class": names[class_id],
            "score": round(score, SCORE_DECIMALS),
            "xyxy": [round(float(v), XYXY_DECIMALS) for v in xyxy],
        }
        for xyxy, class_id, score in detections
    ]


def from_ultralytics(result: Any) -> Detections:
    """Convert one Ultralytics ``Results`` into ``Detections`` (pixels of the original image).

    ``metadata`` holds ``image_wh`` and ``path``; a segmentation result adds
    ``data["polygon_xy"]``, one ``(k, 2)`` float32 polygon per box in original-image pixels.
    Raises ValueError for results without axis-aligned boxes (classification, OBB). Reads the
    result's tensors through ``.cpu().numpy()`` only, so this module never imports Ultralytics.
    """
    boxes = getattr(result, "boxes", None)
    height, width = (int(v) for v in result.orig_shape)
    metadata = {"image_wh": (width, height), "path": str(getattr(result, "path", ""))}
    if boxes is None:
        raise ValueError("from_ultralytics: the result has no axis-aligned boxes")
    xyxy = boxes.xyxy.cpu().numpy().astype(np.float32).reshape(-1, 4)
    data: dict[str, npt.NDArray[Any]] = {}
    masks = getattr(result, "masks", None)
    if masks is not None and len(xyxy):
        polygons = np.empty(len(xyxy), dtype=object)
        for index, polygon in enumerate(masks.xy):
            polygons[index] = np.asarray(polygon, np.float32).reshape(-1, 2)
        data["polygon_xy"] = polygons
    return Detections(
        xyxy=xyxy,
        class_id=boxes.cls.cpu().numpy().astype(np.int64),
        confidence=boxes.conf.cpu().numpy().astype(np.float32),
        data=data,
        metadata=metadata,
    )


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two xyxy boxes (0 when they do not overlap or either has no area)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0
