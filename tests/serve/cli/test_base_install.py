"""The base install (``pip install promptlabel``, what a device gets) in a virtual environment of
its own: `predict` and the help work there, and every command that needs an extra says which one in
one line with exit code 2, never a traceback.

`make test` builds that environment (`make install-base`) and names it in PROMPTLABEL_BASE_VENV;
run alone, without it, these tests are skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import Students

SHAPES_ONTOLOGY = "classes:\n  circle: a circle\n  square: a square\n"


def run_base(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROMPTLABEL_")}
    return subprocess.run(
        [str(venv / "bin" / "promptlabel"), *args],
        capture_output=True, text=True, timeout=120, cwd=cwd, env=env,
    )  # fmt: skip


def test_the_base_environment_has_no_extra(base_venv: Path) -> None:
    for module in ("torch", "transformers", "ultralytics", "fastapi", "sqlalchemy"):
        found = subprocess.run(
            [str(base_venv / "bin" / "python"), "-c", f"import {module}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert found.returncode != 0, f"{module} is installed in the base environment"


def test_help_and_version_work_on_the_base_install(base_venv: Path, tmp_path: Path) -> None:
    shown = run_base(base_venv, "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "predict" in shown.stdout and "label" in shown.stdout
    version = run_base(base_venv, "--version", cwd=tmp_path)
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("promptlabel ")


def test_predict_runs_on_the_base_install(
    base_venv: Path, students: Students, sample_images: list[Path], tmp_path: Path
) -> None:
    from serve.runtime import load_runtime

    result = run_base(
        base_venv, "predict", str(students.static), *map(str, sample_images[:3]),
        "--json", "--conf", "0.05", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    detector = load_runtime(students.static, conf=0.05)
    expected = [len(detector(path)) for path in sample_images[:3]]
    assert [len(image["detections"]) for image in payload["images"]] == expected
    assert sum(expected) > 0


def test_predict_collect_runs_on_the_base_install(
    base_venv: Path, students: Students, sample_images: list[Path], tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("min_detections: 1000\nduplicate_distance: -1\n")
    result = run_base(
        base_venv, "predict", str(students.static), *map(str, sample_images[:3]), "--json",
        "--conf", "0.05", "--collect", str(tmp_path / "outbox"), "--policy", str(policy),
        "--device-name", "cam-1", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "collected 3 hard cases" in result.stderr
    manifests = sorted((tmp_path / "outbox").glob("*-*.json"))
    assert len(manifests) == 3
    assert json.loads(manifests[0].read_text())["device"] == "cam-1"


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """An ontology, a folder with one image, a dataset folder and weights: enough for each command
    to get past its argument checks to the point where it needs its extra."""
    (tmp_path / "ontology.yaml").write_text(SHAPES_ONTOLOGY)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "images" / "a.png")
    dataset = tmp_path / "dataset"
    (dataset / "images" / "train").mkdir(parents=True)
    (dataset / "labels" / "train").mkdir(parents=True)
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(dataset / "images/train/a.png")
    (dataset / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    (dataset / "data.yaml").write_text(
        f"path: {dataset}\ntrain: images/train\nval: images/train\nnames:\n  0: circle\n"
    )
    (tmp_path / "weights.pt").write_bytes(b"not read: the extra is missing first")
    return tmp_path


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["label", "images", "-o", "ontology.yaml", "--out", "labeled"], "label"),
        (["demo", "--out", "demo-out"], "label"),
        (["train", "dataset", "--epochs", "1"], "train"),
        (["eval", "weights.pt", "dataset"], "train"),
        (["serve"], "serve"),
        (["worker"], "serve"),
        (["projects", "list"], "serve"),
        (["keys", "list"], "serve"),
    ],
)
def test_a_command_without_its_extra_says_which_in_one_line(
    base_venv: Path, inputs: Path, args: list[str], extra: str
) -> None:
    result = run_base(base_venv, *args, cwd=inputs)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"pip install 'promptlabel[{extra}]'" in lines[0]
    command = " ".join(args[:2] if args[0] in {"projects", "keys"} else args[:1])
    assert lines[0].startswith(f"error: `promptlabel {command}` needs the '{extra}' extra")
