"""The mask stage: specs, the transformers loader, batching, RLE, quality routing and caching."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from labeler.core.exceptions import InputError, ModelLoadError
from labeler.demo.synthetic import write_sample_images
from labeler.pipeline import LabelConfig, run_label
from labeler.segment import (
    MaskThresholds,
    as_rle,
    from_rle,
    load_segmenter,
    mask_key,
    mask_problem,
    parse_segmenter_spec,
)
from labeler.segment.transformers_sam import TransformersSegmenter
from tests.labeler.test_pipeline import ONTOLOGY, ScriptedDetector


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sam", "expected BACKEND:MODEL"),
        ("transformers:", "expected BACKEND:MODEL"),
        ("mmseg:foo", "unknown segmenter backend 'mmseg'"),
        ("segment-anything:weights.bin", "takes a checkpoint file"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_segmenter_spec(spec)


def test_good_specs_and_keys() -> None:
    assert parse_segmenter_spec("transformers:facebook/sam-vit-base") == (
        "transformers",
        "facebook/sam-vit-base",
    )
    assert parse_segmenter_spec("segment-anything:/w/sam_vit_b.pth")[0] == "segment-anything"
    assert mask_key("transformers:a") != mask_key("transformers:b")
    assert mask_key("transformers:a") == mask_key("transformers:a")


def test_missing_model_names_it_and_how_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-sam"
    with pytest.raises(ModelLoadError) as error:
        load_segmenter(f"transformers:{missing}")
    assert str(missing) in str(error.value) and "--masks transformers:DIR" in str(error.value)


def test_tiny_sam_one_encoder_call_for_all_boxes(tiny_sam_dir: Path) -> None:
    segmenter = load_segmenter(f"transformers:{tiny_sam_dir}", device="cpu")
    assert isinstance(segmenter, TransformersSegmenter)
    calls: list[int] = []
    segmenter.model.vision_encoder.register_forward_hook(lambda *_: calls.append(1))
    decoder_batches: list[int] = []
    segmenter.model.mask_decoder.register_forward_hook(
        lambda _m, _a, kwargs_out: decoder_batches.append(1)
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 3), np.uint8))
    boxes = np.array([[5, 5, 40, 50], [60, 10, 120, 80], [0, 0, 130, 90], [30, 30, 35, 36]])
    masks, iou = segmenter.segment(image, boxes)
    assert masks.shape == (4, 90, 130) and masks.dtype == bool
    assert iou.shape == (4,)
    assert len(calls) == 1 and len(decoder_batches) == 1
    # The chosen mask is the best of the three multimask outputs.
    _, iou_again = segmenter.segment(image, boxes[:1])
    assert np.isclose(iou_again[0], iou[0], atol=1e-4)


def test_rle_round_trip_is_coco() -> None:
    mask = np.zeros((7, 11), dtype=bool)
    mask[2:5, 3:9] = True
    rle = as_rle(mask)
    assert rle["size"] == [7, 11] and isinstance(rle["counts"], str)
    assert np.array_equal(from_rle(rle), mask)


def _box_mask(shape: tuple[int, int], xyxy: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    x1, y1, x2, y2 = xyxy
    mask[y1:y2, x1:x2] = True
    return mask


@pytest.mark.parametrize(
    ("mask_xyxy", "reason"),
    [
        (None, "mask: empty"),
        ((10, 10, 20, 20), None),  # fills its box
        ((10, 10, 12, 12), "covers 4% of its box"),
        ((0, 0, 40, 40), "outside its box"),
        ((12, 12, 18, 18), None),  # 36% of the box, inside it
    ],
)
def test_mask_quality_routing(mask_xyxy: tuple[int, int, int, int] | None, reason: str) -> None:
    mask = np.zeros((40, 40), bool) if mask_xyxy is None else _box_mask((40, 40), mask_xyxy)
    problem = mask_problem(mask, np.array([10, 10, 20, 20.0]), MaskThresholds())
    if reason is None:
        assert problem is None
    else:
        assert problem is not None and reason in problem


class BoxSegmenter:
    """Masks that fill each box exactly, or nothing; counts what it is asked."""

    def __init__(self, *, empty: bool = False) -> None:
        self.calls: list[int] = []
        self.empty = empty

    def segment(self, image: Image.Image, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append(len(xyxy))
        w, h = image.size
        masks = np.zeros((len(xyxy), h, w), dtype=bool)
        if not self.empty:
            for i, (x1, y1, x2, y2) in enumerate(np.round(xyxy).astype(int)):
                masks[i, y1:y2, x1:x2] = True
        return masks, np.full(len(xyxy), 0.9, np.float32)


class Exploding:
    def segment(self, image: Image.Image, xyxy: np.ndarray) -> Any:
        raise AssertionError("the rerun must compute no mask")


def _config(tmp_path: Path, spec: str = "transformers:stand-in") -> LabelConfig:
    images = tmp_path / "images"
    if not images.exists():
        write_sample_images(images, n=3, seed=1)
    return LabelConfig(images_dir=images, ontology=ONTOLOGY, out_dir=tmp_path / "out",
                       detector="scripted", masks=spec)  # fmt: skip


def _records(out: Path) -> list[dict[str, Any]]:
    lines = (out / "labels.jsonl").read_text().splitlines()
    return [label for line in lines for label in json.loads(line)["labels"]]


def test_pipeline_masks_cached_and_rerun_computes_none(tmp_path: Path) -> None:
    config = _config(tmp_path)
    segmenter = BoxSegmenter()
    report = run_label(config, detector=ScriptedDetector(), segmenter=segmenter)  # type: ignore[arg-type]
    accepted = report["labels"]["accepted"]
    assert accepted == 9  # three images, three boxes each, no verifier: all accepted
    assert segmenter.calls == [3, 3, 3]  # one call per image, all its boxes at once
    assert report["masks"] == {"computed": 9, "cached": 0, "sent_to_review": 0}
    for label in _records(config.out_dir):
        assert label["status"] == "accepted"
        mask = from_rle(label["mask"])
        x1, y1, x2, y2 = np.round(label["xyxy"]).astype(int)
        assert mask[y1:y2, x1:x2].all() and mask.sum() == (x2 - x1) * (y2 - y1)

    again = run_label(config, detector=ScriptedDetector(), segmenter=Exploding())  # type: ignore[arg-type]
    assert again["masks"] == {"computed": 0, "cached": 9, "sent_to_review": 0}
    assert [r["mask"] for r in _records(config.out_dir)] == [
        r["mask"] for r in _records(config.out_dir)
    ]

    # Another segmenter spec is another key: its masks are computed; switching back is cached.
    other = BoxSegmenter()
    run_label(_config(tmp_path, "transformers:other"), detector=ScriptedDetector(), segmenter=other)  # type: ignore[arg-type]
    assert sum(other.calls) == 9
    back = run_label(config, detector=ScriptedDetector(), segmenter=Exploding())  # type: ignore[arg-type]
    assert back["masks"]["computed"] == 0


def test_pipeline_bad_masks_go_to_review_with_reason(tmp_path: Path) -> None:
    config = _config(tmp_path)
    report = run_label(config, detector=ScriptedDetector(), segmenter=BoxSegmenter(empty=True))  # type: ignore[arg-type]
    assert report["labels"]["accepted"] == 0 and report["labels"]["needs_review"] == 9
    assert report["masks"]["sent_to_review"] == 9
    review = json.loads((config.out_dir / "review.json").read_text())
    assert len(review) == 9 and {item["reason"] for item in review} == {"mask: empty"}
    assert report["dataset"]["boxes"] == {"train": 0, "val": 0}
    from labeler.store.workspace import Workspace

    with Workspace(config.workspace) as workspace:  # reviewers see them in the queue
        assert workspace.count_rows("review_queue") == 9


def test_cli_masks_end_to_end(tmp_path: Path, tiny_detector_dir: Path, tiny_sam_dir: Path) -> None:
    from serve.cli.main import app as cli_app

    images = tmp_path / "images"
    write_sample_images(images, n=2, seed=3)
    ontology = tmp_path / "shapes.yaml"
    ontology.write_text("classes:\n  - name: circle\n    detect: circle\n")
    out = tmp_path / "dataset"
    args = [
        "label", str(images), "--ontology", str(ontology), "--out", str(out),
        "--detector", str(tiny_detector_dir), "--device", "cpu",
        "--box-threshold", "0", "--text-threshold", "0", "--max-det", "3",
        "--verifier", "none", "--masks", f"transformers:{tiny_sam_dir}",
    ]  # fmt: skip
    result = CliRunner().invoke(cli_app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    masks = report["masks"]
    assert masks["computed"] == 6 and masks["cached"] == 0, masks
    lines = [json.loads(line) for line in (out / "labels.jsonl").read_text().splitlines()]
    for line in lines:  # every mask is COCO RLE in original-image pixels
        w, h = line["image_wh"]
        assert all(label["mask"]["size"] == [h, w] for label in line["labels"])
    labels = _records(out)
    assert len(labels) == 6
    moved = [label for label in labels if label["reason"].startswith("mask:")]
    assert len(moved) == masks["sent_to_review"]
    assert "masks: 6 computed" in result.output

    rerun = CliRunner().invoke(cli_app, args, env={"COLUMNS": "200"})
    assert rerun.exit_code == 0, rerun.output
    assert json.loads((out / "report.json").read_text())["masks"]["computed"] == 0

    bad = CliRunner().invoke(cli_app, [*args[:-2], "--masks", "nope"])
    assert bad.exit_code == 2 and "expected BACKEND:MODEL" in bad.output


def test_v3_workspace_gains_the_masks_table(tmp_path: Path) -> None:
    import sqlite3

    from labeler.store.workspace import DB_NAME, Workspace

    with Workspace(tmp_path) as workspace:
        workspace.save_masks(
            "abc", "k", [("1.00,2.00,3.00,4.00", {"size": [1, 1], "counts": "1"}, 0.5)]
        )
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("DROP TABLE masks")
    db.execute("UPDATE meta SET value='3' WHERE key='schema_version'")
    db.commit()
    db.close()
    with Workspace(tmp_path) as workspace:
        assert workspace.count_rows("masks") == 0
        assert workspace.get_masks("abc", "k") == {}


def test_transformers_masks_are_the_best_of_three_resized(tiny_sam_dir: Path) -> None:
    """Choosing the best mask before resizing gives what resizing all three and choosing gives."""
    import torch

    segmenter = TransformersSegmenter(str(tiny_sam_dir), device="cpu")
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (60, 80, 3), np.uint8))
    boxes = np.array([[5, 5, 40, 50], [30, 10, 78, 58]], np.float32)
    masks, iou = segmenter.segment(image, boxes)
    processor, model = segmenter.processor, segmenter.model
    inputs = processor(images=image, input_boxes=[boxes.tolist()], return_tensors="pt")
    with torch.inference_mode():
        out = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"])
    every = processor.image_processor.post_process_masks(
        out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
    )[0]  # (2, 3, 60, 80)
    best = out.iou_scores[0].argmax(dim=-1)
    assert np.array_equal(masks, every[torch.arange(2), best].numpy())
    assert np.allclose(iou, out.iou_scores[0][torch.arange(2), best].numpy())
