"""The device runtime: Ultralytics' predictions from numpy, Pillow and onnxruntime alone."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from distill.model_metadata import REQUIRED_METADATA
from labeler.core.detections import Detections
from labeler.core.exceptions import ImageError, InputError, ModelLoadError
from serve.runtime.onnx import (
    LetterboxGeometry,
    OnnxDetector,
    letterbox_geometry,
    letterbox_image,
    load_runtime,
    non_max_suppression,
    resize_like_cv2,
)
from tests.fakes.students import SHAPE_NAMES
from tests.serve.conftest import Students

REPO_ROOT = Path(__file__).resolve().parents[3]

# ---------------------------------------------------------------------------------------------
# Parity with Ultralytics


def ultralytics_predict(
    onnx_path: Path, images: Sequence[Path], *, one_by_one: bool, **options: Any
) -> list[Detections]:
    """``YOLO(onnx_path).predict`` as Detections (boxes, classes and scores as float32)."""
    from ultralytics import YOLO

    model = YOLO(str(onnx_path), task="detect")
    groups = [[str(p)] for p in images] if one_by_one else [[str(p) for p in images]]
    results = [r for group in groups for r in model.predict(group, verbose=False, **options)]
    return [
        Detections(
            xyxy=r.boxes.xyxy.numpy(),
            class_id=r.boxes.cls.numpy().astype(np.int64),
            confidence=r.boxes.conf.numpy(),
        )
        for r in results
    ]


def assert_same_detections(ours: Detections, theirs: Detections, label: str) -> None:
    """Same boxes in the same order: classes equal, boxes within 1 px, scores within 1e-3."""
    assert len(ours) == len(theirs), f"{label}: {len(ours)} boxes, Ultralytics {len(theirs)}"
    np.testing.assert_array_equal(ours.class_id, theirs.class_id, err_msg=label)
    np.testing.assert_allclose(ours.xyxy, theirs.xyxy, atol=1.0, rtol=0, err_msg=label)
    np.testing.assert_allclose(ours.confidence, theirs.confidence, atol=1e-3, rtol=0, err_msg=label)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("export", "conf", "agnostic"),
    [("static", 0.05, False), ("static", 0.25, True), ("batch2", 0.05, False)],
)
def test_predictions_match_ultralytics(
    students: Students, sample_images: list[Path], export: str, conf: float, agnostic: bool
) -> None:
    onnx_path = getattr(students, export)
    detector = load_runtime(onnx_path, conf=conf, iou=0.7, agnostic=agnostic)
    ours = detector.predict(sample_images)
    theirs = ultralytics_predict(
        onnx_path,
        sample_images,
        one_by_one=False,
        conf=conf,
        iou=0.7,
        agnostic_nms=agnostic,
        imgsz=students.imgsz,
    )
    assert sum(len(d) for d in ours) > 100  # the comparison has boxes to compare
    for path, mine, reference in zip(sample_images, ours, theirs, strict=True):
        assert_same_detections(mine, reference, f"{export} {path.name}")
        with Image.open(path) as image:
            width, height = image.size
        if path.name == "rotated.jpg":  # EXIF orientation 6: shown rotated by 90 degrees
            width, height = height, width
        assert mine.metadata["image_wh"] == (width, height)


@pytest.mark.slow
def test_dynamic_export_letterboxes_minimally_and_matches_ultralytics(
    students: Students, sample_images: list[Path]
) -> None:
    detector = load_runtime(students.dynamic, conf=0.05)
    assert detector.dynamic and detector.imgsz == (256, 256)
    ours = detector.predict(sample_images)
    # One image per call: given several images of different shapes, Ultralytics pads them all
    # to the square imgsz; alone, each gets the minimal rectangle, as the runtime always does.
    theirs = ultralytics_predict(
        students.dynamic, sample_images, one_by_one=True, conf=0.05, imgsz=students.imgsz
    )
    for path, mine, reference in zip(sample_images, ours, theirs, strict=True):
        assert_same_detections(mine, reference, f"dynamic {path.name}")


def test_dynamic_export_runs_smaller_inputs_for_wide_images(students: Students) -> None:
    seen: list[tuple[int, ...]] = []
    detector = load_runtime(students.dynamic)
    detector.session = RecordingSession(detector.session, seen)
    detector.predict([np.zeros((720, 1280, 3), np.uint8), np.zeros((300, 300, 3), np.uint8)])
    # 1280x720 to 256x144, padded to 160 (a multiple of the stride 32) instead of 256.
    assert seen == [(1, 3, 160, 256), (1, 3, 256, 256)]
    static = load_runtime(students.static)
    static.session = RecordingSession(static.session, seen := [])
    static(np.zeros((720, 1280, 3), np.uint8))
    assert seen == [(1, 3, 256, 256)]


def test_dynamic_export_takes_another_imgsz(students: Students) -> None:
    seen: list[tuple[int, ...]] = []
    detector = load_runtime(students.dynamic, imgsz=(320, 300))  # 300 is rounded up to 320
    assert detector.imgsz == (320, 320)
    detector.session = RecordingSession(detector.session, seen)
    detector(np.zeros((720, 1280, 3), np.uint8))
    assert seen == [(1, 3, 192, 320)]
    with pytest.raises(InputError, match="fixed 256x256 input"):
        load_runtime(students.static, imgsz=320)


class RecordingSession:
    """An onnxruntime session that records the input shape of every run."""

    def __init__(self, session: Any, seen: list[tuple[int, ...]]) -> None:
        self.session = session
        self.seen = seen

    def run(self, names: Any, feed: dict[str, np.ndarray]) -> Any:
        self.seen.extend(tuple(value.shape) for value in feed.values())
        return self.session.run(names, feed)


def test_batch_equals_one_by_one(students: Students, sample_images: list[Path]) -> None:
    # Three 16:9 images share an input shape, so the dynamic file runs them as one batch.
    seen: list[tuple[int, ...]] = []
    detector = load_runtime(students.dynamic, conf=0.05)
    one_by_one = [detector(path) for path in sample_images]
    detector.session = RecordingSession(detector.session, seen)
    batched = detector.predict(sample_images)
    assert any(shape[0] > 1 for shape in seen) and len(seen) < len(sample_images)
    for single, batch in zip(one_by_one, batched, strict=True):
        assert_same_detections(batch, single, "batch vs single")
    # A file exported with batch=2 is always fed two images; the last one is padded with zeros.
    # Same weights as the batch-1 static file, so the same detections.
    static = load_runtime(students.static, conf=0.05)
    fixed = load_runtime(students.batch2, conf=0.05)
    fixed.session = RecordingSession(fixed.session, seen := [])
    odd_count = fixed.predict(sample_images[:3])
    assert seen == [(2, 3, 256, 256), (2, 3, 256, 256)]
    for path, batch in zip(sample_images[:3], odd_count, strict=True):
        assert_same_detections(batch, static(path), f"batch2 {path.name}")


def test_inputs_paths_pil_and_arrays_agree(students: Students, sample_images: list[Path]) -> None:
    detector = load_runtime(students.static, conf=0.05)
    path = sample_images[2]  # 333x517: the non-integer resize path
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    from_path = detector(path)
    from_str = detector(str(path))
    from_pil = detector(rgb)
    from_array = detector(np.asarray(rgb))
    from_rgba = detector(np.asarray(rgb.convert("RGBA")))
    for other in (from_str, from_pil, from_array, from_rgba):
        assert_same_detections(other, from_path, "input kinds")
    assert len(from_path) > 0
    assert from_path.metadata == {"image_wh": (333, 517)}


def test_detector_attributes(students: Students) -> None:
    detector = load_runtime(students.static)
    assert isinstance(detector, OnnxDetector)
    assert detector.names == list(SHAPE_NAMES)
    assert detector.imgsz == (256, 256)
    assert detector.dynamic is False
    assert detector.stride == 32
    assert "static.onnx" in repr(detector)
    assert detector.predict([]) == []


# ---------------------------------------------------------------------------------------------
# Base install only


BLOCKED_IMPORTS_SCRIPT = textwrap.dedent(
    """
    import sys

    BLOCKED = {"torch", "ultralytics", "transformers", "cv2", "torchvision"}

    class BlockHeavyImports:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: the device runtime must not need it")
            return None

    sys.meta_path.insert(0, BlockHeavyImports())

    from serve.runtime.onnx import load_runtime

    detector = load_runtime(sys.argv[1], conf=0.05)
    detections = detector.predict([sys.argv[2]])[0]
    loaded = sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED)
    assert not loaded, loaded
    print(len(detections), detections.metadata["image_wh"])
    """
)


@pytest.mark.slow
def test_runs_with_the_base_install_only(students: Students, sample_images: list[Path]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORTS_SCRIPT, str(students.static), str(sample_images[0])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    count, _, image_wh = result.stdout.strip().partition(" ")
    assert int(count) > 0 and image_wh == "(1280, 720)"


# ---------------------------------------------------------------------------------------------
# Letterbox and resize


LETTERBOX_CASES = [
    # (image_wh, target_hw, auto)
    ((1280, 720), (640, 640), False),
    ((1280, 720), (640, 640), True),
    ((480, 640), (640, 640), False),
    ((333, 517), (640, 640), True),
    ((333, 517), (256, 256), False),
    ((100, 60), (256, 256), True),
    ((7, 3000), (640, 640), False),  # a thin image keeps at least one pixel
    ((1000, 1000), (480, 640), False),
    ((641, 639), (640, 640), True),
]


@pytest.mark.parametrize(("image_wh", "target_hw", "auto"), LETTERBOX_CASES)
def test_letterbox_matches_ultralytics(
    image_wh: tuple[int, int], target_hw: tuple[int, int], auto: bool
) -> None:
    from ultralytics.data.augment import LetterBox

    rng = np.random.default_rng(sum(image_wh))
    rgb = rng.integers(0, 256, (image_wh[1], image_wh[0], 3), dtype=np.uint8)
    reference = LetterBox(target_hw, auto=auto, stride=32)
    params = reference.get_params({"img": rgb})
    geometry = letterbox_geometry(image_wh, target_hw, auto=auto, stride=32)
    assert geometry.resized_wh == tuple(params["new_unpad"])
    assert (geometry.left, geometry.top) == (params["left"], params["top"])
    expected = reference(image=np.ascontiguousarray(rgb[:, :, ::-1]))[:, :, ::-1]  # BGR in, out
    np.testing.assert_array_equal(letterbox_image(Image.fromarray(rgb), geometry), expected)
    np.testing.assert_array_equal(letterbox_image(rgb, geometry), expected)


RESIZE_CASES = [
    # integer shrink factors per axis, Pillow's fast paths
    *[
        ((w * kx, h * ky), (w, h))
        for (w, h), (kx, ky) in [
            ((40, 30), k) for k in itertools.product((1, 2, 3, 4, 5, 6), repeat=2)
        ]
    ],
    # OpenCV's general fixed-point path, shrinking and enlarging
    ((1000, 700), (640, 448)),
    ((333, 517), (412, 640)),
    ((64, 48), (640, 480)),
    ((101, 37), (211, 77)),
    ((1, 1), (5, 3)),
    ((7, 5), (640, 457)),
    ((5, 900), (1, 256)),
]


@pytest.mark.parametrize(("source_wh", "target_wh"), RESIZE_CASES)
def test_resize_is_bit_exact_with_opencv(
    source_wh: tuple[int, int], target_wh: tuple[int, int]
) -> None:
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(source_wh[0] * 7919 + target_wh[1])
    pixels = rng.integers(0, 256, (source_wh[1], source_wh[0], 3), dtype=np.uint8)
    expected = cv2.resize(pixels, target_wh, interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(resize_like_cv2(pixels, target_wh), expected)
    np.testing.assert_array_equal(resize_like_cv2(Image.fromarray(pixels), target_wh), expected)


@pytest.mark.parametrize(("image_wh", "target_hw", "auto"), LETTERBOX_CASES)
def test_letterbox_round_trip(
    image_wh: tuple[int, int], target_hw: tuple[int, int], auto: bool
) -> None:
    geometry = letterbox_geometry(image_wh, target_hw, auto=auto)
    rng = np.random.default_rng(0)
    corners = rng.uniform(0, 1, (50, 4)).astype(np.float32) * np.float32(image_wh * 2)
    xyxy = np.concatenate([corners[:, :2].clip(max=corners[:, 2:]), corners[:, 2:]], axis=1)
    back = geometry.to_original(geometry.to_input(xyxy))
    np.testing.assert_allclose(back, xyxy, atol=1e-2)
    height, width = geometry.input_hw
    assert height <= target_hw[0] and width <= target_hw[1]
    if auto:
        assert height % 32 == 0 or height == target_hw[0]
        assert width % 32 == 0 or width == target_hw[1]
    else:
        assert geometry.input_hw == target_hw


@pytest.mark.parametrize(
    ("image_wh", "box"),
    [
        ((1280, 720), (100, 50, 400, 300)),
        ((333, 517), (10, 200, 300, 480)),
        ((60, 40), (5, 8, 30, 33)),
    ],
)
def test_a_drawn_box_maps_back_to_its_pixels(
    image_wh: tuple[int, int], box: tuple[int, int, int, int]
) -> None:
    """A white rectangle found in the letterboxed input maps back onto the drawn rectangle."""
    pixels = np.zeros((image_wh[1], image_wh[0], 3), np.uint8)
    x1, y1, x2, y2 = box
    pixels[y1:y2, x1:x2] = 255
    geometry = letterbox_geometry(image_wh, (256, 256))
    canvas = letterbox_image(pixels, geometry)
    assert (canvas[: geometry.top] == 114).all() and (canvas[:, : geometry.left] == 114).all()
    rows = np.flatnonzero((canvas[..., 0] > 127).any(axis=1))
    cols = np.flatnonzero((canvas[..., 0] > 127).any(axis=0))
    found = np.array([[cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]], np.float32)
    scale = geometry.resized_wh[0] / image_wh[0]
    # A pixel edge in the input is exact to half an input pixel: 0.5 / scale original pixels.
    np.testing.assert_allclose(geometry.to_original(found)[0], box, atol=0.5 / scale + 1e-3)


# ---------------------------------------------------------------------------------------------
# NMS


def reference_nms(
    xyxy: np.ndarray, scores: np.ndarray, class_id: np.ndarray, iou: float, agnostic: bool
) -> list[int]:
    """Greedy NMS written as plainly as possible (float64, per-class, Python loops)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept: list[int] = []
    for i in order:
        if all(
            (not agnostic and class_id[i] != class_id[k]) or box_iou(xyxy[i], xyxy[k]) <= iou
            for k in kept
        ):
            kept.append(i)
    return kept


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)


def test_nms_hand_made_boxes() -> None:
    xyxy = np.array(
        [
            [0, 0, 10, 10],  # 0: best
            [1, 1, 11, 11],  # 1: IoU 0.68 with 0, same class
            [1, 1, 11, 11],  # 2: same box as 1, other class
            [50, 50, 60, 60],  # 3: alone
            [0, 0, 10, 12],  # 4: IoU 10/12 with 0, same class
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32)
    class_id = np.array([0, 0, 1, 0, 0])
    aware = non_max_suppression(xyxy, scores, class_id, iou=0.5)
    assert aware.tolist() == [0, 2, 3]
    assert non_max_suppression(xyxy, scores, class_id, iou=0.5, agnostic=True).tolist() == [0, 3]
    assert non_max_suppression(xyxy, scores, class_id, iou=0.7).tolist() == [0, 1, 2, 3]
    assert non_max_suppression(xyxy, scores, class_id, iou=0.9).tolist() == [0, 1, 2, 3, 4]
    assert non_max_suppression(xyxy, scores, class_id, iou=0.5, max_det=2).tolist() == [0, 2]
    empty = non_max_suppression(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), [], iou=0.5)
    assert empty.tolist() == []


def test_nms_iou_equal_to_the_threshold_is_kept() -> None:
    xyxy = np.array([[0, 0, 4, 1], [0, 0, 2, 1]], np.float32)  # IoU exactly 0.5
    scores = np.array([0.9, 0.8], np.float32)
    assert non_max_suppression(xyxy, scores, [0, 0], iou=0.5).tolist() == [0, 1]
    assert non_max_suppression(xyxy, scores, [0, 0], iou=0.4999).tolist() == [0]


def test_nms_keeps_empty_boxes_quietly() -> None:
    # Two zero-area boxes have an IoU of 0/0; neither suppresses the other, and numpy's
    # "invalid value" warning (an error under -W error) must not escape.
    xyxy = np.array([[5, 5, 5, 5], [5, 5, 5, 5], [0, 0, 4, 4]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert non_max_suppression(xyxy, scores, [0, 0, 0], iou=0.5).tolist() == [0, 1, 2]


@pytest.mark.parametrize(("iou", "agnostic"), [(0.3, False), (0.5, True), (0.7, False)])
def test_nms_matches_a_plain_reference_and_torchvision(iou: float, agnostic: bool) -> None:
    rng = np.random.default_rng(int(iou * 10))
    centre = rng.uniform(0, 200, (400, 2))
    size = rng.uniform(5, 60, (400, 2))
    xyxy = np.concatenate([centre - size / 2, centre + size / 2], axis=1).astype(np.float32)
    scores = rng.permutation(400).astype(np.float32) / 400  # distinct: no ties to break
    class_id = rng.integers(0, 3, 400)
    ours = non_max_suppression(
        xyxy, scores, class_id, iou=iou, agnostic=agnostic, max_det=len(scores)
    ).tolist()
    assert len(ours) > 100
    assert ours == reference_nms(xyxy, scores, class_id, iou, agnostic)
    capped = non_max_suppression(xyxy, scores, class_id, iou=iou, agnostic=agnostic, max_det=50)
    assert capped.tolist() == ours[:50]
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    offset = 0 if agnostic else 7680
    boxes = torch.from_numpy(xyxy) + torch.from_numpy(class_id)[:, None].float() * offset
    expected = torchvision.ops.nms(boxes, torch.from_numpy(scores), iou).tolist()
    assert ours == expected


# ---------------------------------------------------------------------------------------------
# Metadata and errors


def _copy_without_metadata(source: Path, target: Path, keep: Sequence[str] = ()) -> Path:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key in keep]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(target))
    return target


def test_a_model_of_another_task_is_refused(students: Students, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = onnx.load(str(students.static))
    for prop in model.metadata_props:
        if prop.key == "task":
            prop.value = "pose"
    pose = tmp_path / "pose.onnx"
    onnx.save(model, str(pose))
    with pytest.raises(ModelLoadError, match="task is 'pose'") as caught:
        load_runtime(pose)
    assert str(pose) in str(caught.value)


def test_load_errors_name_the_file(students: Students, tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ModelLoadError, match="no such model file") as caught:
        load_runtime(missing)
    assert str(missing) in str(caught.value)

    not_onnx = tmp_path / "notes.onnx"
    not_onnx.write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="cannot load it as an ONNX model") as caught:
        load_runtime(not_onnx)
    assert str(not_onnx) in str(caught.value)

    with pytest.raises(ModelLoadError, match="no such model file"):
        load_runtime(tmp_path)  # a directory

    bare = _copy_without_metadata(students.static, tmp_path / "bare.onnx")
    with pytest.raises(ModelLoadError) as caught:
        load_runtime(bare)
    text = str(caught.value)
    assert str(bare) in text and all(key in text for key in REQUIRED_METADATA)
    assert "export(format='onnx')" in text

    no_task = _copy_without_metadata(
        students.static, tmp_path / "no-task.onnx", keep=("names", "imgsz", "stride")
    )
    with pytest.raises(ModelLoadError, match="\\['task'\\]"):
        load_runtime(no_task)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"conf": 1.5}, "conf must be within"),
        ({"iou": -0.1}, "iou must be within"),
        ({"max_det": 0}, "max_det must be >= 1"),
        ({"max_batch": 0}, "max_batch must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"imgsz": (256,)}, "imgsz must be"),
    ],
)
def test_bad_options(students: Students, options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_runtime(students.dynamic, **options)


def _missing(folder: Path) -> Path:
    return folder / "missing.jpg"


def _empty(folder: Path) -> Path:
    (folder / "empty.jpg").write_bytes(b"")
    return folder / "empty.jpg"


def _text(folder: Path) -> Path:
    (folder / "text.jpg").write_text("hello, not a picture")
    return folder / "text.jpg"


def _truncated(folder: Path) -> Path:
    path = folder / "cut.jpg"
    Image.new("RGB", (64, 48), (10, 200, 30)).save(path, quality=90)
    path.write_bytes(path.read_bytes()[:200])
    return path


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_missing, "missing"),
        (_empty, "zero_bytes"),
        (_text, "not_an_image"),
        (_truncated, "truncated"),
    ],
)
def test_bad_image_files_raise_image_error(
    students: Students, tmp_path: Path, make: Any, reason: str
) -> None:
    detector = load_runtime(students.static)
    path = make(tmp_path)
    with pytest.raises(ImageError) as caught:
        detector.predict([path])
    assert caught.value.reason == reason and caught.value.path == str(path)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10), np.uint8),
        np.zeros((10, 10, 2), np.uint8),
        np.zeros((0, 10, 3), np.uint8),
        42,
    ],
)
def test_bad_in_memory_images_raise_image_error(students: Students, image: Any) -> None:
    detector = load_runtime(students.static)
    with pytest.raises(ImageError):
        detector(image)


def test_16_bit_png_keeps_its_high_byte(students: Students, tmp_path: Path) -> None:
    detector = load_runtime(students.static, conf=0.05)
    rng = np.random.default_rng(3)
    high = rng.integers(0, 256, (120, 90), dtype=np.uint16)
    Image.fromarray((high << 8) | 0x7F).save(tmp_path / "deep.png")
    expected = detector(np.repeat(high.astype(np.uint8)[:, :, None], 3, axis=2))
    assert_same_detections(detector(tmp_path / "deep.png"), expected, "16-bit png")


def test_geometry_type_is_public() -> None:
    geometry = letterbox_geometry((1280, 720), (640, 640))
    assert geometry == LetterboxGeometry((1280, 720), (640, 360), 0, 140, (640, 640))


# ---------------------------------------------------------------------------------------------
# Decoding, on tiny hand-made graphs whose output is a constant


def constant_model(
    path: Path,
    output: np.ndarray,
    metadata: dict[str, str],
    input_shapes: Sequence[Sequence[int | str]] = ((1, 3, 32, 32),),
) -> Path:
    """An ONNX file that ignores its image input(s) and always outputs ``output``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    inputs = [
        helper.make_tensor_value_info(f"images{i}" if i else "images", TensorProto.FLOAT, shape)
        for i, shape in enumerate(input_shapes)
    ]
    node = helper.make_node(
        "Constant", [], ["output0"], value=numpy_helper.from_array(output.astype(np.float32))
    )
    graph = helper.make_graph(
        [node],
        "constant",
        inputs,
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, output.shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


TINY_METADATA = {
    "names": "{0: 'circle', 1: 'square'}",
    "imgsz": "[32, 32]",
    "stride": "32",
    "task": "detect",
}


def test_decodes_anchor_rows_to_original_pixels(tmp_path: Path) -> None:
    # (1, 4 + 2 classes, 5 anchors): centre x, centre y, width, height, then the class scores.
    output = np.array(
        [
            [
                [8, 9, 24, 16, 8.5],
                [8, 9, 16, 16, 8],
                [8, 8, 8, 4, 8],
                [4, 4, 8, 4, 4],
                [0.9, 0.2, 0.1, 0.6, 0.5],
                [0.1, 0.85, 0.3, 0.7, 0.2],
            ]
        ],
        np.float32,
    )
    detector = load_runtime(
        constant_model(tmp_path / "rows.onnx", output, TINY_METADATA), conf=0.25, iou=0.5
    )
    # Model-input boxes: anchor 0 (4, 6, 12, 10) class 0; 1 (5, 7, 13, 11) class 1, overlapping
    # 0 but another class; 2 (20, 12, 28, 20) class 1 at 0.3; 3 (14, 14, 18, 18) class 1;
    # 4 (4.5, 6, 12.5, 10) class 0, IoU 0.88 with anchor 0: suppressed.
    detections = detector(np.zeros((32, 64, 3), np.uint8))
    np.testing.assert_array_equal(detections.class_id, [0, 1, 1, 1])
    np.testing.assert_allclose(detections.confidence, [0.9, 0.85, 0.7, 0.3])
    # The 64x32 image was halved to 32x16 with 8 grey rows on top: x * 2, (y - 8) * 2, clipped.
    np.testing.assert_allclose(
        detections.xyxy, [[8, 0, 24, 4], [10, 0, 26, 6], [28, 12, 36, 20], [40, 8, 56, 24]]
    )
    assert detections.metadata == {"image_wh": (64, 32)}
    high_conf = load_runtime(tmp_path / "rows.onnx", conf=0.8, iou=0.5)
    assert len(high_conf(np.zeros((32, 64, 3), np.uint8))) == 2
    agnostic = load_runtime(tmp_path / "rows.onnx", iou=0.45, agnostic=True)
    assert agnostic(np.zeros((32, 64, 3), np.uint8)).confidence.tolist() == pytest.approx(
        [0.9, 0.7, 0.3]
    )
    assert len(load_runtime(tmp_path / "rows.onnx", max_det=1)(np.zeros((8, 8, 3), np.uint8))) == 1


def test_decodes_end_to_end_rows(tmp_path: Path) -> None:
    rows = np.zeros((1, 300, 6), np.float32)
    rows[0, :3] = [[0, 0, 16, 16, 0.9, 1], [8, 8, 32, 32, 0.5, 0], [1, 1, 2, 2, 0.1, 0]]
    metadata = {**TINY_METADATA, "end2end": "True"}
    detector = load_runtime(constant_model(tmp_path / "e2e.onnx", rows, metadata), conf=0.25)
    detections = detector(np.zeros((64, 64, 3), np.uint8))  # scaled by 0.5, no padding
    np.testing.assert_allclose(detections.xyxy, [[0, 0, 32, 32], [16, 16, 64, 64]])
    np.testing.assert_array_equal(detections.class_id, [1, 0])
    np.testing.assert_allclose(detections.confidence, [0.9, 0.5])


def test_rejects_models_it_cannot_run(tmp_path: Path) -> None:
    anchors = np.zeros((1, 6, 4), np.float32)
    two_inputs = constant_model(
        tmp_path / "two.onnx", anchors, TINY_METADATA, ((1, 3, 32, 32), (1, 3, 32, 32))
    )
    with pytest.raises(ModelLoadError, match="expected one float image input"):
        load_runtime(two_inputs)
    one_channel = constant_model(tmp_path / "gray.onnx", anchors, TINY_METADATA, ((1, 1, 32, 32),))
    with pytest.raises(ModelLoadError, match="takes 1 channels"):
        load_runtime(one_channel)
    three_classes = {**TINY_METADATA, "names": "{0: 'a', 1: 'b', 2: 'c'}"}
    wrong_rows = load_runtime(constant_model(tmp_path / "rows.onnx", anchors, three_classes))
    with pytest.raises(ModelLoadError, match="3 classes must output \\(batch, 7, anchors\\)"):
        wrong_rows(np.zeros((32, 32, 3), np.uint8))
