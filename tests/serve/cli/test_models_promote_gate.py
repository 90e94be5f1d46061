"""`promptlabel models promote` shows the gate's comparisons, overall and per class, on stdout,
and a class that loses more than the tolerance refuses the candidate (exit code 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import distill.registry
from distill.registry import EvalSet, Registry
from serve.cli.main import app

# (overall, {class: (mAP50-95, instances)}) per version folder.
SCORES = {
    "v1": (0.50, {"circle": (0.50, 40.0), "square": (0.50, 30.0)}),
    "v2": (0.55, {"circle": (0.70, 40.0), "square": (0.40, 30.0)}),
}


def fake_evaluation_metrics(weights: Path, eval_set: EvalSet, **_: Any) -> dict[str, Any]:
    overall, classes = SCORES[weights.parent.name]
    return {
        "map50_95": overall,
        "per_class": {name: {"map50_95": s, "instances": n} for name, (s, n) in classes.items()},
        "data": str(eval_set.data),
        "split": eval_set.split,
        "label_hash": "labels-1",
    }


def test_promote_prints_the_per_class_comparison_and_refuses_a_class_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text("train: images/train\nval: images/val\nnames: {0: circle, 1: square}\n")
    workspace = tmp_path / ".promptlabel"
    with Registry(workspace) as registry:
        for name in ("v1", "v2"):
            weights = tmp_path / name / "best.pt"
            weights.parent.mkdir()
            weights.write_bytes(name.encode() * 64)
            metrics = fake_evaluation_metrics(Path(name) / "best.pt", EvalSet(data_yaml))
            registry.register(weights=weights, metrics=metrics, dataset_hash=None, config={})
        registry.promote("v1", evaluate=fake_evaluation_metrics)
    # The evaluator is the one heavy part (Ultralytics); the gate and the CLI are real.
    monkeypatch.setattr(distill.registry, "evaluation_metrics", fake_evaluation_metrics)

    result = CliRunner().invoke(
        app,
        ["models", "promote", "v2", "--workspace", str(workspace), "--tolerance", "0.01"],
        env={"COLUMNS": "200"},
    )

    assert result.exit_code == 1, result.output
    rows = [line.split() for line in result.stdout.splitlines() if line.strip()]
    table = [[cell for cell in row if cell not in "│┃┡━┩└─┘┏┓┗┛"] for row in rows]
    assert ["val", "(overall)", "0.5500", "0.5000", "+0.0500", "-", "pass"] in table
    assert ["val", "circle", "0.7000", "0.5000", "+0.2000", "40", "pass"] in table
    assert ["val", "square", "0.4000", "0.5000", "-0.1000", "30", "worse"] in table
    assert "refused:" in result.stderr
    assert "class 'square': candidate 0.4000 vs production 0.5000" in result.stderr
