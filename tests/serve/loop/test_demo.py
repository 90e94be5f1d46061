"""`make demo`: the whole loop, offline on the tiny models, announced as such, every step's
summary, and the files each step made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.dataset_versions import DatasetVersions
from distill.registry import Registry
from serve.runtime.outbox import Outbox


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_demo_runs_the_whole_loop_offline(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PROMPTLABEL_CACHE_DIR": str(tmp_path / "cache"),
        "COLUMNS": "200",
    }
    out = tmp_path / "demo-out"
    result = subprocess.run(
        [sys.executable, "-c", "from serve.cli.main import main; main()",
         "demo", "--out", str(out), "--json"],
        env=env, capture_output=True, text=True, timeout=580,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "OFFLINE SMOKE RUN" in result.stderr and "meaningless" in result.stderr
    for number in range(1, 9):
        assert f"{number}/8 " in result.stderr, result.stderr
    steps = json.loads(result.stdout)
    assert set(steps) >= {"labels", "review", "student", "hard cases", "second round",
                          "dataset version", "fine-tuned", "promotion"}  # fmt: skip

    collected = steps["hard cases"]["collected"]
    assert collected > 0 and len(list(Outbox(out / "outbox").entries())) == collected
    versions = DatasetVersions(out / "workspace" / "datasets").list()
    assert [v.version for v in versions] == ["d1", "d2"] and versions[1].parent == "d1"
    with Registry(out / "workspace") as registry:
        models = registry.list()
        decisions = registry.promotions()
    assert [m.version for m in models] == ["v1", "v2"]
    assert models[1].parent == "v1"  # fine-tuned from production
    assert decisions[-1].version == "v2" and decisions[-1].previous_production == "v1"
    assert decisions[-1].promoted == steps["promotion"]["promoted"]
