"""Model registry: versions, artifacts, imports and the gated promotion to production."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from distill.registry import (
    DB_NAME,
    SCHEMA_VERSION,
    EvalSet,
    ModelVersion,
    Registry,
    evaluation_metrics,
)
from labeler.core.exceptions import InputError, ModelLoadError, StoreError

REPO_ROOT = Path(__file__).resolve().parents[2]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_weights(directory: Path, name: str, content: str | None = None) -> Path:
    """A stand-in .pt file: the registry copies and hashes weights, it does not load them."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes((content or name).encode() * 64)
    return path


@pytest.fixture
def data_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "dataset" / "data.yaml"
    path.parent.mkdir()
    path.write_text("train: images/train\nval: images/val\nnames: {0: circle}\n")
    return path


def metrics(data_yaml: Path, map50_95: float, label_hash: str = "labels-1") -> dict[str, Any]:
    return {
        "map50": min(1.0, map50_95 + 0.2),
        "map50_95": map50_95,
        "per_class": {"circle": {"map50_95": map50_95}},
        "ms_per_image": 3.5,
        "data": str(data_yaml),
        "split": "val",
        "label_hash": label_hash,
    }


@dataclass
class ScriptedEvaluate:
    """A fake ``evaluate``: scripted mAP50-95 per version folder, and a log of its calls."""

    scores: dict[str, float]
    label_hash: str | None = "labels-1"
    calls: list[tuple[str, EvalSet]] = field(default_factory=list)

    def __call__(self, weights: Path, eval_set: EvalSet) -> Mapping[str, Any]:
        version = weights.parent.name
        self.calls.append((version, eval_set))
        result: dict[str, Any] = {"map50_95": self.scores[version], "map50": 0.9}
        if self.label_hash is not None:
            result["label_hash"] = self.label_hash
        return result

    @property
    def versions(self) -> list[str]:
        return [version for version, _ in self.calls]


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    with Registry(tmp_path / "workspace") as opened:
        yield opened


def _register(
    registry: Registry, tmp_path: Path, name: str, metrics_: dict[str, Any], **options: Any
) -> ModelVersion:
    return registry.register(
        weights=fake_weights(tmp_path / "runs", f"{name}.pt"),
        metrics=metrics_,
        dataset_hash=options.pop("dataset_hash", "labels-1"),
        config=options.pop("config", {"epochs": 3, "imgsz": 64}),
        **options,
    )


def _production(registry: Registry) -> str | None:
    production = registry.production()
    return None if production is None else production.version


# -- versions ---------------------------------------------------------------------------------


def test_register_copies_weights_and_records_everything(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    source = fake_weights(tmp_path / "runs", "best.pt")
    first = registry.register(
        weights=source,
        metrics=metrics(data_yaml, 0.4),
        dataset_hash="labels-1",
        config={"epochs": 3, "base": "yolo11n.yaml"},
    )
    second = registry.register(
        weights=fake_weights(tmp_path / "runs", "best2.pt"),
        metrics=metrics(data_yaml, 0.5),
        dataset_hash="labels-2",
        config={"epochs": 5},
        parent="v1",
    )

    assert (first.version, first.number, second.version) == ("v1", 1, "v2")
    assert first.weights == registry.workspace / "models" / "v1" / "model.pt"
    assert first.weights.read_bytes() == source.read_bytes()
    assert first.artifacts["pt"].sha256 == _sha256(source)
    assert first.artifacts["pt"].size_bytes == source.stat().st_size
    assert (first.source, first.stage, first.parent) == ("trained", "none", None)
    assert first.dataset_hash == "labels-1"
    assert first.config == {"epochs": 3, "base": "yolo11n.yaml"}
    assert first.metrics == metrics(data_yaml, 0.4)
    assert first.map50_95 == 0.4
    assert first.eval_set == EvalSet(data_yaml, "val", "labels-1")
    assert first.created_at
    assert second.parent == "v1"
    # The registry holds its own copy: the training run may go away.
    source.unlink()
    assert registry.get("v1").weights.is_file()
    assert [v.version for v in registry.list()] == ["v1", "v2"]


def test_numpy_values_in_metrics_are_stored_as_plain_json(
    registry: Registry, tmp_path: Path
) -> None:
    np = pytest.importorskip("numpy")
    version = _register(
        registry, tmp_path, "a", {"map50_95": np.float32(0.25), "per_class": np.array([0.5, 0.0])}
    )

    assert version.metrics == {"map50_95": 0.25, "per_class": [0.5, 0.0]}


def test_version_numbers_survive_reopen(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    with Registry(workspace) as registry:
        _register(registry, tmp_path, "a", {})
        _register(registry, tmp_path, "b", {})
    with Registry(workspace) as registry:
        third = _register(registry, tmp_path, "c", {})
        assert third.version == "v3"
        assert registry.get("v1").weights.read_bytes() == (tmp_path / "runs" / "a.pt").read_bytes()
    assert (workspace / DB_NAME).is_file()


def test_opening_sweeps_stale_leftovers_of_killed_copies_and_keeps_fresh_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    workspace = tmp_path / "workspace"
    with Registry(workspace) as registry:
        _register(registry, tmp_path, "a", {})
    models = workspace / "models"
    # A registration killed mid-copy two hours ago, and one that may be copying right now.
    stale = models / ".staging-0123abcd"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half a checkpoint")
    two_hours_ago = time.time() - 2 * 3600
    os.utime(stale / "model.pt", (two_hours_ago, two_hours_ago))
    os.utime(stale, (two_hours_ago, two_hours_ago))
    fresh = models / ".staging-4567ef01"
    fresh.mkdir()
    (fresh / "model.pt").write_bytes(b"being copied")
    # An old folder whose file is still being written counts as fresh too.
    writing = models / ".staging-89abcdef"
    writing.mkdir()
    (writing / "model.pt").write_bytes(b"still growing")
    os.utime(writing, (two_hours_ago, two_hours_ago))
    # add_artifact's copy killed before its rename, two hours ago and now.
    stale_partial = models / "v1" / ".model.onnx.0123abcd.partial"
    stale_partial.write_bytes(b"half an onnx file")
    os.utime(stale_partial, (two_hours_ago, two_hours_ago))
    fresh_partial = models / "v1" / ".model.onnx.4567ef01.partial"
    fresh_partial.write_bytes(b"being copied")

    with caplog.at_level("INFO", logger="distill.registry"), Registry(workspace) as registry:
        assert [v.version for v in registry.list()] == ["v1"]

    assert not stale.exists() and not stale_partial.exists()
    assert fresh.is_dir() and (fresh / "model.pt").is_file()
    assert writing.is_dir() and (writing / "model.pt").is_file()
    assert fresh_partial.is_file()
    assert (models / "v1" / "model.pt").is_file()
    removed = sorted(r.getMessage() for r in caplog.records if "interrupted" in r.getMessage())
    assert len(removed) == 2
    assert str(stale) in removed[0] and str(stale_partial) in removed[1]


@pytest.mark.parametrize("name", ["v2", "2", "V2", " v2 "])
def test_get_accepts_v_prefix_or_plain_number(
    registry: Registry, tmp_path: Path, name: str
) -> None:
    _register(registry, tmp_path, "a", {})
    _register(registry, tmp_path, "b", {})

    assert registry.get(name).version == "v2"


@pytest.mark.parametrize("name", ["v9", "9", "v0", "abc", "", "v1.5", "-1"])
def test_unknown_version_lists_the_existing_ones(
    registry: Registry, tmp_path: Path, name: str
) -> None:
    _register(registry, tmp_path, "a", {})
    _register(registry, tmp_path, "b", {})

    with pytest.raises(InputError, match="existing versions: v1, v2"):
        registry.get(name)


def test_unknown_version_in_an_empty_registry(registry: Registry) -> None:
    with pytest.raises(InputError, match="the registry is empty"):
        registry.get("v1")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"weights": "missing.pt"}, "no such weights file"),
        ({"weights": "notes.txt"}, "must be a .pt or .onnx"),
        ({"parent": "v7"}, "unknown model version 'v7'"),
        ({"metrics": {"map50_95": object()}}, "metrics must be a JSON object"),
        ({"metrics": {"map50_95": float("nan")}}, "metrics must be a JSON object"),
        ({"config": {"callback": print}}, "config must be a JSON object"),
        ({"source": "downloaded"}, "source must be"),
    ],
)
def test_register_refuses_bad_input(
    registry: Registry, tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    arguments: dict[str, Any] = {
        "weights": fake_weights(tmp_path, "ok.pt"),
        "metrics": {},
        "dataset_hash": None,
        "config": {},
    }
    if "weights" in options:
        name = options.pop("weights")
        arguments["weights"] = tmp_path / name
        if name.endswith(".txt"):
            arguments["weights"].write_text("hello")
    arguments.update(options)

    with pytest.raises(InputError, match=message):
        registry.register(**arguments)
    assert registry.list() == []
    assert [p.name for p in registry.models_dir.iterdir()] == []


def test_a_file_that_is_not_a_registry_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    (workspace / DB_NAME).write_bytes(b"this is not a database" * 100)

    with pytest.raises(StoreError, match="cannot open the model registry"):
        Registry(workspace)


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    Registry(workspace).close()
    with closing(sqlite3.connect(workspace / DB_NAME)) as db, db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema_version'")

    with pytest.raises(StoreError, match="schema v99 is not supported"):
        Registry(workspace)


def test_versions_and_decisions_record_the_promptlabel_that_made_them(
    tmp_path: Path, data_yaml: Path
) -> None:
    installed = importlib.metadata.version("promptlabel")
    with Registry(tmp_path / "workspace") as registry:
        registered = _register(registry, tmp_path, "a", metrics(data_yaml, 0.4))
        decision = registry.promote("v1", evaluate=ScriptedEvaluate({}))
    assert registered.promptlabel_version == installed
    assert decision.promptlabel_version == installed
    with Registry(tmp_path / "workspace") as reopened:
        assert reopened.get("v1").promptlabel_version == installed
        assert [d.promptlabel_version for d in reopened.promotions("v1")] == [installed]


# The registry as schema 1 (before it recorded the promptlabel version) wrote it.
_SCHEMA_V1 = (
    """CREATE TABLE versions (
        number INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('trained', 'imported')),
        parent INTEGER REFERENCES versions(number),
        dataset_hash TEXT,
        metrics TEXT NOT NULL,
        config TEXT NOT NULL,
        stage TEXT NOT NULL DEFAULT 'none' CHECK (stage IN ('none', 'production'))
    )""",
    "CREATE UNIQUE INDEX one_production ON versions(stage) WHERE stage = 'production'",
    """CREATE TABLE artifacts (
        version INTEGER NOT NULL REFERENCES versions(number),
        kind TEXT NOT NULL,
        file TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        is_weights INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (version, kind)
    )""",
    """CREATE TABLE promotions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        version INTEGER NOT NULL REFERENCES versions(number),
        previous_production INTEGER REFERENCES versions(number),
        promoted INTEGER NOT NULL,
        forced INTEGER NOT NULL,
        reason TEXT NOT NULL,
        candidate_map50_95 REAL,
        production_map50_95 REAL,
        tolerance REAL NOT NULL,
        eval_set TEXT,
        production_reevaluated INTEGER NOT NULL,
        created_at TEXT NOT NULL
    )""",
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)",
)


def test_a_schema_1_registry_is_migrated_and_keeps_its_versions(
    tmp_path: Path, data_yaml: Path
) -> None:
    workspace = tmp_path / "workspace"
    weights = fake_weights(workspace / "models" / "v1", "model.pt")
    with closing(sqlite3.connect(workspace / DB_NAME)) as db, db:
        for statement in _SCHEMA_V1:
            db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute(
            "INSERT INTO versions (created_at, source, dataset_hash, metrics, config, stage) "
            "VALUES ('2025-01-01T00:00:00+00:00', 'trained', 'labels-1', ?, '{}', 'production')",
            (json.dumps(metrics(data_yaml, 0.4)),),
        )
        db.execute(
            "INSERT INTO artifacts VALUES (1, 'pt', 'model.pt', ?, ?, 1, '2025-01-01')",
            (_sha256(weights), weights.stat().st_size),
        )
        db.execute(
            "INSERT INTO promotions (version, promoted, forced, reason, tolerance, "
            "production_reevaluated, created_at) VALUES (1, 1, 0, 'first', 0.005, 0, '2025-01-01')"
        )

    with Registry(workspace) as registry:
        old = registry.get("v1")
        assert (old.stage, old.dataset_hash, old.map50_95) == ("production", "labels-1", 0.4)
        assert old.promptlabel_version is None  # not recorded then, and not made up now
        [first] = registry.promotions("v1")
        assert (first.reason, first.promptlabel_version) == ("first", None)
        new = _register(registry, tmp_path, "b", metrics(data_yaml, 0.5))
        decision = registry.promote(new.version, evaluate=ScriptedEvaluate({"v2": 0.5}))
    installed = importlib.metadata.version("promptlabel")
    assert new.promptlabel_version == decision.promptlabel_version == installed
    assert decision.promoted and decision.previous_production == "v1"
    with closing(sqlite3.connect(workspace / DB_NAME)) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )
    with Registry(workspace) as reopened:  # migrated once; opening again changes nothing
        assert [v.promptlabel_version for v in reopened.list()] == [None, installed]


def test_an_older_schema_without_a_migration_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    Registry(workspace).close()
    with closing(sqlite3.connect(workspace / DB_NAME)) as db, db:
        db.execute("UPDATE meta SET value='0' WHERE key='schema_version'")

    with pytest.raises(StoreError, match="schema v0 is not supported"):
        Registry(workspace)


# -- artifacts --------------------------------------------------------------------------------


def test_add_artifact_copies_the_file_with_its_hash(registry: Registry, tmp_path: Path) -> None:
    _register(registry, tmp_path, "a", {})
    exported = fake_weights(tmp_path / "exports", "best.onnx", "onnx-1")

    copy = registry.add_artifact("v1", exported, kind="onnx")

    assert copy == registry.workspace / "models" / "v1" / "model.onnx"
    assert copy.read_bytes() == exported.read_bytes()
    artifact = registry.get("v1").artifacts["onnx"]
    assert (artifact.path, artifact.sha256, artifact.is_weights) == (
        copy,
        _sha256(exported),
        False,
    )
    # The weights stay the weights.
    assert registry.get("v1").weights.name == "model.pt"

    # A re-export replaces the file and its hash.
    again = fake_weights(tmp_path / "exports", "best-again.onnx", "onnx-2")
    assert registry.add_artifact("v1", again, kind="onnx") == copy
    assert registry.get("v1").artifacts["onnx"].sha256 == _sha256(again)
    assert copy.read_bytes() == again.read_bytes()

    # Kinds never share a file; a file already in place is recorded without a copy.
    half = registry.add_artifact("v1", again, kind="onnx-fp16")
    assert half.name == "model-onnx-fp16.onnx"
    assert registry.add_artifact("v1", half, kind="onnx-fp16") == half
    assert set(registry.get("v1").artifacts) == {"pt", "onnx", "onnx-fp16"}
    assert not list(registry.get("v1").directory.glob(".*partial"))


@pytest.mark.parametrize(
    ("version", "kind", "file", "message"),
    [
        ("v1", "pt", "other.pt", "cannot be replaced"),
        ("v1", "ONNX!", "x.onnx", "artifact kind"),
        ("v1", "a.b", "x.onnx", "artifact kind"),
        ("v1", "onnx", "missing.onnx", "no such file"),
        ("v5", "onnx", "x.onnx", "existing versions: v1"),
    ],
)
def test_add_artifact_refuses_bad_input(
    registry: Registry, tmp_path: Path, version: str, kind: str, file: str, message: str
) -> None:
    _register(registry, tmp_path, "a", {})
    path = tmp_path / file
    if not file.startswith("missing"):
        path.write_text("bytes")

    with pytest.raises(InputError, match=message):
        registry.add_artifact(version, path, kind=kind)
    assert registry.get("v1").artifacts["pt"].sha256 == _sha256(tmp_path / "runs" / "a.pt")


# -- imports ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A random YOLO11n saved as .pt, and its ONNX export (with Ultralytics' metadata)."""
    pytest.importorskip("ultralytics")
    from distill.export import export_model
    from distill.ultralytics_env import load_yolo

    directory = tmp_path_factory.mktemp("real-models")
    pt = directory / "random.pt"
    load_yolo("yolo11n.yaml").save(str(pt))
    onnx_file = export_model(pt, format="onnx", imgsz=64, verify=False).path
    return {"pt": pt, "onnx": onnx_file}


def test_import_a_pt_checkpoint(
    registry: Registry, real_models: dict[str, Path], data_yaml: Path
) -> None:
    version = registry.import_model(real_models["pt"], metrics=metrics(data_yaml, 0.3))

    assert (version.version, version.source, version.stage) == ("v1", "imported", "none")
    assert version.weights.name == "model.pt"
    assert version.artifacts["pt"].sha256 == _sha256(real_models["pt"])
    assert version.config["imported_from"] == str(real_models["pt"].resolve())
    assert version.config["task"] == "detect"
    assert len(version.config["names"]) == 80
    assert version.map50_95 == 0.3
    assert version.dataset_hash is None


def test_import_an_onnx_model(registry: Registry, real_models: dict[str, Path]) -> None:
    version = registry.import_model(real_models["onnx"])

    assert version.source == "imported"
    assert version.weights.name == "model.onnx"
    assert set(version.artifacts) == {"onnx"}
    assert version.artifacts["onnx"].sha256 == _sha256(real_models["onnx"])
    assert version.config["imgsz"] == [64, 64]
    assert version.config["stride"] == 32
    assert version.metrics == {}


def test_import_refuses_files_that_are_not_models(registry: Registry, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    bare = tmp_path / "bare.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["output0"])],
        "bare",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(bare))
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(b"not a checkpoint")
    garbage_onnx = tmp_path / "garbage.onnx"
    garbage_onnx.write_bytes(b"not a graph")
    notes = tmp_path / "model.tflite"
    notes.write_bytes(b"x")

    with pytest.raises(ModelLoadError, match="lacks Ultralytics metadata"):
        registry.import_model(bare)
    with pytest.raises(ModelLoadError, match=r"garbage\.pt"):
        registry.import_model(garbage_pt)
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load it"):
        registry.import_model(garbage_onnx)
    with pytest.raises(InputError, match=r"can import a \.pt or \.onnx"):
        registry.import_model(notes)
    with pytest.raises(InputError, match="no such model file"):
        registry.import_model(tmp_path / "absent.pt")
    assert registry.list() == []


# -- promotion --------------------------------------------------------------------------------


def test_first_promotion_needs_no_comparison(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.4))
    evaluate = ScriptedEvaluate({})

    decision = registry.promote("v1", evaluate=evaluate)

    assert decision.promoted and not decision.forced
    assert "no production version yet" in decision.reason
    assert decision.previous_production is None
    assert evaluate.calls == []
    assert _production(registry) == "v1"
    assert registry.get("v1").stage == "production"
    assert registry.promotions() == [decision]


@pytest.mark.parametrize(
    ("candidate_score", "promoted"),
    [
        (0.55, True),  # better
        (0.50, True),  # equal
        (0.497, True),  # worse, within the tolerance
        (0.495, True),  # worse by exactly the tolerance
        (0.494, False),  # worse beyond the tolerance
        (0.20, False),
    ],
)
def test_gate_compares_against_production(
    registry: Registry,
    tmp_path: Path,
    data_yaml: Path,
    candidate_score: float,
    promoted: bool,
) -> None:
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.50))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    _register(registry, tmp_path, "b", metrics(data_yaml, 0.99), parent="v1")
    evaluate = ScriptedEvaluate({"v2": candidate_score})

    decision = registry.promote("v2", evaluate=evaluate, tolerance=0.005)

    assert decision.promoted is promoted
    assert decision.forced is False
    assert decision.version == "v2"
    assert decision.previous_production == "v1"
    assert decision.candidate_map50_95 == pytest.approx(candidate_score)
    assert decision.production_map50_95 == pytest.approx(0.50)
    assert decision.tolerance == 0.005
    assert decision.production_reevaluated is False
    expected = "v2" if promoted else "v1"
    assert _production(registry) == expected
    assert [v.version for v in registry.list() if v.stage == "production"] == [expected]
    assert ("within tolerance" in decision.reason) is promoted
    assert registry.promotions("v2") == [decision]


def test_refused_promotion_is_recorded_and_survives_reopen(tmp_path: Path, data_yaml: Path) -> None:
    workspace = tmp_path / "workspace"
    with Registry(workspace) as registry:
        _register(registry, tmp_path, "a", metrics(data_yaml, 0.6))
        registry.promote("v1", evaluate=ScriptedEvaluate({}))
        _register(registry, tmp_path, "b", metrics(data_yaml, 0.9))
        refused = registry.promote("v2", evaluate=ScriptedEvaluate({"v2": 0.3}))
    with Registry(workspace) as registry:
        assert _production(registry) == "v1"
        history = registry.promotions()

    assert not refused.promoted
    assert "worse by 0.3000 > tolerance 0.005" in refused.reason
    assert [(d.version, d.promoted) for d in history] == [("v1", True), ("v2", False)]
    assert history[-1] == refused


def test_force_promotes_a_worse_model_and_says_so(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.6))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    _register(registry, tmp_path, "b", metrics(data_yaml, 0.2))

    decision = registry.promote("v2", evaluate=ScriptedEvaluate({"v2": 0.2}), force=True)

    assert decision.promoted and decision.forced
    assert "worse by" in decision.reason and "forced" in decision.reason
    assert (decision.candidate_map50_95, decision.production_map50_95) == (0.2, 0.6)
    assert _production(registry) == "v2"
    assert registry.get("v1").stage == "none"
    assert registry.promotions()[-1].forced is True


def test_candidate_is_evaluated_on_productions_evaluation_set(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.5, label_hash="labels-1"))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    # The candidate was evaluated elsewhere (its own, newer dataset).
    other_yaml = tmp_path / "other" / "data.yaml"
    other_yaml.parent.mkdir()
    other_yaml.write_text("names: {0: circle}\n")
    _register(registry, tmp_path, "b", metrics(other_yaml, 0.9, label_hash="labels-9"))
    evaluate = ScriptedEvaluate({"v2": 0.52}, label_hash="labels-1")

    decision = registry.promote("v2", evaluate=evaluate)

    # Only the candidate is evaluated, on production's data: the labels did not change.
    assert evaluate.calls == [("v2", EvalSet(data_yaml, "val", "labels-1"))]
    assert decision.eval_set == EvalSet(data_yaml, "val", "labels-1")
    assert decision.production_map50_95 == 0.5
    assert decision.production_reevaluated is False
    assert decision.promoted


@pytest.mark.parametrize("seen_hash", ["labels-2", None])
def test_production_is_re_evaluated_when_labels_changed_or_unknown(
    registry: Registry, tmp_path: Path, data_yaml: Path, seen_hash: str | None
) -> None:
    """Production's stored 0.70 was measured on older labels: it is measured again."""
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.70, label_hash="labels-1"))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    _register(registry, tmp_path, "b", metrics(data_yaml, 0.60, label_hash="labels-2"))
    evaluate = ScriptedEvaluate({"v2": 0.60, "v1": 0.55}, label_hash=seen_hash)

    decision = registry.promote("v2", evaluate=evaluate)

    assert evaluate.versions == ["v2", "v1"]
    assert all(eval_set.data == data_yaml for _, eval_set in evaluate.calls)
    assert decision.production_reevaluated is True
    assert decision.production_map50_95 == 0.55
    assert decision.promoted  # against the stored 0.70 it would have been refused
    assert decision.eval_set == EvalSet(data_yaml, "val", seen_hash)


def test_production_without_an_evaluation_set_is_compared_on_the_candidates(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _register(registry, tmp_path, "a", {})
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    _register(registry, tmp_path, "b", metrics(data_yaml, 0.4))
    evaluate = ScriptedEvaluate({"v2": 0.4, "v1": 0.45})

    decision = registry.promote("v2", evaluate=evaluate)

    assert evaluate.versions == ["v2", "v1"]
    assert not decision.promoted
    assert decision.production_map50_95 == 0.45


@pytest.mark.parametrize("force", [False, True])
def test_nothing_to_compare_on_refuses_unless_forced(
    registry: Registry, tmp_path: Path, data_yaml: Path, force: bool
) -> None:
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.5))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    _register(registry, tmp_path, "b", {})
    data_yaml.unlink()  # production's evaluation set is gone
    evaluate = ScriptedEvaluate({"v2": 0.9})

    decision = registry.promote("v2", evaluate=evaluate, force=force)

    assert evaluate.calls == []
    assert decision.promoted is force
    assert decision.forced is force
    assert "is gone" in decision.reason
    assert (decision.candidate_map50_95, decision.production_map50_95) == (None, None)
    assert _production(registry) == ("v2" if force else "v1")


def test_promoting_production_again_changes_nothing(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.5))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    evaluate = ScriptedEvaluate({})

    decision = registry.promote("v1", evaluate=evaluate)

    assert decision.promoted and "already production" in decision.reason
    assert evaluate.calls == []
    assert _production(registry) == "v1"


def test_a_promotion_racing_another_is_refused(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    """Production moves while the candidate is evaluated: the comparison is stale."""
    for name, score in (("a", 0.5), ("b", 0.6), ("c", 0.7)):
        _register(registry, tmp_path, name, metrics(data_yaml, score))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))

    def evaluate_while_another_process_promotes(weights: Path, eval_set: EvalSet) -> dict[str, Any]:
        with Registry(registry.workspace) as other:
            other.promote("v3", evaluate=ScriptedEvaluate({"v3": 0.7}))
        return {"map50_95": 0.6, "label_hash": "labels-1"}

    decision = registry.promote("v2", evaluate=evaluate_while_another_process_promotes)

    assert not decision.promoted
    assert "production changed from v1 to v3" in decision.reason
    assert _production(registry) == "v3"


def test_bad_tolerance_and_bad_evaluator_record_nothing(
    registry: Registry, tmp_path: Path, data_yaml: Path
) -> None:
    _register(registry, tmp_path, "a", metrics(data_yaml, 0.5))
    registry.promote("v1", evaluate=ScriptedEvaluate({}))
    _register(registry, tmp_path, "b", metrics(data_yaml, 0.5))

    with pytest.raises(InputError, match="tolerance"):
        registry.promote("v2", evaluate=ScriptedEvaluate({"v2": 0.5}), tolerance=-0.1)
    with pytest.raises(TypeError, match="no numeric 'map50_95'"):
        registry.promote("v2", evaluate=lambda weights, eval_set: {"map50": 0.5})
    with pytest.raises(InputError, match="existing versions: v1, v2"):
        registry.promote("v3", evaluate=ScriptedEvaluate({}))
    assert len(registry.promotions()) == 1


def test_the_database_allows_one_production_only(registry: Registry, tmp_path: Path) -> None:
    _register(registry, tmp_path, "a", {})
    _register(registry, tmp_path, "b", {})
    registry.promote("v1", evaluate=ScriptedEvaluate({}))

    with closing(sqlite3.connect(registry.db_path)) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("UPDATE versions SET stage='production' WHERE number=2")


# -- concurrency ------------------------------------------------------------------------------

PER_WORKER = 4


def _check_distinct_versions(workspace: Path, expected: set[str]) -> None:
    """Every registration got its own version, folder and intact copy of its own file."""
    with Registry(workspace) as registry:
        versions = registry.list()
    assert [v.number for v in versions] == list(range(1, len(expected) + 1))
    assert {v.config["tag"] for v in versions} == expected
    for version in versions:
        assert version.weights.read_bytes() == version.config["tag"].encode() * 64
        assert version.artifacts["pt"].sha256 == _sha256(version.weights)
    assert sorted(p.name for p in (workspace / "models").iterdir()) == sorted(
        v.version for v in versions
    )


def test_threads_registering_at_once_get_distinct_versions(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    Registry(workspace).close()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def worker(worker_id: int) -> None:
        try:
            with Registry(workspace) as registry:
                barrier.wait()
                for i in range(PER_WORKER):
                    tag = f"thread{worker_id}-{i}"
                    registry.register(
                        weights=fake_weights(tmp_path / tag, "best.pt", tag),
                        metrics={},
                        dataset_hash=None,
                        config={"tag": tag},
                    )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    _check_distinct_versions(
        workspace, {f"thread{n}-{i}" for n in range(2) for i in range(PER_WORKER)}
    )


_WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from distill.registry import Registry

    workspace, scratch = Path(sys.argv[1]), Path(sys.argv[2])
    worker_id, count = sys.argv[3], int(sys.argv[4])
    with Registry(workspace) as registry:
        (scratch / f"ready-{worker_id}").touch()
        while not (scratch / "start").exists():
            time.sleep(0.005)
        for i in range(count):
            tag = f"process{worker_id}-{i}"
            weights = scratch / tag / "best.pt"
            weights.parent.mkdir(parents=True)
            weights.write_bytes(tag.encode() * 64)
            registry.register(weights=weights, metrics={}, dataset_hash=None, config={"tag": tag})
    """
)


def test_processes_registering_at_once_get_distinct_versions(tmp_path: Path) -> None:
    workspace, scratch = tmp_path / "workspace", tmp_path / "scratch"
    scratch.mkdir()
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-c", _WORKER_SCRIPT, str(workspace), str(scratch)]
    workers = [
        subprocess.Popen(
            [*command, str(n), str(PER_WORKER)],
            env={**os.environ, "PYTHONPATH": python_path},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for n in range(2)
    ]
    # Both hold an open registry before either registers anything.
    deadline = time.monotonic() + 60
    while not all((scratch / f"ready-{n}").exists() for n in range(2)):
        if time.monotonic() > deadline or any(worker.poll() is not None for worker in workers):
            # The other worker waits for "start" forever: stop both, then say what they said.
            for worker in workers:
                worker.kill()
            outputs = [worker.communicate(timeout=30) for worker in workers]
            raise AssertionError(f"the workers did not both start: {outputs}")
        time.sleep(0.01)
    (scratch / "start").touch()
    outputs = [worker.communicate(timeout=60) for worker in workers]

    assert [worker.returncode for worker in workers] == [0, 0], outputs
    _check_distinct_versions(
        workspace, {f"process{n}-{i}" for n in range(2) for i in range(PER_WORKER)}
    )


# -- with the real evaluator ------------------------------------------------------------------


@pytest.mark.slow
def test_promotion_with_the_real_evaluator(
    registry: Registry, student: Any, shapes_dataset: Any
) -> None:
    """evaluation_metrics feeds register and promote; equal models pass the gate."""
    eval_set = EvalSet(shapes_dataset.path / "data.yaml", "val")
    stored = evaluation_metrics(student.result.best, eval_set, device="cpu")
    assert {"map50", "map50_95", "per_class", "ms_per_image"} <= set(stored)
    assert stored["data"] == str(eval_set.data)
    assert stored["label_hash"]

    first = registry.register(
        weights=student.result.best, metrics=stored, dataset_hash=stored["label_hash"], config={}
    )
    registry.promote(first.version, evaluate=evaluation_metrics)
    second = registry.register(
        weights=student.result.last,
        metrics=stored,
        dataset_hash=stored["label_hash"],
        config={},
        parent=first.version,
    )
    calls: list[str] = []

    def evaluate(weights: Path, eval_set: EvalSet) -> dict[str, Any]:
        calls.append(weights.parent.name)
        return evaluation_metrics(weights, eval_set, device="cpu")

    decision = registry.promote(second.version, evaluate=evaluate, tolerance=1.0)

    # The labels are unchanged, so production's stored number is reused.
    assert calls == ["v2"]
    assert decision.promoted
    assert decision.production_reevaluated is False
    assert decision.production_map50_95 == stored["map50_95"]
    assert decision.eval_set == EvalSet(eval_set.data, "val", stored["label_hash"])
