"""The one record every stage speaks: boxes, classes and scores for one image.

Modelled on supervision's ``Detections`` but numpy-only, so the device runtime can use it with the
base install (numpy, pillow, onnxruntime).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["Detections"]


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

    def with_clipped_boxes(self, image_wh: tuple[int, int]) -> Detections:
        """Boxes clipped to the image; boxes that end up with no area are dropped."""
        width, height = image_wh
        clipped = self.xyxy.copy()
        clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
        clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
        out = Detections(
            clipped, self.class_id, self.confidence, dict(self.data), dict(self.metadata)
        )
        return out[out.area > 0]
