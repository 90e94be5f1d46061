"""The device runtime: run an exported YOLO detector (ONNX) with numpy, Pillow and onnxruntime only.

No torch, Ultralytics or OpenCV is imported, so the base install runs a student on a device. The
predictions match ``YOLO(onnx_path).predict(...)`` on the same file and images because every step
mirrors Ultralytics' own prediction path:

- **Letterbox** as ``ultralytics.data.augment.LetterBox``: scale to fit, round the new size with
  Python's ``round``, pad with grey 114, centred, ``top = round(dh - 0.1)``, ``bottom =
  round(dh + 0.1)``. A file with a fixed input size is padded to that size; a file exported with
  dynamic height and width is padded only to a multiple of the stride (Ultralytics' ``auto=True``),
  so a wide image costs less compute.
- **Resize** bit-exact with ``cv2.resize(..., INTER_LINEAR)`` (no antialiasing, which is why
  Pillow's own ``resize`` cannot be used): whole shrink factors per axis (1280x720, 1920x1080,
  3840x2160 to 640) take Pillow's nearest-pixel picks and ``Image.reduce``; other sizes run
  OpenCV's fixed-point arithmetic (11-bit weights, its SIMD kernel's rounding) in numpy.
- **Input**: RGB, ``/ 255`` in float32 (bit-equal to ``tensor.float().div_(255)``), NCHW.
- **Decode** the ``(batch, 4 + nc, anchors)`` output of a YOLO detect head (YOLOv8/11/26 without
  NMS in the graph): centre boxes to corners, score = best class score, keep ``score > conf``,
  greedy NMS exactly as torchvision's kernel (float32 IoU, ``iou > threshold`` suppresses, stable
  descending sort), classes separated by Ultralytics' 7680-pixel offset, first ``max_det`` kept
  (vectorised: one numpy step per kept box over the boxes of its class).
  Files exported with NMS in the graph or as end-to-end models (``(batch, max_det, 6)`` outputs)
  are filtered by score only, as Ultralytics does.
- **Boxes** go back to the original pixels: minus the padding, divided by the per-axis scale,
  clipped to the image.

Images are given as paths, ``PIL.Image`` or ``(h, w, 3)`` uint8 RGB arrays. EXIF orientation is
applied to files, as OpenCV's decoder does.
"""

from __future__ import annotations

import functools
import heapq
import logging
import math
import threading
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image, ImageOps

from distill.model_metadata import ModelMetadata, parse_metadata
from labeler.core.detections import Detections
from labeler.core.exceptions import ImageError, InputError, ModelLoadError
from labeler.core.images import (
    DEFAULT_MAX_PIXELS,
    check_image_size,
    decode_image_bytes,
    load_image,
    open_image_bytes,
    to_rgb,
)
from serve.runtime.defaults import DEFAULT_CONF, DEFAULT_IOU, DEFAULT_MAX_DET
from serve.runtime.segment import instance_masks

__all__ = [
    "MAX_WH",
    "LetterboxGeometry",
    "OnnxDetector",
    "letterbox_geometry",
    "letterbox_image",
    "load_runtime",
    "non_max_suppression",
    "read_image_bytes",
    "resize_like_cv2",
]

logger = logging.getLogger(__name__)

ImageInput = Image.Image | npt.NDArray[np.uint8] | str | Path

# Ultralytics' class offset for class-aware NMS (``max_wh`` in ultralytics/utils/nms.py): boxes of
# different classes are moved this far apart so one NMS pass never compares them.
MAX_WH = 7680
# Ultralytics keeps at most this many candidates (best scores first) before NMS.
MAX_NMS = 30000
PAD_VALUE = 114
DEFAULT_MAX_BATCH = 8
_EXIF_ORIENTATION = 0x0112
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
_PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


# ---------------------------------------------------------------------------------------------
# Letterbox


@dataclass(frozen=True)
class LetterboxGeometry:
    """Where an image lands in the model input: ``resized_wh`` at ``(left, top)`` in ``input_hw``.

    Coordinates map back with ``x_orig = (x - left) / (resized_w / image_w)`` per axis.
    """

    image_wh: tuple[int, int]
    resized_wh: tuple[int, int]
    left: int
    top: int
    input_hw: tuple[int, int]

    def _gain_and_pad(self) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        width, height = self.image_wh
        gain = [self.resized_wh[0] / width, self.resized_wh[1] / height] * 2
        return np.array(gain, np.float32), np.array([self.left, self.top] * 2, np.float32)

    def to_original(self, xyxy_input: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Boxes in model-input pixels to boxes in original-image pixels, clipped to the image."""
        gain, pad = self._gain_and_pad()
        xyxy: npt.NDArray[np.float32] = (np.asarray(xyxy_input, np.float32) - pad) / gain
        width, height = self.image_wh
        np.clip(xyxy[:, 0::2], 0, width, out=xyxy[:, 0::2])
        np.clip(xyxy[:, 1::2], 0, height, out=xyxy[:, 1::2])
        return xyxy

    def to_input(self, xyxy: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Boxes in original-image pixels to model-input pixels (the inverse of ``to_original``)."""
        gain, pad = self._gain_and_pad()
        result: npt.NDArray[np.float32] = np.asarray(xyxy, np.float32) * gain + pad
        return result


def letterbox_geometry(
    image_wh: tuple[int, int], target_hw: tuple[int, int], *, auto: bool = False, stride: int = 32
) -> LetterboxGeometry:
    """Ultralytics' ``LetterBox.get_params`` (centred, scale-up allowed) for one image.

    With ``auto`` the padding is only what makes each side a multiple of ``stride`` (the input
    is then at most ``target_hw``); without it the input is exactly ``target_hw``.
    """
    width, height = image_wh
    target_h, target_w = target_hw
    ratio = min(target_h / height, target_w / width)
    resized_w, resized_h = max(round(width * ratio), 1), max(round(height * ratio), 1)
    pad_w, pad_h = target_w - resized_w, target_h - resized_h
    if auto:
        pad_w, pad_h = pad_w % stride, pad_h % stride
    half_w, half_h = pad_w / 2, pad_h / 2
    top, bottom = round(half_h - 0.1), round(half_h + 0.1)
    left, right = round(half_w - 0.1), round(half_w + 0.1)
    return LetterboxGeometry(
        image_wh=(width, height),
        resized_wh=(resized_w, resized_h),
        left=left,
        top=top,
        input_hw=(resized_h + top + bottom, resized_w + left + right),
    )


def _integer_factor(source: int, target: int) -> int | None:
    return source // target if source % target == 0 else None


@functools.lru_cache(maxsize=64)
def _linear_taps(
    source: int, target: int, *, clamp: bool
) -> tuple[
    npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.int32], npt.NDArray[np.int32]
]:
    """OpenCV's INTER_LINEAR taps along one axis: two source indices and 11-bit weights each.

    As ``cv::resize``: the centre ``(d + 0.5) * scale - 0.5`` is a float32, weights are
    ``round((1 - f) * 2048)`` and ``round(f * 2048)``. Along x (``clamp``) a centre outside the
    image takes the edge pixel with weight 2048; along y OpenCV keeps the weights and repeats the
    edge row, which rounds differently (by one grey level, sometimes).
    """
    scale = 1.0 / (target / source)
    centre = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    first = np.floor(centre).astype(np.intp)
    fraction = centre - first.astype(np.float32)
    if clamp:
        below, above = first < 0, first >= source - 1
        fraction[below | above] = 0
        first[below], first[above] = 0, source - 1
    weight0 = np.rint((np.float32(1) - fraction) * np.float32(2048)).astype(np.int32)
    weight1 = np.rint(fraction * np.float32(2048)).astype(np.int32)
    taps = (
        np.clip(first, 0, source - 1),
        np.clip(first + 1, 0, source - 1),
        weight0,
        weight1,
    )
    for array in taps:
        array.flags.writeable = False  # cached: shared by every call
    return taps


def _resize_linear(
    pixels: npt.NDArray[np.uint8], size_wh: tuple[int, int]
) -> npt.NDArray[np.int32]:
    """Bit-exact ``cv2.resize(pixels, size_wh, interpolation=cv2.INTER_LINEAR)`` for uint8.

    OpenCV's fixed-point path: a horizontal pass ``p0 * w0 + p1 * w1`` (weights sum to 2048),
    then a vertical pass that, in its SIMD kernel, drops 4 bits, multiplies by the row weights
    keeping the high 16 bits, adds and rounds off 2 bits. Values are 0..255, kept as int32.
    """
    height, width, channels = pixels.shape
    new_w, new_h = size_wh
    col0, col1, col_w0, col_w1 = _linear_taps(width, new_w, clamp=True)
    row0, row1, row_w0, row_w1 = _linear_taps(height, new_h, clamp=False)
    rows, where = np.unique(np.concatenate([row0, row1]), return_inverse=True)
    # Gathering columns of a (rows, width * channels) view with np.take is far faster than
    # fancy-indexing the middle axis of (rows, width, channels).
    lanes = np.arange(channels)
    flat0 = (col0[:, None] * channels + lanes).reshape(-1)
    flat1 = (col1[:, None] * channels + lanes).reshape(-1)
    source_rows = pixels.reshape(height, width * channels)[rows]
    horizontal = np.take(source_rows, flat0, axis=1).astype(np.int32)
    horizontal *= np.repeat(col_w0, channels)
    second = np.take(source_rows, flat1, axis=1).astype(np.int32)
    second *= np.repeat(col_w1, channels)
    horizontal += second
    horizontal >>= 4
    top = horizontal[where[:new_h]]
    top *= row_w0[:, None]
    top >>= 16
    bottom = horizontal[where[new_h:]]
    bottom *= row_w1[:, None]
    bottom >>= 16
    top += bottom
    top += 2
    top >>= 2
    resized: npt.NDArray[np.int32] = top.reshape(new_h, new_w, channels)
    return resized


def _pick(image: Image.Image, size: tuple[int, int], factors: Any, offsets: Any) -> Any:
    """Every ``factor``-th pixel per axis, starting ``offset + factor / 2`` (nearest, exact)."""
    (factor_x, factor_y), (offset_x, offset_y) = factors, offsets
    return np.asarray(
        image.transform(
            size,
            Image.Transform.AFFINE,
            (factor_x, 0, offset_x, 0, factor_y, offset_y),
            Image.Resampling.NEAREST,
        )
    )


def _size_wh(image: Image.Image | npt.NDArray[np.uint8]) -> tuple[int, int]:
    if isinstance(image, np.ndarray):
        return int(image.shape[1]), int(image.shape[0])
    width, height = image.size
    return width, height


def resize_like_cv2(
    image: Image.Image | npt.NDArray[np.uint8], size_wh: tuple[int, int]
) -> npt.NDArray[np.integer[Any]]:
    """``cv2.resize(image, size_wh, interpolation=cv2.INTER_LINEAR)`` of an RGB image, bit-exact.

    ``image`` is a PIL image or an ``(h, w, 3)`` uint8 array; returns ``(h, w, 3)`` integers
    0..255. Whole shrink factors per axis take Pillow's fast paths: OpenCV then samples the centre
    pixel (odd factor) or averages the two middle ones with ``(sum + 2) >> 2`` (even factor; 2x on
    both axes is its INTER_AREA shortcut, the same numbers as ``Image.reduce(2)``). Other sizes
    run OpenCV's fixed-point arithmetic in numpy.
    """
    width, height = _size_wh(image)
    new_w, new_h = size_wh
    if (new_w, new_h) == (width, height):
        return np.asarray(image)
    factor_x, factor_y = _integer_factor(width, new_w), _integer_factor(height, new_h)
    if factor_x is None or factor_y is None:
        return _resize_linear(np.asarray(image), size_wh)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image), "RGB")  # shares the buffer
    if factor_x == factor_y == 2:
        return np.asarray(image.reduce(2))
    factors = (factor_x, factor_y)
    if factor_x % 2 and factor_y % 2:
        picked: npt.NDArray[np.uint8] = _pick(image, size_wh, factors, (0, 0))
        return picked
    # An even factor averages the pixels half a step either side of the cell's centre.
    offsets_x = (-0.5, 0.5) if factor_x % 2 == 0 else (0.0, 0.0)
    offsets_y = (-0.5, 0.5) if factor_y % 2 == 0 else (0.0, 0.0)
    total = np.full((new_h, new_w, 3), 2, np.uint16)
    for offset_y in offsets_y:
        for offset_x in offsets_x:
            total += _pick(image, size_wh, factors, (offset_x, offset_y))
    total >>= 2
    return total


def letterbox_image(
    image: Image.Image | npt.NDArray[np.uint8], geometry: LetterboxGeometry
) -> npt.NDArray[np.uint8]:
    """The ``(h, w, 3)`` uint8 model input of ``geometry``: resized image on grey 114."""
    canvas = np.full((*geometry.input_hw, 3), PAD_VALUE, np.uint8)
    width, height = geometry.resized_wh
    canvas[geometry.top : geometry.top + height, geometry.left : geometry.left + width] = (
        resize_like_cv2(image, geometry.resized_wh)
    )
    return canvas


# ---------------------------------------------------------------------------------------------
# Decoding and NMS


def non_max_suppression(
    xyxy: npt.NDArray[np.float32],
    scores: npt.NDArray[np.float32],
    class_id: npt.ArrayLike,
    *,
    iou: float,
    max_det: int = DEFAULT_MAX_DET,
    agnostic: bool = False,
) -> npt.NDArray[np.int64]:
    """Indices of the boxes greedy NMS keeps, best score first, at most ``max_det``.

    Class-aware unless ``agnostic``: boxes are shifted by ``class_id * MAX_WH`` (Ultralytics'
    trick), so boxes of different classes never overlap. A box is dropped when its IoU with a
    kept, better box is ``> iou``. Arithmetic is float32 like torchvision's CPU kernel on the
    shifted boxes, and ties keep input order (its stable sort), so the same boxes survive as in
    Ultralytics.

    Each kept box costs one vectorised step over the remaining boxes of its own class (classes
    never suppress each other), and the work stops at ``max_det`` kept boxes.
    """
    count = len(scores)
    if count == 0 or max_det < 1:
        return np.zeros(0, np.int64)
    labels = np.zeros(count, np.int64) if agnostic else np.asarray(class_id, np.int64)
    boxes = np.asarray(xyxy, np.float32)
    if not agnostic:
        boxes = boxes + (labels.astype(np.float32) * np.float32(MAX_WH))[:, None]
    order = np.argsort(-np.asarray(scores, np.float32), kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    labels = labels[order]
    # Positions (in score order) of each class's boxes, best first; a heap of each class's best
    # remaining position yields the boxes in the global score order.
    by_class = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.diff(labels[by_class])) + 1
    groups = np.split(by_class, starts)
    heap = [(int(group[0]), which) for which, group in enumerate(groups)]
    heapq.heapify(heap)
    threshold = np.float64(iou)  # torchvision compares the float32 IoU with a double
    zero = np.float32(0)
    kept: list[int] = []
    # Two empty boxes have an IoU of 0/0: NaN, on purpose (see below), and no warning.
    with np.errstate(invalid="ignore", divide="ignore"):
        while heap and len(kept) < max_det:
            best, which = heapq.heappop(heap)
            kept.append(best)
            rest = groups[which][1:]
            width = np.maximum(
                zero, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest])
            )
            height = np.maximum(
                zero, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest])
            )
            inter = width * height
            overlap = inter / (areas[best] + areas[rest] - inter)
            # ``not >`` rather than ``<=``: a NaN IoU (two empty boxes) suppresses nothing.
            rest = rest[~(overlap > threshold)]
            groups[which] = rest
            if rest.size:
                heapq.heappush(heap, (int(rest[0]), which))
    result: npt.NDArray[np.int64] = order[np.asarray(kept, np.int64)]
    return result


# xyxy, scores, class ids and the mask coefficients of each kept box ((n, 0) for detect models).
_Decoded = tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[Any]
]


def _decode_anchors(
    prediction: npt.NDArray[np.floating[Any]],
    num_classes: int,
    *,
    conf: float,
    iou: float,
    max_det: int,
    agnostic: bool,
) -> _Decoded:
    """``(4 + nc, anchors)`` rows of one image to NMS-filtered xyxy, scores and class ids."""
    class_scores = prediction[4 : 4 + num_classes]
    best_scores = class_scores.max(axis=0)
    candidates = np.flatnonzero(best_scores > conf)
    if len(candidates) > MAX_NMS:
        order = np.argsort(-best_scores[candidates], kind="stable")[:MAX_NMS]
        candidates = candidates[order]
    scores = best_scores[candidates].astype(np.float32)
    class_id = class_scores[:, candidates].argmax(axis=0).astype(np.int64)
    centre = prediction[0:2, candidates].T.astype(np.float32)
    half = prediction[2:4, candidates].T.astype(np.float32) / np.float32(2)
    xyxy = np.concatenate([centre - half, centre + half], axis=1)
    keep = non_max_suppression(xyxy, scores, class_id, iou=iou, max_det=max_det, agnostic=agnostic)
    coeffs = prediction[4 + num_classes :, candidates[keep]].T
    return xyxy[keep], scores[keep], class_id[keep], coeffs


def _decode_end2end(
    prediction: npt.NDArray[np.floating[Any]], *, conf: float, max_det: int
) -> _Decoded:
    """``(n, 6)`` rows ``x1, y1, x2, y2, score, class`` of a graph that already ran NMS."""
    keep = np.flatnonzero(prediction[:, 4] > conf)[:max_det]
    rows = prediction[keep].astype(np.float32)
    return rows[:, :4], rows[:, 4], rows[:, 5].astype(np.int64), rows[:, 6:]


# ---------------------------------------------------------------------------------------------
# Images


def _read_image(path: Path) -> Image.Image:
    """An RGB image from a file, EXIF orientation applied; failures become ImageError."""
    try:
        data = path.read_bytes()
    except OSError:
        return load_image(path).image  # names the reason: missing, unreadable
    return read_image_bytes(data, name=str(path))


def read_image_bytes(
    data: bytes,
    *,
    name: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    formats: tuple[str, ...] | None = None,
) -> Image.Image:
    """An RGB image from encoded bytes (as read from a file), EXIF orientation applied.

    ``formats`` (Pillow's names, e.g. ``("JPEG", "PNG")``) limits which decoders may try the
    bytes; None lets every decoder Pillow has try them. The common case is a plain decode; bytes
    that fail it are handed to ``labeler.core.images.decode_image_bytes``, which knows every failure
    reason and raises ImageError naming ``name``.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = open_image_bytes(data, max_pixels=max_pixels, formats=formats)
            check_image_size(image, name=name, max_pixels=max_pixels)
            image.load()
    except ImageError:
        raise
    except Exception:
        return decode_image_bytes(data, name=name, max_pixels=max_pixels, formats=formats).image
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def _as_rgb(image: ImageInput, index: int) -> Image.Image | npt.NDArray[np.uint8]:
    """An RGB PIL image or ``(h, w, 3)`` uint8 array; ImageError for anything else."""
    if isinstance(image, str | Path):
        return _read_image(Path(image))
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ImageError(
                f"<array {index}>",
                "bad_array",
                f"need (h, w, 3) uint8 RGB, got {image.dtype} {image.shape}",
            )
        if 0 in image.shape[:2]:
            raise ImageError(f"<array {index}>", "bad_array", f"empty image {image.shape}")
        return image[:, :, :3]
    raise ImageError(f"<input {index}>", "bad_type", type(image).__name__)


# ---------------------------------------------------------------------------------------------
# The detector


@dataclass(frozen=True)
class _Prepared:
    index: int
    geometry: LetterboxGeometry
    pixels: npt.NDArray[np.integer[Any]]  # the resized image, (h, w, 3) values 0..255


class OnnxDetector:
    """A YOLO detect model exported to ONNX, run with onnxruntime; build it with ``load_runtime``.

    ``names`` are the class names (``Detections.class_id`` indexes them), ``imgsz`` the
    letterbox size ``(h, w)``, ``dynamic`` whether the file takes any input height and width
    (then each image is padded only to a multiple of ``stride``). One instance may be shared by
    threads; calls run one at a time because input buffers are reused.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        metadata: ModelMetadata,
        *,
        path: Path,
        imgsz: tuple[int, int],
        conf: float,
        iou: float,
        max_det: int,
        agnostic: bool,
        max_batch: int,
    ) -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        self.names: list[str] = list(metadata.names)
        self.imgsz = imgsz
        self.stride = metadata.stride
        self.conf = conf
        self.iou = iou
        self.max_det = max_det
        self.agnostic = agnostic
        # A segment export adds (batch, nm, mh, mw) prototypes; masks come in ``data["mask"]``.
        self.segment = metadata.task == "segment"
        model_input = session.get_inputs()[0]
        self._input_name = model_input.name
        self._input_dtype = _FLOAT_TYPES[model_input.type]
        batch_dim, _, height_dim, width_dim = model_input.shape
        self.dynamic = not (isinstance(height_dim, int) and isinstance(width_dim, int))
        # A fixed batch (e.g. exported with batch=4) is filled up with zeros, like AutoBackend.
        self._fixed_batch = batch_dim if isinstance(batch_dim, int) and batch_dim > 0 else None
        self.batch_size = self._fixed_batch or max_batch
        self._buffers: dict[tuple[int, int, int], npt.NDArray[np.floating[Any]]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (
            f"OnnxDetector({str(self.path)!r}, classes={len(self.names)}, imgsz={self.imgsz}, "
            f"dynamic={self.dynamic}, providers={self.session.get_providers()})"
        )

    def __call__(self, image: ImageInput) -> Detections:
        """Detections for one image (see ``predict``)."""
        return self.predict([image])[0]

    def predict(self, images: Sequence[ImageInput]) -> list[Detections]:
        """Detections per image, in order, boxes in the original image's pixels.

        Images are paths, ``PIL.Image`` or ``(h, w, 3)`` uint8 RGB arrays. Images whose inputs
        have the same shape run as one batch when the file allows it, and the next images are
        decoded while the model runs. A bad image raises ImageError naming it.
        """
        images = [images] if isinstance(images, str | Path | Image.Image | np.ndarray) else images
        images = list(images)
        chunks = [
            range(start, min(start + self.batch_size, len(images)))
            for start in range(0, len(images), self.batch_size)
        ]
        results: list[Detections] = []
        with self._lock:
            if len(chunks) <= 1:
                for chunk in chunks:
                    results.extend(self._run_chunk(self._prepare_chunk(images, chunk)))
                return results
            # Decoding and resizing release the GIL, as onnxruntime does: one worker prepares
            # the next chunk while this thread runs the model on the current one.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="promptlabel-decode") as pool:
                pending = pool.submit(self._prepare_chunk, images, chunks[0])
                for following in [*chunks[1:], None]:
                    prepared = pending.result()
                    if following is not None:
                        pending = pool.submit(self._prepare_chunk, images, following)
                    results.extend(self._run_chunk(prepared))
        return results

    def _prepare_chunk(self, images: Sequence[ImageInput], chunk: range) -> list[_Prepared]:
        return [self._prepare(images[index], index) for index in chunk]

    def _run_chunk(self, prepared: list[_Prepared]) -> list[Detections]:
        """Detections of one chunk in its order; images of one input shape run as one batch."""
        groups: dict[tuple[int, int], list[_Prepared]] = {}
        for item in prepared:
            groups.setdefault(item.geometry.input_hw, []).append(item)
        by_index: dict[int, Detections] = {}
        for group in groups.values():
            for item, detections in zip(group, self._run(group), strict=True):
                by_index[item.index] = detections
        return [by_index[item.index] for item in prepared]

    def _prepare(self, image: ImageInput, index: int) -> _Prepared:
        rgb = _as_rgb(image, index)
        geometry = letterbox_geometry(
            _size_wh(rgb), self.imgsz, auto=self.dynamic, stride=self.stride
        )
        return _Prepared(index, geometry, resize_like_cv2(rgb, geometry.resized_wh))

    def _input_buffer(self, count: int, input_hw: tuple[int, int]) -> Any:
        key = (count, *input_hw)
        buffer = self._buffers.get(key)
        if buffer is None:
            if len(self._buffers) >= 4:  # dynamic inputs: keep the few most recent shapes
                self._buffers.pop(next(iter(self._buffers)))
            buffer = np.empty((count, 3, *input_hw), self._input_dtype)
            self._buffers[key] = buffer
        return buffer

    def _run(self, group: list[_Prepared]) -> list[Detections]:
        input_hw = group[0].geometry.input_hw
        count = self._fixed_batch or len(group)
        batch = self._input_buffer(count, input_hw)
        pad = np.float32(PAD_VALUE) / np.float32(255)
        for slot, item in enumerate(group):
            geometry, plane = item.geometry, batch[slot]
            top, left = geometry.top, geometry.left
            bottom, right = top + geometry.resized_wh[1], left + geometry.resized_wh[0]
            plane[:, :top].fill(pad)
            plane[:, bottom:].fill(pad)
            plane[:, top:bottom, :left].fill(pad)
            plane[:, top:bottom, right:].fill(pad)
            # One pass: uint8 HWC -> float CHW / 255, written straight into the input buffer.
            np.divide(
                item.pixels.transpose(2, 0, 1),
                np.float32(255),
                out=plane[:, top:bottom, left:right],
                dtype=np.float32,
                casting="unsafe",
            )
        batch[len(group) :].fill(0)
        outputs = self.session.run(None, {self._input_name: batch})
        output = outputs[0]
        protos = outputs[1] if self.segment else None
        return [
            self._postprocess(output[slot], item.geometry, None if protos is None else protos[slot])
            for slot, item in enumerate(group)
        ]

    def _postprocess(
        self,
        prediction: npt.NDArray[np.floating[Any]],
        geometry: LetterboxGeometry,
        protos: npt.NDArray[np.floating[Any]] | None = None,
    ) -> Detections:
        num_classes = len(self.names)
        if self.metadata.end2end:
            if prediction.ndim != 2 or prediction.shape[1] < 6:
                raise ModelLoadError(
                    f"{self.path}: an end-to-end model must output (batch, n, 6) rows, "
                    f"got (batch, {', '.join(map(str, prediction.shape))})"
                )
            xyxy, scores, class_id, coeffs = _decode_end2end(
                prediction, conf=self.conf, max_det=self.max_det
            )
        else:
            if prediction.ndim != 2 or prediction.shape[0] < 4 + num_classes:
                raise ModelLoadError(
                    f"{self.path}: a detect model with {num_classes} classes must output "
                    f"(batch, {4 + num_classes}, anchors), got "
                    f"(batch, {', '.join(map(str, prediction.shape))})"
                )
            xyxy, scores, class_id, coeffs = _decode_anchors(
                prediction,
                num_classes,
                conf=self.conf,
                iou=self.iou,
                max_det=self.max_det,
                agnostic=self.agnostic,
            )
        if protos is None:
            return Detections(
                xyxy=geometry.to_original(xyxy),
                class_id=class_id,
                confidence=scores,
                metadata={"image_wh": geometry.image_wh},
            )
        masks, present = instance_masks(
            protos,
            coeffs[:, : protos.shape[0]],
            xyxy,
            input_hw=geometry.input_hw,
            resized_wh=geometry.resized_wh,
            left=geometry.left,
            top=geometry.top,
            image_wh=geometry.image_wh,
        )
        # As SegmentationPredictor: boxes whose mask is empty at input resolution are dropped
        # (``masks`` holds the kept boxes' masks only).
        return Detections(
            xyxy=geometry.to_original(xyxy[present]),
            class_id=class_id[present],
            confidence=scores[present],
            data={"mask": masks},
            metadata={"image_wh": geometry.image_wh},
        )


# ---------------------------------------------------------------------------------------------
# Loading


def _default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [name for name in _PREFERRED_PROVIDERS if name in available] or available


def _check_options(conf: float, iou: float, max_det: int, max_batch: int) -> None:
    problems = []
    if not 0 <= conf <= 1:
        problems.append(f"conf must be within [0, 1], got {conf}")
    if not 0 <= iou <= 1:
        problems.append(f"iou must be within [0, 1], got {iou}")
    if max_det < 1:
        problems.append(f"max_det must be >= 1, got {max_det}")
    if max_batch < 1:
        problems.append(f"max_batch must be >= 1, got {max_batch}")
    if problems:
        raise InputError("runtime options: " + "; ".join(problems))


def _resolve_imgsz(
    requested: int | tuple[int, int] | None,
    metadata: ModelMetadata,
    input_shape: Sequence[Any],
    source: str,
) -> tuple[int, int]:
    """The letterbox size: a fixed input's size; for a dynamic one ``requested`` or the export's."""
    fixed = tuple(input_shape[2:]) if all(isinstance(d, int) for d in input_shape[2:]) else None
    if requested is None:
        return (int(fixed[0]), int(fixed[1])) if fixed else metadata.imgsz
    size = (requested, requested) if isinstance(requested, int) else tuple(requested)
    if len(size) != 2 or not all(isinstance(x, int) and x > 0 for x in size):
        raise InputError(f"imgsz must be a positive int or (height, width), got {requested!r}")
    if fixed:
        if size != fixed:
            raise InputError(
                f"{source}: the model takes a fixed {fixed[0]}x{fixed[1]} input; imgsz "
                f"{size} needs a dynamic export (export with dynamic=True)"
            )
        return (int(size[0]), int(size[1]))
    # As Ultralytics' check_imgsz: round each side up to a multiple of the stride.
    stride = metadata.stride
    rounded = tuple(max(math.ceil(x / stride) * stride, stride) for x in size)
    if rounded != size:
        logger.warning("imgsz %s is not a multiple of stride %d; using %s", size, stride, rounded)
    return (int(rounded[0]), int(rounded[1]))


def load_runtime(
    path: str | Path,
    *,
    providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
    conf: float = DEFAULT_CONF,
    iou: float = DEFAULT_IOU,
    max_det: int = DEFAULT_MAX_DET,
    agnostic: bool = False,
    imgsz: int | tuple[int, int] | None = None,
    max_batch: int = DEFAULT_MAX_BATCH,
    threads: int | None = None,
) -> OnnxDetector:
    """Load an Ultralytics YOLO detect export (``.onnx``) for ``OnnxDetector.predict``.

    ``providers`` are onnxruntime execution providers (default: CUDA when onnxruntime-gpu has it,
    else CPU). ``conf``, ``iou``, ``max_det`` and ``agnostic`` mean what they mean in
    ``YOLO.predict``. ``imgsz`` changes the letterbox size of a dynamic-shape export (default:
    its export size); ``max_batch`` caps how many images run together when the batch is dynamic;
    ``threads`` sets onnxruntime's intra-op threads (default: one per physical core).
    Raises ModelLoadError naming the file when it is missing, not ONNX, not a detect model or
    lacks the metadata Ultralytics writes; InputError for a bad option.
    """
    _check_options(conf, iou, max_det, max_batch)
    if threads is not None and threads < 1:
        raise InputError(f"runtime options: threads must be >= 1, got {threads}")
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ModelLoadError(
            f"{source}: no such model file; export one with Ultralytics "
            "(YOLO(weights).export(format='onnx')) or promptlabel's export command"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3  # onnxruntime's graph-optimisation notes are not user news
    if threads is not None:
        options.intra_op_num_threads = threads
    # Idle onnxruntime workers otherwise spin between runs and take the cores the next image's
    # decoding runs on (measured: same wall time, ~15% less CPU per image on 2 cores).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(
            source, options, providers=list(providers) if providers else _default_providers()
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{source}: onnxruntime cannot load it as an ONNX model "
            f"({type(exc).__name__}: {str(exc).strip()[:200]})"
        ) from None
    metadata = parse_metadata(session.get_modelmeta().custom_metadata_map, source=source)
    if metadata.task not in ("detect", "segment"):
        raise ModelLoadError(
            f"{source}: the model's task is {metadata.task!r}; the device runtime runs detect "
            "and segment models only"
        )
    if metadata.task == "segment" and len(session.get_outputs()) < 2:
        raise ModelLoadError(
            f"{source}: a segment model must have two outputs (rows and mask prototypes), got "
            f"{len(session.get_outputs())}"
        )
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4 or inputs[0].type not in _FLOAT_TYPES:
        raise ModelLoadError(
            f"{source}: expected one float image input (batch, 3, height, width), got "
            + ", ".join(f"{i.name} {i.type} {i.shape}" for i in inputs)
        )
    channels = inputs[0].shape[1]
    if isinstance(channels, int) and channels != 3:
        raise ModelLoadError(f"{source}: the model takes {channels} channels, not 3 (RGB)")
    detector = OnnxDetector(
        session,
        metadata,
        path=path,
        imgsz=_resolve_imgsz(imgsz, metadata, inputs[0].shape, source),
        conf=conf,
        iou=iou,
        max_det=max_det,
        agnostic=agnostic,
        max_batch=max_batch,
    )
    logger.info("loaded %r", detector)
    return detector
