"""The shifted domain of synthetic images: exact boxes, other pixels, the default left as it was."""

from __future__ import annotations

import numpy as np
import pytest

from labeler.demo.synthetic import SHAPE_CLASSES, make_shapes_image


@pytest.mark.parametrize("seed", range(6))
def test_shifted_boxes_are_the_exact_pixel_extent_of_each_hollow_shape(seed: int) -> None:
    image, detections = make_shapes_image(
        np.random.default_rng(seed), (160, 120), n_shapes=4, domain="shifted"
    )
    pixels = np.asarray(image).astype(np.int16)

    assert len(detections) > 0
    for (x1, y1, x2, y2), _, _ in detections:
        x1, y1, x2, y2 = int(x1), int(y1), int(x2), int(y2)
        # The middle of the bottom edge lies on the outline of a circle, square and triangle.
        colour = pixels[y2 - 1, (x1 + x2) // 2]
        inside = (pixels == colour).all(axis=-1)
        window = inside[max(y1 - 1, 0) : y2 + 1, max(x1 - 1, 0) : x2 + 1]
        rows, cols = np.nonzero(window)
        assert rows.min() + max(y1 - 1, 0) == y1
        assert rows.max() + max(y1 - 1, 0) == y2 - 1
        assert cols.min() + max(x1 - 1, 0) == x1
        assert cols.max() + max(x1 - 1, 0) == x2 - 1
        # Hollow: the centre is not the shape's colour.
        assert not inside[(y1 + y2) // 2, (x1 + x2) // 2]


def test_naming_the_default_domain_changes_nothing_and_shifted_differs() -> None:
    plain_image, plain = make_shapes_image(np.random.default_rng(5), (96, 64), 3)
    named_image, named = make_shapes_image(np.random.default_rng(5), (96, 64), 3, domain="default")
    shifted_image, _ = make_shapes_image(np.random.default_rng(5), (96, 64), 3, domain="shifted")

    assert plain_image.tobytes() == named_image.tobytes()
    np.testing.assert_array_equal(plain.xyxy, named.xyxy)
    assert shifted_image.tobytes() != plain_image.tobytes()


def test_shifted_domain_draws_every_class() -> None:
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(10):
        _, detections = make_shapes_image(rng, (128, 128), 4, domain="shifted")
        seen.update(detections.class_id.tolist())
    assert seen == set(range(len(SHAPE_CLASSES)))


def test_unknown_domain_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown domain 'night'.*default, shifted"):
        make_shapes_image(np.random.default_rng(0), (64, 64), 2, domain="night")
