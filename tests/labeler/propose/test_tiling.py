"""Tiling the detector: small objects found on tiles, mapped back, border pieces merged."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from labeler.core.detections import Detections
from labeler.core.exceptions import InputError
from labeler.ontology import Ontology, parse_ontology
from labeler.pipeline import LABELS_FILENAME, LabelConfig, propose_key, run_label
from labeler.propose.options import DetectorOptions
from labeler.propose.tiling import FULL_IMAGE, merge_boxes, propose_tiled, tile_boxes

# One colour per class: the fake detector finds the pixels of each colour.
COLOURS = {0: (255, 0, 0), 1: (0, 0, 255)}
ONTOLOGY = parse_ontology(
    """
classes:
  - name: red
    detect: red thing
  - name: blue
    detect: blue thing
"""
)


def scale_bound_detector(images: Sequence[Image.Image]) -> list[Detections]:
    """Finds each colour's bounding box, but only when it spans at least a ninth of the image's
    width: an object of 40 px is found in a 100 px tile, not in a 400 px image."""
    out = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"))
        boxes, classes = [], []
        for class_id, colour in COLOURS.items():
            ys, xs = np.nonzero((pixels == colour).all(axis=-1))
            if len(xs) and xs.max() + 1 - xs.min() >= image.width / 9:
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                classes.append(class_id)
        out.append(
            Detections(
                xyxy=np.asarray(boxes, np.float32).reshape(-1, 4),
                class_id=np.asarray(classes, np.int64),
                confidence=np.full(len(boxes), 0.8, np.float32),
                data={"box_score": np.full(len(boxes), 0.8, np.float32)},
                metadata={"image_wh": image.size},
            )
        )
    return out


def scene(*objects: tuple[int, tuple[int, int, int, int]], size: int = 400) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    for class_id, (x1, y1, x2, y2) in objects:
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=COLOURS[class_id])
    return image


def tiled(images: Sequence[Image.Image], **options: float) -> list[Detections]:
    settings = {"tile_px": 100, "overlap": 0.2, "batch_size": 4, "max_det": 100, **options}
    return propose_tiled(images, scale_bound_detector, **settings)  # type: ignore[arg-type]


def test_tile_layout_covers_the_image_with_full_size_tiles() -> None:
    tiles = tile_boxes((400, 250), 100, 0.2)
    # stride 80; the last column and row are shifted in to end at the border
    assert sorted({int(x) for x in tiles[:, 0]}) == [0, 80, 160, 240, 300]
    assert sorted({int(y) for y in tiles[:, 1]}) == [0, 80, 150]
    assert len(tiles) == 15
    assert ((tiles[:, 2] - tiles[:, 0]) == 100).all() and ((tiles[:, 3] - tiles[:, 1]) == 100).all()
    assert tiles[:, 2].max() == 400 and tiles[:, 3].max() == 250
    assert len(tile_boxes((100, 80), 100, 0.2)) == 0  # the whole image already is one tile
    narrow = tile_boxes((60, 300), 100, 0.0)
    assert narrow.tolist() == [[0, 0, 60, 100], [0, 100, 60, 200], [0, 200, 60, 300]]


def test_small_objects_are_found_only_on_tiles_at_image_coordinates() -> None:
    image = scene((0, (20, 20, 50, 50)), (1, (310, 330, 340, 360)))
    assert len(scale_bound_detector([image])[0]) == 0  # untiled: too small to see

    found = tiled([image])[0]
    by_class = {int(c): found.xyxy[i].tolist() for i, c in enumerate(found.class_id)}
    assert by_class == {0: [20, 20, 50, 50], 1: [310, 330, 340, 360]}
    assert (found.data["tile_index"] >= 0).all()
    for tile, box in zip(found.data["tile_xyxy"], found.xyxy, strict=True):
        assert tile[0] <= box[0] and tile[1] <= box[1] and box[2] <= tile[2] and box[3] <= tile[3]
    assert found.metadata == {"image_wh": (400, 400), "tiles": 25}


def test_an_object_cut_by_tile_borders_is_one_merged_box() -> None:
    # x 150..190: tile 80..180 sees 150..180, tile 160..260 sees 160..190; no tile holds it all
    image = scene((0, (150, 20, 190, 50)))
    found = tiled([image])[0]
    assert found.xyxy.tolist() == [[150, 20, 190, 50]]
    assert found.class_id.tolist() == [0]


def test_large_objects_come_from_the_whole_image() -> None:
    image = scene((1, (40, 40, 360, 360)))
    found = tiled([image])[0]
    assert found.xyxy.tolist() == [[40, 40, 360, 360]]
    assert found.data["tile_index"].tolist() == [FULL_IMAGE]
    assert found.data["tile_xyxy"].tolist() == [[0, 0, 400, 400]]


def test_merging_is_class_aware() -> None:
    # Two classes on the same spot stay two boxes; same-class pieces merge.
    boxes = Detections(
        xyxy=np.array([[0, 0, 10, 10], [0, 0, 10, 10], [4, 0, 20, 10], [50, 50, 60, 60]]),
        class_id=np.array([0, 1, 0, 0]),
        confidence=np.array([0.9, 0.8, 0.7, 0.6]),
        data={"tile_index": np.array([3, 3, 4, 5])},
    )
    merged = merge_boxes(boxes)
    assert merged.class_id.tolist() == [0, 1, 0]
    assert merged.xyxy.tolist() == [[0, 0, 20, 10], [0, 0, 10, 10], [50, 50, 60, 60]]
    assert merged.confidence.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert merged.data["tile_index"].tolist() == [3, 3, 5]  # the best piece's tile


def test_tiles_go_to_the_detector_in_batches() -> None:
    calls: list[int] = []

    def counting(images: Sequence[Image.Image]) -> list[Detections]:
        calls.append(len(images))
        return scale_bound_detector(images)

    propose_tiled([scene(size=300)], counting, tile_px=100, overlap=0.0, batch_size=4, max_det=10)
    assert calls == [4, 4, 1, 1]  # 9 tiles, 4 at a time, then the whole image


def test_options_validate_tile_and_overlap() -> None:
    DetectorOptions(tile_px=640, tile_overlap=0.0)
    with pytest.raises(InputError, match=r"tile_px \(--tile\) must"):
        DetectorOptions(tile_px=8)
    with pytest.raises(InputError, match=r"--tile-overlap"):
        DetectorOptions(tile_px=640, tile_overlap=0.9)
    with pytest.raises(InputError, match=r"--tile-overlap"):
        DetectorOptions(tile_px=640, tile_overlap=-0.1)


def _config(tmp_path: Path, **options: object) -> LabelConfig:
    return LabelConfig(
        images_dir=tmp_path / "images",
        ontology=ONTOLOGY,
        out_dir=tmp_path / "out",
        detector="fake",
        detector_options=DetectorOptions(**options),  # type: ignore[arg-type]
        verifier="none",
    )


def test_propose_key_separates_tiled_proposals(tmp_path: Path) -> None:
    plain = propose_key(_config(tmp_path))
    tiled_key = propose_key(_config(tmp_path, tile_px=640))
    assert len({plain, tiled_key, propose_key(_config(tmp_path, tile_px=512))}) == 3
    assert tiled_key != propose_key(_config(tmp_path, tile_px=640, tile_overlap=0.3))
    # Untiled runs keep their key whatever the (unused) overlap says.
    assert plain == propose_key(_config(tmp_path, tile_overlap=0.5))


class TilingDetector:
    model_id = "fake"

    def __init__(self, options: DetectorOptions) -> None:
        self.options = options

    def fingerprint(self) -> dict[str, object]:
        return {"model_id": self.model_id, "tile_px": self.options.tile_px}

    def propose(self, images: Sequence[Image.Image], ontology: Ontology) -> list[Detections]:
        assert self.options.tile_px is not None
        return propose_tiled(
            images,
            scale_bound_detector,
            tile_px=self.options.tile_px,
            overlap=self.options.tile_overlap,
            batch_size=self.options.batch_size,
            max_det=self.options.max_det,
        )


def test_labels_and_review_records_show_the_tile(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    scene((0, (150, 20, 190, 50)), (1, (40, 200, 360, 380))).save(tmp_path / "images" / "a.png")
    config = _config(tmp_path, tile_px=100)
    config = replace(config, thresholds=replace(config.thresholds, review_below_score=0.9))
    run_label(config, detector=TilingDetector(config.detector_options))  # type: ignore[arg-type]

    lines = (config.out_dir / LABELS_FILENAME).read_text().splitlines()
    (image,) = [json.loads(line) for line in lines]
    tiles = {label["class"]: label["tile"] for label in image["labels"]}
    assert tiles["blue"] == {"index": FULL_IMAGE, "xyxy": [0, 0, 400, 400]}
    assert tiles["red"]["index"] >= 0
    x1, y1, x2, y2 = tiles["red"]["xyxy"]
    assert x2 - x1 == 100 and y2 - y1 == 100
    red = next(label for label in image["labels"] if label["class"] == "red")
    assert red["xyxy"] == [150, 20, 190, 50]
    review = json.loads((config.out_dir / "review.json").read_text())
    assert {r["class"]: r["tile"] for r in review} == tiles


def test_the_real_detector_tiles_through_its_own_loader(tiny_detector_dir: Path) -> None:
    from labeler.propose.detector import load_detector

    options = DetectorOptions(box_threshold=0.0, text_threshold=0.0, max_det=50, tile_px=64)
    detector = load_detector(tiny_detector_dir, options)
    image = Image.new("RGB", (160, 96), "gray")
    (found,) = detector.propose([image], ONTOLOGY)
    assert 0 < len(found) <= 50
    assert {"tile_index", "tile_xyxy", "box_score"} <= set(found.data)
    assert found.metadata["tiles"] == len(tile_boxes((160, 96), 64, 0.2)) == 6
    assert (found.xyxy[:, 2] <= 160).all() and (found.xyxy[:, 3] <= 96).all()
    assert detector.fingerprint()["tile_px"] == 64


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--tile", "8"], "(--tile) must"), (["--tile", "640", "--tile-overlap", "0.95"], "overlap")],
)
def test_cli_rejects_bad_tiling_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    from serve.cli.main import app

    (tmp_path / "images").mkdir()
    ontology = tmp_path / "ontology.yaml"
    ontology.write_text("classes:\n  - name: red\n    detect: red thing\n")
    result = CliRunner().invoke(
        app,
        ["label", str(tmp_path / "images"), "--ontology", str(ontology), "--out",
         str(tmp_path / "out"), "--verifier", "none", *args],
    )  # fmt: skip
    assert result.exit_code == 2
    assert message in result.output


def test_service_job_options_take_and_check_tiling() -> None:
    from pydantic import ValidationError

    from serve.api.schemas import LabelJobCreate

    assert LabelJobCreate().tile is None
    job = LabelJobCreate(tile=640, tile_overlap=0.3)
    assert (job.tile, job.tile_overlap) == (640, 0.3)
    for bad in ({"tile": 8}, {"tile": 640, "tile_overlap": 0.9}):
        with pytest.raises(ValidationError):
            LabelJobCreate(**bad)
