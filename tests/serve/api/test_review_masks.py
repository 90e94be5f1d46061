"""Masks on the review API: each box carries the mask its run's segmenter made (COCO RLE), the
box a mask-quality problem sent to review shows the mask that sent it, a moved box shows none."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from labeler.demo.synthetic import write_sample_images
from labeler.pipeline import LabelConfig, run_label
from labeler.review import queue
from labeler.segment import from_rle
from serve.api.local_review import create_local_review_app
from serve.settings import ServiceSettings
from tests.labeler.test_pipeline import ONTOLOGY, ScriptedDetector
from tests.serve.api.test_local_review import ORIGIN, LocalReview

# The scripted detector's second box of each image (class "square") gets a mask of a quarter of
# its box's width and height: 6% of the box, which sends it to review ("mask: covers ...").
SMALL_MASK_CLASS = 1


class QuarterSegmenter:
    """Masks filling each box, except the square's, which fills the top-left quarter of its box
    (so the box goes to review with its mask as the reason)."""

    def segment(self, image: Image.Image, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        w, h = image.size
        masks = np.zeros((len(xyxy), h, w), dtype=bool)
        for i, (x1, y1, x2, y2) in enumerate(np.round(xyxy).astype(int)):
            small = i == SMALL_MASK_CLASS
            masks[
                i,
                y1 : y1 + (y2 - y1) // 4 if small else y2,
                x1 : x1 + (x2 - x1) // 4 if small else x2,
            ] = True
        return masks, np.full(len(xyxy), 0.9, np.float32)


def label_with_masks(root: Path, *, masks: str | None = "transformers:stand-in") -> Path:
    """A dataset labeled by the scripted detector with masks: per image, two boxes accepted with
    masks filling them and one in review for its small mask."""
    images = root / "images"
    write_sample_images(images, n=2, seed=5)
    config = LabelConfig(images_dir=images, ontology=ONTOLOGY, out_dir=root / "dataset",
                         detector="scripted", masks=masks)  # fmt: skip
    report = run_label(config, detector=ScriptedDetector(), segmenter=QuarterSegmenter())
    if masks is not None:
        assert report["masks"]["sent_to_review"] == 2, report["masks"]
    return config.out_dir


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalReview]:
    app = create_local_review_app(
        label_with_masks(tmp_path), reviewer="ana", settings=ServiceSettings()
    )
    with TestClient(app, base_url=ORIGIN) as client:
        yield LocalReview(app, client)


def _filled(rle: dict[str, Any], xyxy: list[float]) -> tuple[float, float]:
    """Share of the box the mask covers, and share of the mask inside the box."""
    mask = from_rle(rle)
    x1, y1, x2, y2 = np.round(xyxy).astype(int)
    inside = int(mask[y1:y2, x1:x2].sum())
    return inside / ((x2 - x1) * (y2 - y1)), inside / max(int(mask.sum()), 1)


def test_queue_items_show_the_mask_that_sent_them_and_their_images_masks(
    local: LocalReview,
) -> None:
    items = local.get("/queue").json()["items"]
    assert len(items) == 2
    for item in items:
        assert item["reason"].startswith("mask: covers") and item["class"] == "square"
        covered, inside = _filled(item["mask"], item["xyxy"])
        assert inside == 1.0 and 0.04 < covered < 0.1  # the quarter-by-quarter mask
        others = item["boxes"]
        assert len(others) == 2 and all(box["status"] == "accepted" for box in others)
        for box in others:
            assert _filled(box["mask"], box["xyxy"]) == (1.0, 1.0)


def test_a_moved_box_shows_no_mask_until_the_next_run(local: LocalReview) -> None:
    item = local.get("/queue").json()["items"][0]
    x1, y1, x2, y2 = item["xyxy"]
    moved = [x1 + 2, y1 + 2, x2, y2]
    answer = local.post(
        "/decisions",
        {"decisions": [{"proposal_id": item["proposal_id"], "action": "edit",
                        "base_version": item["version"], "xyxy": moved}]},
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    boxes = local.get(f"/images/{item['image_sha256']}/boxes").json()["boxes"]
    by_id = {box["proposal_id"]: box for box in boxes}
    assert by_id[item["proposal_id"]]["mask"] is None
    assert all(box["mask"] is not None for pid, box in by_id.items() if pid != item["proposal_id"])


def test_a_run_without_masks_has_none(tmp_path: Path) -> None:
    dataset = label_with_masks(tmp_path, masks=None)
    app = create_local_review_app(dataset, reviewer="ana", settings=ServiceSettings())
    with TestClient(app, base_url=ORIGIN) as client:
        local = LocalReview(app, client)
        with local.app.state.review_target.workspace() as workspace:
            shas = local.app.state.review_target.image_sha256s()
            assert queue.box_masks(workspace, shas) == {}
        boxes = local.get(f"/images/{shas[0]}/boxes").json()["boxes"]
        assert len(boxes) == 3 and all(box["mask"] is None for box in boxes)
