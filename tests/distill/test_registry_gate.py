"""The promotion gate per class and on extra evaluation sets (the hard-case split): a candidate
that loses more than the tolerance overall or on any class, on any set, is refused, and the
decision records every comparison."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from distill.registry import EvalSet, GateCheck, Registry, hard_case_eval_set

# A version's scores on one split: overall mAP50-95 and per class (mAP50-95, instances).
Scores = tuple[float, dict[str, tuple[float, float]]]


@dataclass
class PerClassEvaluate:
    """A fake ``evaluate`` with scripted overall and per-class scores per (version, split)."""

    scores: dict[tuple[str, str], Scores]
    calls: list[tuple[str, str]] = field(default_factory=list)

    def __call__(self, weights: Path, eval_set: EvalSet) -> Mapping[str, Any]:
        version = weights.parent.name
        self.calls.append((version, eval_set.split))
        overall, classes = self.scores[(version, eval_set.split)]
        return {
            "map50_95": overall,
            "per_class": {
                name: {"map50_95": score, "instances": instances}
                for name, (score, instances) in classes.items()
            },
            "label_hash": "labels-1",
        }


@pytest.fixture
def data_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "dataset" / "data.yaml"
    path.parent.mkdir()
    path.write_text(
        "train: images/train\nval: images/val\nhard_cases: images/hard\n"
        "names: {0: circle, 1: square}\n"
    )
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with Registry(tmp_path / "workspace") as opened:
        yield opened


def _metrics(data_yaml: Path, scores: Scores, *, per_class: bool = True) -> dict[str, Any]:
    overall, classes = scores
    stored: dict[str, Any] = {
        "map50_95": overall,
        "data": str(data_yaml),
        "split": "val",
        "label_hash": "labels-1",
    }
    if per_class:
        stored["per_class"] = {
            name: {"map50_95": score, "instances": instances}
            for name, (score, instances) in classes.items()
        }
    return stored


def _register(registry: Registry, tmp_path: Path, name: str, metrics: dict[str, Any]) -> str:
    weights = tmp_path / "runs" / f"{name}.pt"
    weights.parent.mkdir(exist_ok=True)
    weights.write_bytes(name.encode() * 64)
    return registry.register(
        weights=weights, metrics=metrics, dataset_hash="labels-1", config={}
    ).version


def _production(registry: Registry) -> str | None:
    production = registry.production()
    return None if production is None else production.version


PRODUCTION: Scores = (0.50, {"circle": (0.50, 40.0), "square": (0.50, 30.0)})
# Better overall (0.55 > 0.50), but square loses 0.10: more than any tolerance used here.
BETTER_BUT_WORSE_ON_SQUARE: Scores = (0.55, {"circle": (0.70, 40.0), "square": (0.40, 30.0)})


def _with_production(registry: Registry, tmp_path: Path, data_yaml: Path, **options: Any) -> None:
    _register(registry, tmp_path, "a", _metrics(data_yaml, PRODUCTION, **options))
    assert registry.promote("v1", evaluate=PerClassEvaluate({})).promoted


def test_a_candidate_better_overall_but_worse_on_a_class_is_refused_naming_it(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _with_production(registry, tmp_path, data_yaml)
    _register(registry, tmp_path, "b", _metrics(data_yaml, BETTER_BUT_WORSE_ON_SQUARE))
    evaluate = PerClassEvaluate({("v2", "val"): BETTER_BUT_WORSE_ON_SQUARE})

    decision = registry.promote("v2", evaluate=evaluate, tolerance=0.005)

    assert not decision.promoted
    assert _production(registry) == "v1"
    # Production's stored numbers describe the same labels, per class too: not measured again.
    assert evaluate.calls == [("v2", "val")]
    assert decision.production_reevaluated is False
    assert "within tolerance 0.005 overall" in decision.reason
    assert "class 'square': candidate 0.4000 vs production 0.5000" in decision.reason
    assert "'circle'" not in decision.reason  # it passed: only the veto is named
    eval_set = EvalSet(data_yaml, "val", "labels-1")
    assert decision.checks == (
        GateCheck(eval_set, None, 0.55, 0.50, None, "pass"),
        GateCheck(eval_set, "circle", 0.70, 0.50, 40.0, "pass"),
        GateCheck(eval_set, "square", 0.40, 0.50, 30.0, "worse"),
    )
    # The comparisons are recorded with the decision and read back with it.
    assert registry.promotions("v2") == [decision]
    with Registry(registry.workspace) as reopened:
        assert reopened.promotions("v2")[0].checks == decision.checks


def test_a_class_loss_within_the_tolerance_passes(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _with_production(registry, tmp_path, data_yaml)
    candidate: Scores = (0.55, {"circle": (0.70, 40.0), "square": (0.497, 30.0)})
    _register(registry, tmp_path, "b", _metrics(data_yaml, candidate))

    decision = registry.promote(
        "v2", evaluate=PerClassEvaluate({("v2", "val"): candidate}), tolerance=0.005
    )

    assert decision.promoted, decision.reason
    assert "2 of 2 per-class comparisons within tolerance 0.005" in decision.reason
    assert [check.outcome for check in decision.checks] == ["pass", "pass", "pass"]


@pytest.mark.parametrize(("min_class_instances", "promoted"), [(5, True), (3, False)])
def test_a_class_with_too_few_instances_is_reported_but_cannot_veto(
    registry: Registry,
    tmp_path: Path,
    data_yaml: Path,
    min_class_instances: int,
    promoted: bool,
) -> None:
    production: Scores = (0.50, {"circle": (0.50, 40.0), "triangle": (0.60, 3.0)})
    candidate: Scores = (0.52, {"circle": (0.52, 40.0), "triangle": (0.20, 3.0)})
    _register(registry, tmp_path, "a", _metrics(data_yaml, production))
    registry.promote("v1", evaluate=PerClassEvaluate({}))
    _register(registry, tmp_path, "b", _metrics(data_yaml, candidate))

    decision = registry.promote(
        "v2",
        evaluate=PerClassEvaluate({("v2", "val"): candidate}),
        min_class_instances=min_class_instances,
    )

    assert decision.promoted is promoted, decision.reason
    triangle = decision.checks[-1]
    assert triangle.class_name == "triangle"
    assert triangle.instances == 3.0
    if promoted:
        assert triangle.outcome == "too_few_instances"
        assert "not gated, fewer than 5 instances" in decision.reason
        assert "class 'triangle': candidate 0.2000 vs production 0.6000" in decision.reason
    else:
        assert triangle.outcome == "worse"
        assert "class 'triangle'" in decision.reason.split("worse by more")[1]


def test_production_stored_without_per_class_numbers_is_measured_again(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _with_production(registry, tmp_path, data_yaml, per_class=False)
    _register(registry, tmp_path, "b", _metrics(data_yaml, BETTER_BUT_WORSE_ON_SQUARE))
    evaluate = PerClassEvaluate(
        {("v2", "val"): BETTER_BUT_WORSE_ON_SQUARE, ("v1", "val"): PRODUCTION}
    )

    decision = registry.promote("v2", evaluate=evaluate)

    assert evaluate.calls == [("v2", "val"), ("v1", "val")]
    assert decision.production_reevaluated is True
    assert not decision.promoted
    assert "class 'square'" in decision.reason


def test_the_hard_case_split_is_gated_too(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _with_production(registry, tmp_path, data_yaml)
    candidate: Scores = (0.52, {"circle": (0.52, 40.0), "square": (0.52, 30.0)})
    _register(registry, tmp_path, "b", _metrics(data_yaml, candidate))
    _register(registry, tmp_path, "c", _metrics(data_yaml, candidate))
    hard_cases = EvalSet(data_yaml, "hard_cases")
    evaluate = PerClassEvaluate(
        {
            ("v1", "hard_cases"): (0.30, {"circle": (0.30, 12.0)}),
            # v2 learned nothing from the hard cases and forgot some: refused.
            ("v2", "val"): candidate,
            ("v2", "hard_cases"): (0.25, {"circle": (0.25, 12.0)}),
            # v3 learned them.
            ("v3", "val"): candidate,
            ("v3", "hard_cases"): (0.45, {"circle": (0.45, 12.0)}),
        }
    )

    refused = registry.promote("v2", evaluate=evaluate, extra_eval_sets=[hard_cases])
    promoted = registry.promote("v3", evaluate=evaluate, extra_eval_sets=[hard_cases])

    assert evaluate.calls == [
        ("v2", "val"),
        ("v2", "hard_cases"),
        ("v1", "hard_cases"),
        ("v3", "val"),
        ("v3", "hard_cases"),
        ("v1", "hard_cases"),
    ]
    assert not refused.promoted
    assert f"overall: candidate 0.2500 vs production 0.3000 on {data_yaml} (hard_cases)" in (
        refused.reason
    )
    assert promoted.promoted, promoted.reason
    assert "within tolerance 0.005: overall: candidate 0.4500 vs production 0.3000 on " in (
        promoted.reason
    )
    assert [(c.eval_set.split, c.class_name, c.outcome) for c in promoted.checks] == [
        ("val", None, "pass"),
        ("val", "circle", "pass"),
        ("val", "square", "pass"),
        ("hard_cases", None, "pass"),
        ("hard_cases", "circle", "pass"),
    ]
    assert _production(registry) == "v3"


def test_an_extra_evaluation_set_that_is_gone_refuses_unless_forced(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _with_production(registry, tmp_path, data_yaml)
    _register(registry, tmp_path, "b", _metrics(data_yaml, PRODUCTION))
    gone = EvalSet(tmp_path / "gone" / "data.yaml", "hard_cases")
    evaluate = PerClassEvaluate({("v2", "val"): PRODUCTION})

    refused = registry.promote("v2", evaluate=evaluate, extra_eval_sets=[gone])
    forced = registry.promote("v2", evaluate=evaluate, extra_eval_sets=[gone], force=True)

    assert not refused.promoted
    assert f"evaluation set {gone.data} (hard_cases) is gone" in refused.reason
    assert forced.promoted and forced.forced
    assert forced.reason.endswith("; forced")


def test_force_promotes_over_a_class_veto_and_records_it(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _with_production(registry, tmp_path, data_yaml)
    _register(registry, tmp_path, "b", _metrics(data_yaml, BETTER_BUT_WORSE_ON_SQUARE))

    decision = registry.promote(
        "v2",
        evaluate=PerClassEvaluate({("v2", "val"): BETTER_BUT_WORSE_ON_SQUARE}),
        force=True,
    )

    assert decision.promoted and decision.forced
    assert "class 'square'" in decision.reason and decision.reason.endswith("; forced")
    assert decision.checks[-1].outcome == "worse"


def test_a_bad_minimum_of_instances_is_refused(registry: Registry) -> None:
    from labeler.core.exceptions import InputError

    with pytest.raises(InputError, match="min_class_instances"):
        registry.promote("v1", evaluate=PerClassEvaluate({}), min_class_instances=-1)


def test_the_hard_case_split_is_found_in_the_candidates_dataset(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    without = tmp_path / "plain" / "data.yaml"
    without.parent.mkdir()
    without.write_text("train: images/train\nval: images/val\nnames: {0: circle}\n")
    with_split = _register(registry, tmp_path, "a", _metrics(data_yaml, PRODUCTION))
    without_split = _register(registry, tmp_path, "b", _metrics(without, PRODUCTION))
    no_eval_set = _register(registry, tmp_path, "c", {})

    assert hard_case_eval_set(registry.get(with_split)) == EvalSet(data_yaml, "hard_cases")
    assert hard_case_eval_set(registry.get(without_split)) is None
    assert hard_case_eval_set(registry.get(no_eval_set)) is None
