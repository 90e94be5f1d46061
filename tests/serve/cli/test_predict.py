"""`promptlabel predict` with the base install only: the CLI path a device runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from PIL import Image

from labeler.core.detections import as_records
from serve.runtime.onnx import load_runtime
from tests.serve.conftest import Students

REPO_ROOT = Path(__file__).resolve().parents[3]

CLI_WITH_HEAVY_IMPORTS_BLOCKED = textwrap.dedent(
    """
    import sys

    BLOCKED = {"torch", "ultralytics", "transformers", "cv2", "torchvision", "openai", "httpx"}

    class BlockHeavyImports:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked: predict must not need it")
            return None

    sys.meta_path.insert(0, BlockHeavyImports())
    from serve.cli.main import main

    main()
    """
)


def test_predict_cli_runs_without_heavy_packages(
    students: Students, sample_images: list[Path], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out_json = tmp_path / "predictions.json"
    annotated = tmp_path / "annotated"
    result = subprocess.run(
        [
            sys.executable, "-c", CLI_WITH_HEAVY_IMPORTS_BLOCKED, "predict", str(students.static),
            *map(str, sample_images[:3]), str(broken), "--json", "--json-out", str(out_json),
            "--save-annotated", str(annotated), "--conf", "0.05",
        ],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # --json: the JSON alone on stdout, the same as the file; counts and failures on stderr.
    payload = json.loads(result.stdout)
    assert json.loads(out_json.read_text()) == payload
    assert "3 images" in result.stderr and "1 failed" in result.stderr
    assert str(broken) in result.stderr
    assert [Path(item["path"]).name for item in payload["images"]] == [
        p.name for p in sample_images[:3]
    ]
    assert payload["failed"] == [{"path": str(broken), "error": payload["failed"][0]["error"]}]
    assert payload["failed"][0]["error"].split(":")[0] in {"corrupt", "truncated"}

    # The CLI reports what the runtime returns, box for box, as Detections' one record.
    detector = load_runtime(students.static, conf=0.05)
    for item, image in zip(payload["images"], sample_images[:3], strict=True):
        expected = detector(image)
        assert item["detections"] == as_records(expected, detector.names)
        assert len(item["detections"]) > 0
        first = item["detections"][0]
        assert list(first) == ["class_id", "class", "score", "xyxy"]
        assert first["class"] == detector.names[first["class_id"]]
        assert abs(first["score"] - float(expected.confidence[0])) < 1e-4
        with Image.open(image) as opened:
            assert item["image_wh"] == list(opened.size)
    written = sorted(p.name for p in annotated.iterdir())
    assert written == sorted(f"{p.stem}.jpg" for p in sample_images[:3])


def test_predict_prints_a_table_by_default(
    students: Students, sample_images: list[Path], tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from serve.cli.main import main; main()", "predict",
         str(students.static), str(sample_images[0]), "--conf", "0.05"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not result.stdout.lstrip().startswith("{")
    table = result.stdout.splitlines()
    assert any("image" in line and "boxes" in line and "classes" in line for line in table)
    row = next(line for line in table if sample_images[0].name in line)
    boxes = len(load_runtime(students.static, conf=0.05)(sample_images[0]))
    assert f" {boxes} " in row
    assert f"1 images, {boxes} boxes, 0 failed" in result.stderr
    assert "1 images" not in result.stdout


def test_predict_missing_model_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from serve.cli.main import main; main()", "predict",
         str(tmp_path / "nope.onnx"), str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "nope.onnx" in result.stderr
