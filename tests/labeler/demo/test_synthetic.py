"""Synthetic images: exact boxes, determinism, and sample files that exercise the loader."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.core.images import iter_image_paths, load_image, sha256_file
from labeler.demo.synthetic import (
    SHAPE_CLASSES,
    make_shapes_image,
    write_sample_images,
    write_shapes_items,
)


def _boxes_do_not_overlap(xyxy: np.ndarray) -> bool:
    for i in range(len(xyxy)):
        for j in range(i + 1, len(xyxy)):
            a, b = xyxy[i], xyxy[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                return False
    return True


@pytest.mark.parametrize("seed", range(6))
def test_boxes_are_the_exact_pixel_extent_of_each_shape(seed: int) -> None:
    image, detections = make_shapes_image(np.random.default_rng(seed), (160, 120), n_shapes=4)
    pixels = np.asarray(image).astype(np.int16)

    assert len(detections) > 0
    for (x1, y1, x2, y2), _, _ in detections:
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        # Every shape is convex around its box centre, so the centre pixel has the shape's colour.
        colour = pixels[(y1 + y2) // 2, (x1 + x2) // 2]
        inside = (pixels == colour).all(axis=-1)
        window = inside[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1]
        rows, cols = np.nonzero(window)
        # The colour reaches every edge of the box and never the one-pixel ring around it.
        assert rows.min() + max(y1 - 1, 0) == y1
        assert rows.max() + max(y1 - 1, 0) == y2 - 1
        assert cols.min() + max(x1 - 1, 0) == x1
        assert cols.max() + max(x1 - 1, 0) == x2 - 1


def test_shapes_are_inside_the_image_and_never_overlap() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        image, detections = make_shapes_image(rng, (96, 64), n_shapes=6)
        assert image.size == (96, 64)
        assert image.mode == "RGB"
        assert (detections.xyxy[:, :2] >= 0).all()
        assert (detections.xyxy[:, 2] <= 96).all()
        assert (detections.xyxy[:, 3] <= 64).all()
        assert (detections.xyxy[:, 2:] > detections.xyxy[:, :2]).all()
        assert _boxes_do_not_overlap(detections.xyxy)
        assert detections.metadata["image_wh"] == (96, 64)
        assert (detections.confidence == 1.0).all()


def test_same_seed_same_image_and_boxes() -> None:
    first_image, first = make_shapes_image(np.random.default_rng(3), (128, 96), n_shapes=3)
    again_image, again = make_shapes_image(np.random.default_rng(3), (128, 96), n_shapes=3)
    other_image, _ = make_shapes_image(np.random.default_rng(4), (128, 96), n_shapes=3)

    assert np.array_equal(np.asarray(first_image), np.asarray(again_image))
    assert np.array_equal(first.xyxy, again.xyxy)
    assert np.array_equal(first.class_id, again.class_id)
    assert not np.array_equal(np.asarray(first_image), np.asarray(other_image))


def test_class_ids_index_the_classes_given() -> None:
    rng = np.random.default_rng(0)
    seen: set[int] = set()
    for _ in range(10):
        _, detections = make_shapes_image(rng, (128, 128), 4, classes=("triangle", "circle"))
        seen.update(detections.class_id.tolist())

    assert seen == {0, 1}


def test_zero_shapes_gives_a_background_image() -> None:
    image, detections = make_shapes_image(np.random.default_rng(0), (64, 48), n_shapes=0)

    assert len(detections) == 0
    assert image.size == (64, 48)


@pytest.mark.parametrize(
    ("image_wh", "n_shapes", "classes"),
    [
        ((4, 64), 1, SHAPE_CLASSES),
        ((64, 64), -1, SHAPE_CLASSES),
        ((64, 64), 1, ()),
        ((64, 64), 1, ("circle", "hexagon")),
    ],
)
def test_bad_arguments_raise(
    image_wh: tuple[int, int], n_shapes: int, classes: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        make_shapes_image(np.random.default_rng(0), image_wh, n_shapes, classes)


def test_sample_images_cover_the_loader_cases(tmp_path: Path) -> None:
    paths = write_sample_images(tmp_path, n=8, seed=0)

    names = [path.relative_to(tmp_path).as_posix() for path in paths]
    assert names == [
        "shapes-000.jpg",
        "shapes-001.png",
        "rotated-002.jpg",
        "gray-003.png",
        "UPPER-004.JPG",
        "nested/shapes-005.jpg",
        "wide-006.png",
        "small-007.jpg",
    ]
    assert sorted(iter_image_paths(tmp_path)) == sorted(paths)
    with Image.open(tmp_path / "rotated-002.jpg") as rotated:
        assert rotated.getexif()[0x0112] == 6
        assert rotated.size == (480, 640)
    with Image.open(tmp_path / "gray-003.png") as gray:
        assert gray.mode == "L"
    with Image.open(tmp_path / "UPPER-004.JPG") as upper:
        assert upper.format == "JPEG"
    loaded = {path.name: load_image(path) for path in paths}
    assert loaded["rotated-002.jpg"].image_wh == (640, 480)
    assert loaded["wide-006.png"].image_wh == (800, 450)
    assert all(image.image.mode == "RGB" for image in loaded.values())


def test_sample_images_are_deterministic(tmp_path: Path) -> None:
    first = write_sample_images(tmp_path / "a", n=8, seed=0)
    again = write_sample_images(tmp_path / "b", n=8, seed=0)
    other = write_sample_images(tmp_path / "c", n=8, seed=1)

    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert first[0].read_bytes() != other[0].read_bytes()


def test_more_samples_cycle_through_the_kinds(tmp_path: Path) -> None:
    paths = write_sample_images(tmp_path, n=10, seed=0)

    assert len(paths) == 10
    assert paths[8].name == "shapes-008.jpg"
    assert paths[9].name == "shapes-009.png"
    assert write_sample_images(tmp_path / "none", n=0) == []


def test_eight_samples_are_fast(tmp_path: Path) -> None:
    started = time.perf_counter()
    write_sample_images(tmp_path, n=8, seed=0)
    elapsed_s = time.perf_counter() - started

    # The target is under 1 s; the margin absorbs a busy shared machine.
    assert elapsed_s < 3.0


def test_shapes_items_are_lossless_and_hashed(tmp_path: Path) -> None:
    items = write_shapes_items(tmp_path, n=5, seed=0, image_wh=(64, 48))

    assert len(items) == 5
    assert len({item.sha256 for item in items}) == 5
    for item in items:
        assert item.sha256 == sha256_file(item.source_path)
        assert item.image_wh == (64, 48)
        loaded = load_image(item.source_path)
        for (x1, y1, x2, y2), _, _ in item.detections:
            # PNG keeps the pixels, so the box still hugs the drawn shape.
            pixels = np.asarray(loaded.image).astype(np.int16)
            colour = pixels[int(y1 + y2) // 2, int(x1 + x2) // 2]
            inside = (pixels == colour).all(axis=-1)
            assert inside[int(y1) : int(y2), int(x1) : int(x2)].any(axis=0).all()
