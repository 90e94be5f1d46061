"""Masks in the exporters: RLE <-> polygon round trips, COCO segmentation, YOLO-seg rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image
from pycocotools.coco import COCO

from distill.dataset import check_dataset, read_label_file
from labeler.core.detections import Detections
from labeler.core.images import load_image, sha256_file
from labeler.export import masks as mask_ops
from labeler.export.dataset import ExportItem, export_dataset

CLASS_NAMES = ["disc", "blob"]


def _ellipse(image_wh: tuple[int, int], cx: float, cy: float, rx: float, ry: float) -> Any:
    width, height = image_wh
    y, x = np.mgrid[0:height, 0:width]
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _iou(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def _rasterise_yolo_row(row: str, image_wh: tuple[int, int]) -> npt.NDArray[np.uint8]:
    values = [float(v) for v in row.split()[1:]]
    xy = np.asarray(values).reshape(-1, 2) * image_wh
    return mask_ops.decode_rle(mask_ops.polygons_to_rle([xy], image_wh))


def test_encode_matches_pycocotools_and_decodes_back() -> None:
    mask = _ellipse((80, 60), 40, 30, 20, 12)
    rle = mask_ops.encode_mask(mask)
    assert rle["size"] == [60, 80]
    assert isinstance(rle["counts"], str)
    assert np.array_equal(mask_ops.decode_rle(rle), mask.astype(np.uint8))
    assert mask_ops.mask_area(rle) == int(mask.sum())
    assert mask_ops.mask_bbox_xywh(rle) == [20.0, 18.0, 41.0, 25.0]


@pytest.mark.parametrize(
    ("cx", "cy", "rx", "ry"), [(50, 40, 30, 20), (20, 20, 8, 15), (70, 50, 25, 25)]
)
def test_a_smooth_mask_round_trips_through_a_polygon(cx: int, cy: int, rx: int, ry: int) -> None:
    image_wh = (100, 80)
    mask = _ellipse(image_wh, cx, cy, rx, ry)
    polygons = mask_ops.rle_to_polygons(mask_ops.encode_mask(mask))
    assert len(polygons) == 1 and polygons[0].shape[1] == 2 and len(polygons[0]) >= 3
    back = mask_ops.decode_rle(mask_ops.polygons_to_rle(polygons, image_wh))
    assert _iou(back, mask) >= 0.99


def test_a_mask_in_pieces_gives_each_piece_and_one_joined_yolo_polygon() -> None:
    image_wh = (120, 80)
    mask = _ellipse(image_wh, 25, 40, 15, 20) | _ellipse(image_wh, 90, 30, 20, 12)
    polygons = mask_ops.rle_to_polygons(mask_ops.encode_mask(mask))
    assert len(polygons) == 2
    assert _iou(mask_ops.decode_rle(mask_ops.polygons_to_rle(polygons, image_wh)), mask) >= 0.9
    # Joined as Ultralytics joins pieces: the bridge is a zero-width line, so the pieces survive.
    row = mask_ops.yolo_segment_row(1, mask_ops.join_pieces(polygons), image_wh)
    assert row.startswith("1 ")
    assert _iou(_rasterise_yolo_row(row, image_wh), mask) >= 0.85


def test_an_empty_mask_says_why() -> None:
    with pytest.raises(mask_ops.MaskError, match="the mask is empty"):
        mask_ops.rle_to_polygons(mask_ops.encode_mask(np.zeros((20, 20), np.uint8)))


@pytest.mark.parametrize("pixels", [[(5, 5)], [(5, 5), (5, 6), (5, 7)], [(3, 3), (4, 4)]])
def test_dots_and_lines_become_polygons_of_the_same_pixels(pixels: list[tuple[int, int]]) -> None:
    mask = np.zeros((20, 20), np.uint8)
    for y, x in pixels:
        mask[y, x] = 1
    polygons = mask_ops.rle_to_polygons(mask_ops.encode_mask(mask))
    assert all(len(p) >= mask_ops.MIN_POLYGON_POINTS for p in polygons)
    assert np.array_equal(mask_ops.decode_rle(mask_ops.polygons_to_rle(polygons, (20, 20))), mask)


@pytest.mark.parametrize(
    ("rle", "reason"),
    [
        ({"counts": "abc"}, "must be"),
        ({"size": [10], "counts": "abc"}, r"\[height, width\]"),
        ({"size": [60, 80], "counts": "abc"}, "80x60 .* but the image is 100x80"),
        ({"size": [80, 100], "counts": 5}, "compressed RLE string"),
    ],
)
def test_malformed_rle_is_refused_naming_the_field(rle: Any, reason: str) -> None:
    with pytest.raises(mask_ops.MaskError, match=reason):
        mask_ops.check_rle(rle, (100, 80))


def _mask_items(tmp_path: Path, n: int) -> tuple[list[ExportItem], dict[str, list[Any]]]:
    """``n`` images, each with a disc (mask), a two-piece blob (mask) and a box without a mask."""
    image_wh = (96, 80)
    rng = np.random.default_rng(0)
    tmp_path.mkdir(parents=True, exist_ok=True)
    items, masks_by_sha = [], {}
    for index in range(n):
        pixels = rng.integers(0, 60, (image_wh[1], image_wh[0], 3), dtype=np.uint8)
        cx, cy = 25 + index % 5, 30 + index % 7
        disc = _ellipse(image_wh, cx, cy, 14, 12)
        blob = _ellipse(image_wh, 70, 15, 10, 8) | _ellipse(image_wh, 75, 60, 12, 10)
        pixels[disc] = (230, 40, 40)
        pixels[blob] = (40, 230, 40)
        pixels[62:75, 5:20] = (40, 40, 230)
        path = tmp_path / f"img{index}.png"
        Image.fromarray(pixels).save(path)
        masks = [mask_ops.encode_mask(disc), mask_ops.encode_mask(blob), None]
        xyxy = [
            [cx - 14, cy - 12, cx + 15, cy + 13],
            [60, 7, 88, 71],
            [5, 62, 20, 75],
        ]
        object_masks = np.empty(3, dtype=object)
        object_masks[:] = masks
        detections = Detections(
            xyxy=np.asarray(xyxy, np.float32),
            class_id=np.asarray([0, 1, 0]),
            confidence=np.ones(3, np.float32),
            data={"mask": object_masks},
        )
        sha = sha256_file(path)
        items.append(ExportItem(path, sha, load_image(path).image_wh, detections))
        masks_by_sha[sha] = masks
    return items, masks_by_sha


def test_a_mask_export_is_a_segmentation_dataset_pycocotools_and_the_reader_load(
    tmp_path: Path,
) -> None:
    items, masks_by_sha = _mask_items(tmp_path / "src", n=4)
    out = tmp_path / "dataset"
    summary = export_dataset(items, CLASS_NAMES, out, val_fraction=0.5)

    info = check_dataset(out)
    assert info.task == "segment"
    sha_by_file = {Path(v).name: k for k, v in summary.files.items()}
    for split in ("train", "val"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        for image in coco.dataset["images"]:
            sha = sha_by_file[image["file_name"]]
            anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
            assert [a["iscrowd"] for a in anns] == [0, 0, 0]
            disc, blob, box = anns
            wanted = masks_by_sha[sha]
            assert _iou(coco.annToMask(disc), mask_ops.decode_rle(wanted[0])) >= 0.9
            assert len(blob["segmentation"]) == 2  # one polygon per piece
            assert _iou(coco.annToMask(blob), mask_ops.decode_rle(wanted[1])) >= 0.9
            assert disc["area"] == mask_ops.mask_area(wanted[0])
            assert disc["bbox"] == mask_ops.mask_bbox_xywh(wanted[0])
            # The box without a mask is its box's corners.
            assert box["segmentation"] == [[5.0, 62.0, 20.0, 62.0, 20.0, 75.0, 5.0, 75.0]]

            label = out / "labels" / split / (Path(image["file_name"]).stem + ".txt")
            rows = read_label_file(label, len(CLASS_NAMES))
            assert rows.has_polygons and rows.first_box_line is None
            assert rows.class_id.tolist() == [0, 1, 0]
            lines = label.read_text().splitlines()
            joined = _rasterise_yolo_row(lines[1], (96, 80))
            assert _iou(joined, mask_ops.decode_rle(wanted[1])) >= 0.85
    document = json.loads((out / "annotations" / "instances_train.json").read_text())
    assert all("segmentation" in a for a in document["annotations"])


def test_an_export_without_masks_stays_boxes(tmp_path: Path) -> None:
    items, _ = _mask_items(tmp_path / "src", n=2)
    plain = [
        ExportItem(
            i.source_path,
            i.sha256,
            i.image_wh,
            Detections(i.detections.xyxy, i.detections.class_id, i.detections.confidence),
        )
        for i in items
    ]
    export_dataset(plain, CLASS_NAMES, tmp_path / "dataset")
    assert check_dataset(tmp_path / "dataset").task == "detect"
    document = json.loads((tmp_path / "dataset/annotations/instances_train.json").read_text())
    assert document["annotations"] and all("segmentation" not in a for a in document["annotations"])


def test_a_mask_of_another_size_is_refused(tmp_path: Path) -> None:
    items, _ = _mask_items(tmp_path / "src", n=1)
    item = items[0]
    wrong = np.empty(3, dtype=object)
    wrong[:] = [mask_ops.encode_mask(np.ones((10, 10))), None, None]
    bad = ExportItem(
        item.source_path,
        item.sha256,
        item.image_wh,
        Detections(
            item.detections.xyxy,
            item.detections.class_id,
            item.detections.confidence,
            data={"mask": wrong},
        ),
    )
    with pytest.raises(ValueError, match=r"img0\.png: mask size is 10x10"):
        export_dataset([bad], CLASS_NAMES, tmp_path / "dataset")


@pytest.mark.slow
def test_ultralytics_trains_on_a_mask_export_as_is(tmp_path: Path) -> None:
    from distill.train import train
    from tests.distill.conftest import TRAIN_OPTIONS

    items, _ = _mask_items(tmp_path / "src", n=8)
    out = tmp_path / "dataset"
    export_dataset(items, CLASS_NAMES, out)
    result = train(out, epochs=1, out_dir=tmp_path / "run", plots=False, **TRAIN_OPTIONS)
    assert result.config["task"] == "segment"
    assert result.config["resolved_base"] == "yolo11n-seg.yaml"
    assert "mask_map50" in result.metrics


def test_label_studio_shows_masks_as_polygons_and_imports_boxes_as_before(
    tmp_path: Path,
) -> None:
    import xml.etree.ElementTree as ElementTree

    from labeler.export.label_studio import label_studio_config, label_studio_tasks
    from labeler.store.workspace import Workspace
    from tests.labeler.export.test_label_studio import (
        BOXES,
        IMAGE_WH,
        KEY,
        NAMES,
        SHA,
        _export,
        _import,
        _records,
        _url,
    )

    root = ElementTree.fromstring(label_studio_config(NAMES, masks=True))
    polygon_control = root.find("PolygonLabels")
    assert polygon_control is not None and polygon_control.get("name") == "mask"
    assert [label.get("value") for label in polygon_control] == list(NAMES)
    assert ElementTree.fromstring(label_studio_config(NAMES)).find("PolygonLabels") is None

    with Workspace(tmp_path / "ws") as workspace:
        workspace.record_image(SHA, IMAGE_WH)
        detections = Detections(np.asarray(BOXES), np.arange(3), np.asarray([0.9, 0.8, 0.7]))
        workspace.save_proposals(SHA, KEY, detections, NAMES)
        records = _records(workspace)
        disc = _ellipse(IMAGE_WH, 30, 25, 20, 15)
        two_pieces = _ellipse(IMAGE_WH, 110, 40, 8, 8) | _ellipse(IMAGE_WH, 140, 75, 8, 10)
        records[0]["labels"][0]["mask"] = mask_ops.encode_mask(disc)
        records[0]["labels"][1]["mask"] = mask_ops.encode_mask(two_pieces)
        (task,) = label_studio_tasks(
            records, image_url_for=lambda record: _url(dict(record)), model_version="m"
        )
        results = task["predictions"][0]["result"]
        polygons = [r for r in results if r["type"] == "polygonlabels"]
        assert [r["id"].split("-", 2)[2] for r in polygons] == ["mask-0", "mask-0", "mask-1"]
        assert [r["value"]["polygonlabels"] for r in polygons] == [["cat"], ["dog"], ["dog"]]
        assert {r["from_name"] for r in polygons} == {"mask"}
        # Points are percent of the image; back in pixels they cover the mask.
        first = np.asarray(polygons[0]["value"]["points"]) / 100 * IMAGE_WH
        back = mask_ops.decode_rle(mask_ops.polygons_to_rle([first], IMAGE_WH))
        assert _iou(back, disc) >= 0.95
        # The import reads the boxes only: accepting the export as is accepts the three boxes.
        summary = _import(workspace, _export([task]))
        assert summary["accepted"] == 3 and summary["added"] == 0 and summary["rejected"] == 0
