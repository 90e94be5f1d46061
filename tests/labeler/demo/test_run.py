"""The README's main job, offline: it must say so plainly and still run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_offline_demo_announces_smoke_run_and_writes_dataset(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PROMPTLABEL_CACHE_DIR": str(tmp_path / "cache"),
        "COLUMNS": "200",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from serve.cli.main import main; main()",
            "demo",
            "--labels-only",
            "--out",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "OFFLINE SMOKE RUN" in result.stderr
    assert "meaningless" in result.stderr
    assert (tmp_path / "cache" / "tiny-models" / "grounding-dino" / "config.json").exists()
    report = json.loads((tmp_path / "dataset" / "report.json").read_text())
    assert report["images"]["total"] == 8 and report["images"]["failed"] == []
    assert report["provenance"]["detector"].endswith("grounding-dino")
    assert (tmp_path / "dataset" / "data.yaml").exists()
    splits = (tmp_path / "dataset" / "images").iterdir()
    assert sorted(p.name for p in splits if not p.name.startswith(".")) == ["train", "val"]
