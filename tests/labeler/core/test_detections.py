"""Detections' edges: the one JSON record of a box (as_records) and the Ultralytics adapter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from labeler.core.detections import Detections, as_records, from_ultralytics

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_as_records_is_one_rounded_json_record_per_box() -> None:
    detections = Detections(
        xyxy=[[1.23456, 2.0, 30.005, 40.4949], [0, 0, 8, 4]],
        class_id=[1, 0],
        confidence=[0.876549, 0.25],
        data={"box_score": np.array([0.9, 0.3])},
    )

    records = as_records(detections, ["cat", "dog"])

    assert records == [
        {"class_id": 1, "class": "dog", "score": 0.8765, "xyxy": [1.23, 2.0, 30.0, 40.49]},
        {"class_id": 0, "class": "cat", "score": 0.25, "xyxy": [0.0, 0.0, 8.0, 4.0]},
    ]
    # Plain Python values only: JSON round-trips them unchanged.
    assert json.loads(json.dumps(records)) == records
    assert all(type(r["class_id"]) is int and type(r["score"]) is float for r in records)


def test_as_records_takes_names_as_a_mapping_and_no_boxes_as_none() -> None:
    one = Detections(xyxy=[[0, 0, 1, 1]], class_id=[3], confidence=[1.0])
    assert as_records(one, {3: "bird"})[0]["class"] == "bird"
    assert as_records(Detections.empty(), ["cat"]) == []


def test_from_ultralytics_keeps_original_pixels_classes_and_scores() -> None:
    pytest.importorskip("ultralytics")
    import torch
    from ultralytics.engine.results import Results

    rows = torch.tensor([[1.5, 2.0, 30.0, 40.0, 0.9, 1.0], [0.0, 0.0, 8.0, 4.0, 0.25, 0.0]])
    result = Results(
        np.zeros((48, 64, 3), np.uint8), path="x.png", names={0: "a", 1: "b"}, boxes=rows
    )

    detections = from_ultralytics(result)

    np.testing.assert_allclose(detections.xyxy, [[1.5, 2, 30, 40], [0, 0, 8, 4]])
    assert detections.class_id.tolist() == [1, 0]
    np.testing.assert_allclose(detections.confidence, [0.9, 0.25])
    assert detections.metadata == {"image_wh": (64, 48), "path": "x.png"}


def test_from_ultralytics_refuses_results_without_boxes() -> None:
    class Classification:
        orig_shape = (4, 4)
        boxes = None

    with pytest.raises(ValueError, match="no axis-aligned boxes"):
        from_ultralytics(Classification())


def test_the_module_needs_no_model_library() -> None:
    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {"torch", "ultralytics", "cv2", "transformers"}:
                    raise ImportError(f"{name} is blocked")
                return None

        sys.meta_path.insert(0, Block())
        from labeler.core.detections import Detections, as_records, from_ultralytics

        print(as_records(Detections([[0, 0, 2, 2]], [0], [0.5]), ["a"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert "'class': 'a'" in result.stdout
