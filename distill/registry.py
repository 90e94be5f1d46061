"""The model registry: numbered versions of trained or imported students, and a gated production.

A registry lives in a workspace folder::

    WORKSPACE/registry.db          SQLite (WAL): versions, artifacts, promotions
    WORKSPACE/models/v<N>/         the version's files: model.pt, model.onnx, model.engine, ...

Each version ``v1, v2, ...`` records its metrics, the label-set hash it was trained on, its
training config, its parent, where it came from (``trained`` or ``imported``), its files with
their sha256 and the promptlabel version that registered it (``promptlabel_version``; None for
versions registered before the registry recorded it). Numbers are never reused and are handed
out inside a write transaction, so two processes registering at once get distinct versions.

**Metrics** are a JSON object. The registry reads these keys (others are kept as they are)::

    map50_95    float in [0, 1]: the number the promotion gate compares
    map50, per_class, ms_per_image
    data        the data.yaml (or dataset folder) evaluated } together: the version's
    split       the split evaluated ("val")                 } evaluation set (``EvalSet``)
    label_hash  hash of the dataset's labels when evaluated }

**Promotion is gated.** At most one version is ``production``. ``promote(v, evaluate=...)``
compares v with the current production on production's evaluation set, calling the injected
``evaluate(weights, eval_set) -> metrics`` for the candidate. The stored production number is
reused only when it is known to describe the same labels: the candidate's evaluation reports the
``label_hash`` of the labels it actually read, and if that equals the hash production was
evaluated on, the labels have not changed and production's stored ``map50_95`` is comparable.
Otherwise (the labels were edited since, or the evaluator reports no hash) production is evaluated
again on the same set, so both numbers always come from the same labels. The candidate is
promoted when its mAP50-95 is not lower than production's by more than ``tolerance``, overall
and on every class both evaluations score (``per_class``; a class with fewer than
``min_class_instances`` ground-truth boxes is reported but cannot veto: its number is noise),
on production's evaluation set and on any ``extra_eval_sets`` (the hard-case split), or when
``force`` is given. Every decision, promoted or refused, is recorded in ``promotions``, and each
comparison behind it in ``promotion_checks`` (``PromotionDecision.checks``); a refusal raises
nothing (the CLI turns ``promoted=False`` into exit code 1).

A stored number is only comparable if ``evaluate`` measures the way the one that produced it did
(same imgsz, thresholds, split): record a version's metrics with the same evaluate function that
is later passed to ``promote``. ``evaluation_metrics`` is that function for
``distill.evaluate.evaluate``: it returns the metrics above, ``label_hash`` included.
"""

from __future__ import annotations

import builtins
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from labeler.core.exceptions import InputError, ModelLoadError, StoreError
from labeler.core.images import sha256_file
from labeler.core.version import __version__
from labeler.store.sqlite import SqliteFile

__all__ = [
    "DB_NAME",
    "DEFAULT_MIN_CLASS_INSTANCES",
    "DEFAULT_PROMOTE_TOLERANCE",
    "Artifact",
    "EvalSet",
    "Evaluate",
    "GateCheck",
    "ModelVersion",
    "PromotionDecision",
    "Registry",
    "evaluation_metrics",
    "hard_case_eval_set",
]

logger = logging.getLogger(__name__)

# 2: versions and promotions record the promptlabel version that wrote them.
SCHEMA_VERSION = 2
DB_NAME = "registry.db"
MODELS_DIR = "models"
_STAGING_PREFIX = ".staging-"
# A staging folder (or partial artifact) untouched this long is left by a copy that died: a live
# one writes within seconds or minutes of starting, and renames its result soon after.
STALE_STAGING_AGE_S = 60 * 60
_KIND_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_VERSION_PATTERN = re.compile(r"^[vV]?(\d+)$")
DEFAULT_PROMOTE_TOLERANCE = 0.005  # mAP50-95 a candidate may lose to production and pass
# The gate's comparison is inclusive; this absorbs float rounding of e.g. 0.5 - 0.005.
_GATE_EPSILON = 1e-9
# A class with fewer ground-truth boxes than this in an evaluation set is reported but cannot
# veto a promotion: with 3 boxes, one box found or missed moves its mAP by a third.
DEFAULT_MIN_CLASS_INSTANCES = 5

Source = Literal["trained", "imported"]
Stage = Literal["none", "production"]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS versions (
        number INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('trained', 'imported')),
        parent INTEGER REFERENCES versions(number),
        dataset_hash TEXT,
        metrics TEXT NOT NULL,
        config TEXT NOT NULL,
        stage TEXT NOT NULL DEFAULT 'none' CHECK (stage IN ('none', 'production')),
        promptlabel_version TEXT
    )""",
    # The database itself guarantees at most one production version.
    "CREATE UNIQUE INDEX IF NOT EXISTS one_production ON versions(stage) "
    "WHERE stage = 'production'",
    """CREATE TABLE IF NOT EXISTS artifacts (
        version INTEGER NOT NULL REFERENCES versions(number),
        kind TEXT NOT NULL,
        file TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        is_weights INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (version, kind)
    )""",
    """CREATE TABLE IF NOT EXISTS promotions (
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
        created_at TEXT NOT NULL,
        promptlabel_version TEXT
    )""",
    # Every comparison behind a decision: overall (class_name NULL) and per class, on each
    # evaluation set. A table of its own needs no migration: the schema is applied at each open.
    """CREATE TABLE IF NOT EXISTS promotion_checks (
        promotion INTEGER NOT NULL REFERENCES promotions(id),
        position INTEGER NOT NULL,
        eval_set TEXT NOT NULL,
        class_name TEXT,
        candidate_map50_95 REAL NOT NULL,
        production_map50_95 REAL NOT NULL,
        instances REAL,
        outcome TEXT NOT NULL,
        PRIMARY KEY (promotion, position)
    )""",
)
# Statements that bring a registry of schema n to n + 1 (added columns go last, as in _SCHEMA:
# promotions are read with SELECT *). Rows written before a column existed read it as NULL.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "ALTER TABLE versions ADD COLUMN promptlabel_version TEXT",
        "ALTER TABLE promotions ADD COLUMN promptlabel_version TEXT",
    ),
}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _name(number: int) -> str:
    return f"v{number}"


def _json_default(value: Any) -> Any:
    """numpy scalars and arrays (from an evaluator) and paths become plain JSON values."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _to_json(value: Mapping[str, Any], what: str) -> str:
    try:
        return json.dumps(dict(value), default=_json_default, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} must be a JSON object of plain values ({exc})") from None


def _score(metrics: Mapping[str, Any] | None) -> float | None:
    """``metrics["map50_95"]`` as a finite float, or None when absent or not a number."""
    if metrics is None:
        return None
    value = metrics.get("map50_95")
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class EvalSet:
    """A dataset split a model is evaluated on: ``data`` (data.yaml), ``split``, and the hash of
    the dataset's labels (every split's: ``distill.dataset``'s label_hash) at evaluation time
    (None when unknown)."""

    data: Path
    split: str = "val"
    label_hash: str | None = None

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> EvalSet | None:
        """The evaluation set recorded in ``metrics`` (keys data, split, label_hash), if any."""
        data = metrics.get("data")
        if not data:
            return None
        label_hash = metrics.get("label_hash")
        return cls(
            Path(str(data)), str(metrics.get("split") or "val"), label_hash and str(label_hash)
        )

    def as_dict(self) -> dict[str, Any]:
        return {"data": str(self.data), "split": self.split, "label_hash": self.label_hash}


Evaluate = Callable[[Path, EvalSet], Mapping[str, Any]]
"""``evaluate(weights, eval_set) -> metrics``; metrics carry ``map50_95`` and, ideally, the
``label_hash`` of the labels actually read (without it, production is always re-evaluated)."""


@dataclass(frozen=True)
class Artifact:
    """One file of a version: ``path`` is absolute, inside the version's folder."""

    kind: str
    path: Path
    sha256: str
    size_bytes: int
    is_weights: bool


@dataclass(frozen=True)
class ModelVersion:
    """One registered model. ``weights`` is the file it was registered with (.pt, or .onnx for
    an imported ONNX model); exported files are further ``artifacts``."""

    version: str
    number: int
    created_at: str
    source: Source
    stage: Stage
    parent: str | None
    dataset_hash: str | None
    metrics: dict[str, Any]
    config: dict[str, Any]
    directory: Path
    artifacts: dict[str, Artifact] = field(default_factory=dict)
    # The promptlabel that registered it; None when registered before the registry recorded it.
    promptlabel_version: str | None = None

    @property
    def weights(self) -> Path:
        return next(a.path for a in self.artifacts.values() if a.is_weights)

    @property
    def map50_95(self) -> float | None:
        return _score(self.metrics)

    @property
    def eval_set(self) -> EvalSet | None:
        return EvalSet.from_metrics(self.metrics)


GateOutcome = Literal["pass", "worse", "too_few_instances"]


@dataclass(frozen=True)
class GateCheck:
    """One comparison behind a promotion decision, on one evaluation set: the overall mAP50-95
    (``class_name`` None) or one class's.

    ``outcome`` is ``pass`` (lost at most the tolerance), ``worse`` (lost more: a veto) or
    ``too_few_instances`` (a class lost more but has fewer ground-truth boxes than the gate's
    minimum, ``instances``, so its number is noise and does not veto).
    """

    eval_set: EvalSet
    class_name: str | None
    candidate_map50_95: float
    production_map50_95: float
    instances: float | None
    outcome: GateOutcome

    @property
    def drop(self) -> float:
        """How much mAP50-95 the candidate loses to production here (negative: it gains)."""
        return self.production_map50_95 - self.candidate_map50_95

    def describe(self) -> str:
        what = "overall" if self.class_name is None else f"class {self.class_name!r}"
        return (
            f"{what}: candidate {self.candidate_map50_95:.4f} vs production "
            f"{self.production_map50_95:.4f} on {self.eval_set.data} ({self.eval_set.split})"
        )


@dataclass(frozen=True)
class PromotionDecision:
    """What ``promote`` decided and on what evidence (also a row of the ``promotions`` table).

    ``forced`` is True when ``force`` was given; ``reason`` then says whether the gate alone
    would have passed. The two scores are mAP50-95 on ``eval_set`` (None where not measured);
    ``production_reevaluated`` tells whether production's score was measured now or read from
    its stored metrics. ``promptlabel_version`` is the promptlabel that decided (None for a
    decision recorded before the registry recorded it). ``checks`` are every comparison the
    gate made (overall and per class, on each evaluation set), in order; empty when it compared
    nothing.
    """

    id: int
    version: str
    previous_production: str | None
    promoted: bool
    forced: bool
    reason: str
    candidate_map50_95: float | None
    production_map50_95: float | None
    tolerance: float
    eval_set: EvalSet | None
    production_reevaluated: bool
    created_at: str
    promptlabel_version: str | None = None
    checks: tuple[GateCheck, ...] = ()


@dataclass(frozen=True)
class _Verdict:
    """A decision before it is recorded."""

    promoted: bool
    reason: str
    candidate_map50_95: float | None = None
    production_map50_95: float | None = None
    eval_set: EvalSet | None = None
    production_reevaluated: bool = False
    checks: tuple[GateCheck, ...] = ()


@dataclass(frozen=True)
class _Gate:
    """The promotion gate's rules: how much mAP50-95 a candidate may lose (overall and per
    class), and how many ground-truth boxes a class needs before its loss may veto."""

    tolerance: float
    min_class_instances: int

    def outcome(self, drop: float, instances: float | None = None) -> GateOutcome:
        if drop <= self.tolerance + _GATE_EPSILON:
            return "pass"
        if instances is not None and instances < self.min_class_instances:
            return "too_few_instances"
        return "worse"

    def checks(
        self,
        eval_set: EvalSet,
        candidate_score: float,
        production_score: float,
        candidate_metrics: Mapping[str, Any],
        production_metrics: Mapping[str, Any],
    ) -> builtins.list[GateCheck]:
        """The overall comparison on ``eval_set``, then one per class both metrics score."""
        checks = [
            GateCheck(
                eval_set,
                None,
                candidate_score,
                production_score,
                None,
                self.outcome(production_score - candidate_score),
            )
        ]
        candidate_classes = _per_class(candidate_metrics)
        for name, production_class in _per_class(production_metrics).items():
            candidate_class = candidate_classes.get(name)
            if candidate_class is None:
                continue
            candidate_class_score = _score(candidate_class)
            production_class_score = _score(production_class)
            if candidate_class_score is None or production_class_score is None:
                continue
            # Both scored the same labels; the candidate's count is the one just measured.
            instances = _instances(candidate_class)
            if instances is None:
                instances = _instances(production_class)
            checks.append(
                GateCheck(
                    eval_set,
                    name,
                    candidate_class_score,
                    production_class_score,
                    instances,
                    self.outcome(production_class_score - candidate_class_score, instances),
                )
            )
        return checks

    def reason(self, checks: Sequence[GateCheck], production_version: str) -> str:
        """Why the gate passed or refused, naming every comparison that decided it."""
        main = checks[0]
        head = (
            f"mAP50-95 {main.candidate_map50_95:.4f} vs production {production_version} "
            f"{main.production_map50_95:.4f} on {main.eval_set.data} ({main.eval_set.split})"
        )
        tolerance = f"tolerance {self.tolerance:g}"
        vetoes = [check for check in checks[1:] if check.outcome == "worse"]
        if main.outcome == "worse":
            parts = [f"{head}: worse by {main.drop:.4f} > {tolerance}"]
        elif vetoes:
            parts = [f"{head}: within {tolerance} overall"]
        else:
            parts = [f"{head}: within {tolerance}"]
        if vetoes:
            parts.append(
                f"worse by more than the {tolerance}: "
                + "; ".join(f"{check.describe()} (by {check.drop:.4f})" for check in vetoes)
            )
        others = [
            check for check in checks[1:] if check.class_name is None and check.outcome == "pass"
        ]
        if others:
            parts.append(f"within {tolerance}: " + "; ".join(check.describe() for check in others))
        classes = [check for check in checks if check.class_name is not None]
        if classes and not vetoes:
            passed = sum(check.outcome == "pass" for check in classes)
            parts.append(f"{passed} of {len(classes)} per-class comparisons within {tolerance}")
        noisy = [check for check in checks if check.outcome == "too_few_instances"]
        if noisy:
            parts.append(
                f"not gated, fewer than {self.min_class_instances} instances (too noisy to "
                "judge): "
                + "; ".join(f"{check.describe()}, {check.instances:g} instances" for check in noisy)
            )
        return "; ".join(parts)


class Registry(SqliteFile):
    """The model registry in ``workspace`` (created as needed); use as a context manager.

    One instance holds one SQLite connection and belongs to one thread; other threads and
    processes open their own instance on the same folder.
    """

    def __init__(self, workspace: str | Path) -> None:
        self.workspace = Path(workspace)
        self.models_dir = self.workspace / MODELS_DIR
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.workspace}: cannot create a model registry ({exc})") from None
        super().__init__(
            self.workspace / DB_NAME,
            schema=_SCHEMA,
            schema_version=SCHEMA_VERSION,
            what="the model registry",
            advice="use another workspace",
            migrations=_MIGRATIONS,
        )
        self._sweep_stale_leftovers()

    def _sweep_stale_leftovers(self) -> None:
        """Remove what copies killed midway left: ``models/.staging-*`` folders (registrations)
        and ``models/vN/.*.partial`` files (``add_artifact``).

        Another process may be copying right now, so only leftovers whose newest mtime (a
        folder's own or a file's in it; a file being copied keeps its own fresh) is older than
        ``STALE_STAGING_AGE_S`` are removed. Failures are logged, never raised.
        """
        try:
            entries = [p for p in self.models_dir.iterdir() if p.is_dir() and not p.is_symlink()]
            leftovers = [p for p in entries if p.name.startswith(_STAGING_PREFIX)]
            for version_dir in entries:
                if _VERSION_PATTERN.match(version_dir.name):
                    leftovers += [
                        p
                        for p in version_dir.glob(".*.partial")
                        if p.is_file() and not p.is_symlink()
                    ]
        except OSError as exc:
            logger.warning(
                "%s: cannot look for leftovers of killed copies (%s)", self.models_dir, exc
            )
            return
        cutoff = time.time() - STALE_STAGING_AGE_S
        for leftover in leftovers:
            try:
                times = [leftover.stat().st_mtime]
                if leftover.is_dir():
                    times += [
                        entry.stat(follow_symlinks=False).st_mtime for entry in leftover.iterdir()
                    ]
                if max(times) >= cutoff:
                    continue
                if leftover.is_dir():
                    shutil.rmtree(leftover)
                else:
                    leftover.unlink()
            except FileNotFoundError:
                continue  # finished by its copy, or swept by another process
            except OSError as exc:
                logger.warning("%s: cannot check or remove this leftover (%s)", leftover, exc)
                continue
            logger.info(
                "removed %s, left by an interrupted copy (untouched for %.1f h)",
                leftover,
                (time.time() - max(times)) / 3600,
            )

    # -- registering ------------------------------------------------------------------------------

    def register(
        self,
        *,
        weights: Path,
        metrics: Mapping[str, Any],
        dataset_hash: str | None,
        config: Mapping[str, Any],
        parent: str | None = None,
        source: Source = "trained",
    ) -> ModelVersion:
        """Add ``weights`` (a .pt or .onnx) as the next version, copying it into the registry.

        ``dataset_hash`` is the content hash of the label set the model was trained on (None if
        unknown); ``parent`` names an existing version it was fine-tuned from. The new version's
        stage is ``none``. Raises InputError for a missing file, an unknown parent or metrics or
        config that are not plain JSON.
        """
        weights = Path(weights)
        if not weights.is_file():
            raise InputError(f"{weights}: no such weights file")
        kind = weights.suffix.lstrip(".").lower()
        if kind not in {"pt", "onnx"}:
            raise InputError(f"{weights}: weights must be a .pt or .onnx file")
        if source not in ("trained", "imported"):
            raise InputError(f"source must be 'trained' or 'imported', got {source!r}")
        metrics_json = _to_json(metrics, "metrics")
        config_json = _to_json(config, "config")
        parent_number = self._number(parent) if parent is not None else None

        filename = _artifact_filename(kind, weights.suffix.lower())
        staging = self.models_dir / f"{_STAGING_PREFIX}{uuid.uuid4().hex}"
        try:
            # The slow copy and hash happen before the write lock is taken.
            staging.mkdir()
            shutil.copyfile(weights, staging / filename)
            sha256 = sha256_file(staging / filename)
            size_bytes = (staging / filename).stat().st_size
            with self._transaction() as db:
                cursor = db.execute(
                    "INSERT INTO versions (created_at, source, parent, dataset_hash, metrics, "
                    "config, promptlabel_version) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        _now(),
                        source,
                        parent_number,
                        dataset_hash,
                        metrics_json,
                        config_json,
                        __version__,
                    ),
                )
                number = int(cursor.lastrowid or 0)
                directory = self._directory(number)
                if directory.exists():
                    # Left by a registration killed between this rename and its commit: its row
                    # was rolled back, so nothing refers to the folder.
                    shutil.rmtree(directory)
                staging.rename(directory)
                try:
                    db.execute(
                        "INSERT INTO artifacts VALUES (?, ?, ?, ?, ?, 1, ?)",
                        (number, kind, filename, sha256, size_bytes, _now()),
                    )
                except BaseException:
                    shutil.rmtree(directory, ignore_errors=True)
                    raise
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path}: cannot register {weights} ({exc})") from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        logger.info("registered %s as %s", weights, _name(number))
        return self.get(_name(number))

    def import_model(self, file: Path, *, metrics: Mapping[str, Any] | None = None) -> ModelVersion:
        """Register an outside model (an Ultralytics .pt, or an .onnx exported by Ultralytics).

        The file must load: a .pt through Ultralytics, an .onnx in onnxruntime with Ultralytics'
        metadata (names, imgsz, stride, task), which the device runtime needs. Its class names
        and the source path go into the version's config. Raises InputError for another suffix,
        ModelLoadError for a file that does not load.
        """
        file = Path(file)
        if not file.is_file():
            raise InputError(f"{file}: no such model file")
        suffix = file.suffix.lower()
        if suffix == ".pt":
            description = _describe_checkpoint(file)
        elif suffix == ".onnx":
            description = _describe_onnx(file)
        else:
            raise InputError(
                f"{file}: can import a .pt or .onnx model, not {suffix or 'this file'}"
            )
        config = {"imported_from": str(file.resolve()), **description}
        return self.register(
            weights=file,
            metrics=metrics or {},
            dataset_hash=None,
            config=config,
            source="imported",
        )

    def add_artifact(self, version: str, path: Path, *, kind: str) -> Path:
        """Copy ``path`` into the version's folder as its ``kind`` file and return the copy.

        ``kind`` is a short lowercase name (``onnx``, ``engine``, ``onnx-fp16``, ...); a file of
        the same kind is replaced (a re-export), except the weights the version was registered
        with, which never change. Raises InputError for an unknown version, a missing file, a bad
        kind or an attempt to replace the weights.
        """
        number = self._number(version)
        path = Path(path)
        if not _KIND_PATTERN.match(kind):
            raise InputError(
                f"artifact kind {kind!r}: use lowercase letters, digits, '-' and '_' (e.g. onnx)"
            )
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        directory = self._directory(number)
        destination = directory / _artifact_filename(kind, path.suffix.lower())
        existing = self._db.execute(
            "SELECT is_weights FROM artifacts WHERE version=? AND kind=?", (number, kind)
        ).fetchone()
        if existing is not None and existing[0]:
            raise InputError(
                f"{_name(number)}'s {kind} file holds the weights it was registered with and "
                "cannot be replaced; register a new version instead"
            )
        same_file = destination.exists() and destination.resolve() == path.resolve()
        partial = directory / f".{destination.name}.{uuid.uuid4().hex}.partial"
        try:
            if not same_file:
                directory.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, partial)
            source = destination if same_file else partial
            sha256 = sha256_file(source)
            size_bytes = source.stat().st_size
            with self._transaction() as db:
                if not same_file:
                    os.replace(partial, destination)
                db.execute(
                    "INSERT OR REPLACE INTO artifacts VALUES (?, ?, ?, ?, ?, 0, ?)",
                    (number, kind, destination.name, sha256, size_bytes, _now()),
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path}: cannot add {path} to {version} ({exc})") from None
        finally:
            partial.unlink(missing_ok=True)
        return destination

    # -- reading ----------------------------------------------------------------------------------

    def list(self) -> builtins.list[ModelVersion]:
        """Every version, oldest first."""
        rows = self._db.execute("SELECT number FROM versions ORDER BY number").fetchall()
        return [self._load(int(row[0])) for row in rows]

    def get(self, version: str) -> ModelVersion:
        """The version named ``version`` ("v3" or "3"); InputError naming the existing ones if
        there is none."""
        return self._load(self._number(version))

    def production(self) -> ModelVersion | None:
        """The production version, or None before the first promotion."""
        row = self._db.execute("SELECT number FROM versions WHERE stage='production'").fetchone()
        return None if row is None else self._load(int(row[0]))

    def promotions(self, version: str | None = None) -> builtins.list[PromotionDecision]:
        """Recorded promotion decisions, oldest first; only ``version``'s when given."""
        query = "SELECT * FROM promotions"
        args: tuple[Any, ...] = ()
        if version is not None:
            query += " WHERE version=?"
            args = (self._number(version),)
        rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [self._with_checks(_decision(row)) for row in rows]

    def _number(self, version: str) -> int:
        match = _VERSION_PATTERN.match(str(version).strip())
        if match is not None:
            number = int(match[1])
            if self._db.execute("SELECT 1 FROM versions WHERE number=?", (number,)).fetchone():
                return number
        names = [_name(int(r[0])) for r in self._db.execute("SELECT number FROM versions")]
        known = f"existing versions: {', '.join(names)}" if names else "the registry is empty"
        raise InputError(f"unknown model version {version!r} in {self.workspace}; {known}")

    def _directory(self, number: int) -> Path:
        return self.models_dir / _name(number)

    def _load(self, number: int) -> ModelVersion:
        row = self._db.execute(
            "SELECT created_at, source, parent, dataset_hash, metrics, config, stage, "
            "promptlabel_version FROM versions WHERE number=?",
            (number,),
        ).fetchone()
        if row is None:
            raise InputError(f"unknown model version v{number}")
        created_at, source, parent, dataset_hash, metrics, config, stage, promptlabel_version = row
        directory = self._directory(number)
        artifacts = {
            kind: Artifact(kind, directory / file, sha256, int(size_bytes), bool(is_weights))
            for kind, file, sha256, size_bytes, is_weights in self._db.execute(
                "SELECT kind, file, sha256, size_bytes, is_weights FROM artifacts "
                "WHERE version=? ORDER BY created_at, kind",
                (number,),
            )
        }
        return ModelVersion(
            version=_name(number),
            number=number,
            created_at=created_at,
            source=source,
            stage=stage,
            parent=None if parent is None else _name(int(parent)),
            dataset_hash=dataset_hash,
            metrics=json.loads(metrics),
            config=json.loads(config),
            directory=directory,
            artifacts=artifacts,
            promptlabel_version=promptlabel_version,
        )

    # -- promotion --------------------------------------------------------------------------------

    def promote(
        self,
        version: str,
        *,
        evaluate: Evaluate,
        tolerance: float = DEFAULT_PROMOTE_TOLERANCE,
        force: bool = False,
        extra_eval_sets: Sequence[EvalSet] = (),
        min_class_instances: int = DEFAULT_MIN_CLASS_INSTANCES,
    ) -> PromotionDecision:
        """Make ``version`` production if it holds up against the current production.

        The candidate passes when its mAP50-95 on production's evaluation set is at least
        production's minus ``tolerance`` (see the module docstring for which production number
        is used), and the same holds for every class both evaluations score (``per_class`` in
        the metrics), except classes with fewer than ``min_class_instances`` ground-truth boxes,
        whose numbers are reported but too noisy to veto. ``extra_eval_sets`` (e.g. the
        hard-case split of the candidate's dataset) are gated the same way, overall and per
        class, both models evaluated on each. ``force`` promotes regardless, still measuring
        both when it can. With no production yet, the candidate is promoted without a
        comparison. If production has no recorded evaluation set, the candidate's is used for
        both; with neither, or when a set's data.yaml is gone, the promotion is refused (or
        forced). The decision, with every comparison (``checks``), is recorded and returned; a
        refusal leaves production unchanged and raises nothing. Errors from ``evaluate``
        propagate and record nothing.
        """
        if not (math.isfinite(tolerance) and tolerance >= 0):
            raise InputError(f"tolerance must be a number >= 0, got {tolerance}")
        if isinstance(min_class_instances, bool) or min_class_instances < 0:
            raise InputError(f"min_class_instances must be >= 0, got {min_class_instances}")
        candidate = self.get(version)
        production = self.production()
        if production is None:
            verdict = _Verdict(True, "no production version yet: promoted without a comparison")
        elif production.number == candidate.number:
            verdict = _Verdict(True, f"{candidate.version} is already production")
        else:
            verdict = self._compare(
                candidate,
                production,
                evaluate,
                _Gate(tolerance, min_class_instances),
                force,
                tuple(extra_eval_sets),
            )
        return self._record(candidate, production, verdict, tolerance, force)

    def _compare(
        self,
        candidate: ModelVersion,
        production: ModelVersion,
        evaluate: Evaluate,
        gate: _Gate,
        force: bool,
        extra_eval_sets: tuple[EvalSet, ...] = (),
    ) -> _Verdict:
        """Measure the candidate (and production when needed) and apply the gate."""
        eval_set = production.eval_set or candidate.eval_set
        if eval_set is None:
            return _Verdict(
                force,
                f"neither production {production.version} nor {candidate.version} records an "
                "evaluation set (metrics 'data'); nothing to compare on",
            )
        if not eval_set.data.exists():
            return _Verdict(
                force,
                f"evaluation set {eval_set.data} of production {production.version} is gone; "
                "cannot compare",
                eval_set=eval_set,
            )
        candidate_metrics = evaluate(candidate.weights, eval_set)
        candidate_score = _required_score(candidate_metrics, candidate.version)
        seen_hash = candidate_metrics.get("label_hash")
        stored_score = production.map50_95
        comparable = (
            production.eval_set == eval_set
            and stored_score is not None
            and seen_hash is not None
            and seen_hash == eval_set.label_hash
            # Per-class numbers need production's too: stored ones, or else measured now.
            and (not _per_class(candidate_metrics) or bool(_per_class(production.metrics)))
        )
        production_metrics: Mapping[str, Any] = production.metrics
        if comparable and stored_score is not None:
            production_score = stored_score
        else:
            production_metrics = evaluate(production.weights, eval_set)
            production_score = _required_score(production_metrics, production.version)
            if _labels_changed(seen_hash, production_metrics):
                return _Verdict(
                    force,
                    f"the labels of {eval_set.data} changed between the two evaluations; "
                    "promote again",
                    candidate_score,
                    production_score,
                    eval_set,
                    production_reevaluated=True,
                )
        measured_on = EvalSet(eval_set.data, eval_set.split, seen_hash and str(seen_hash))
        checks = gate.checks(
            measured_on, candidate_score, production_score, candidate_metrics, production_metrics
        )

        def refused(reason: str) -> _Verdict:
            return _Verdict(
                force,
                reason + ("; forced" if force else ""),
                candidate_score,
                production_score,
                measured_on,
                production_reevaluated=not comparable,
                checks=tuple(checks),
            )

        for extra in extra_eval_sets:
            if not extra.data.exists():
                return refused(
                    f"evaluation set {extra.data} ({extra.split}) is gone; cannot compare"
                )
            extra_candidate = evaluate(candidate.weights, extra)
            extra_production = evaluate(production.weights, extra)
            extra_hash = extra_candidate.get("label_hash")
            if _labels_changed(extra_hash, extra_production):
                return refused(
                    f"the labels of {extra.data} ({extra.split}) changed between the two "
                    "evaluations; promote again"
                )
            checks += gate.checks(
                EvalSet(extra.data, extra.split, extra_hash and str(extra_hash)),
                _required_score(extra_candidate, candidate.version),
                _required_score(extra_production, production.version),
                extra_candidate,
                extra_production,
            )
        passes = all(check.outcome != "worse" for check in checks)
        reason = gate.reason(checks, production.version)
        if force:
            reason += "; forced"
        return _Verdict(
            passes or force,
            reason,
            candidate_score,
            production_score,
            measured_on,
            production_reevaluated=not comparable,
            checks=tuple(checks),
        )

    def _record(
        self,
        candidate: ModelVersion,
        production: ModelVersion | None,
        verdict: _Verdict,
        tolerance: float,
        force: bool,
    ) -> PromotionDecision:
        """Apply and record ``verdict`` in one transaction, unless production moved meanwhile."""
        expected = None if production is None else production.number
        eval_set_json = None if verdict.eval_set is None else json.dumps(verdict.eval_set.as_dict())
        created_at = _now()
        try:
            with self._transaction() as db:
                row = db.execute("SELECT number FROM versions WHERE stage='production'").fetchone()
                current = None if row is None else int(row[0])
                if current != expected:
                    # Another process promoted while we evaluated: our comparison is stale.
                    verdict = replace(
                        verdict,
                        promoted=False,
                        reason=f"production changed from {_optional_name(expected)} to "
                        f"{_optional_name(current)} during the evaluation; promote again",
                    )
                if verdict.promoted and current != candidate.number:
                    db.execute("UPDATE versions SET stage='none' WHERE stage='production'")
                    db.execute(
                        "UPDATE versions SET stage='production' WHERE number=?", (candidate.number,)
                    )
                cursor = db.execute(
                    "INSERT INTO promotions (version, previous_production, promoted, forced, "
                    "reason, candidate_map50_95, production_map50_95, tolerance, eval_set, "
                    "production_reevaluated, created_at, promptlabel_version) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        candidate.number,
                        current,
                        int(verdict.promoted),
                        int(force),
                        verdict.reason,
                        verdict.candidate_map50_95,
                        verdict.production_map50_95,
                        tolerance,
                        eval_set_json,
                        int(verdict.production_reevaluated),
                        created_at,
                        __version__,
                    ),
                )
                decision_id = int(cursor.lastrowid or 0)
                db.executemany(
                    "INSERT INTO promotion_checks VALUES (?,?,?,?,?,?,?,?)",
                    [
                        (
                            decision_id,
                            position,
                            json.dumps(check.eval_set.as_dict()),
                            check.class_name,
                            check.candidate_map50_95,
                            check.production_map50_95,
                            check.instances,
                            check.outcome,
                        )
                        for position, check in enumerate(verdict.checks)
                    ],
                )
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.db_path}: cannot record the promotion ({exc})") from None
        log = logger.info if verdict.promoted else logger.warning
        log("promotion of %s: %s", candidate.version, verdict.reason)
        row = self._db.execute("SELECT * FROM promotions WHERE id=?", (decision_id,)).fetchone()
        return self._with_checks(_decision(row))

    def _with_checks(self, decision: PromotionDecision) -> PromotionDecision:
        """``decision`` with the comparisons recorded for it (none for older decisions)."""
        rows = self._db.execute(
            "SELECT eval_set, class_name, candidate_map50_95, production_map50_95, instances, "
            "outcome FROM promotion_checks WHERE promotion=? ORDER BY position",
            (decision.id,),
        ).fetchall()
        checks = tuple(
            GateCheck(_eval_set_from_json(eval_set), class_name, candidate, production, n, outcome)
            for eval_set, class_name, candidate, production, n, outcome in rows
        )
        return replace(decision, checks=checks)


def evaluation_metrics(weights: Path, eval_set: EvalSet, **options: Any) -> dict[str, Any]:
    """``distill.evaluate.evaluate`` in the shape ``Registry`` stores and ``promote`` expects.

    Scores ``weights`` on ``eval_set`` (``options`` go to ``evaluate``: imgsz, conf, device, ...)
    and returns its numbers plus ``data``, ``split`` and the dataset's current ``label_hash``.
    Use it both for the metrics passed to ``register`` and as ``promote``'s ``evaluate``, so a
    stored number and a fresh one are measured the same way.
    """
    from distill.evaluate import evaluate

    result = evaluate(weights, eval_set.data, split=eval_set.split, **options)
    return {
        "map50": result.map50,
        "map50_95": result.map50_95,
        "precision": result.precision,
        "recall": result.recall,
        "per_class": result.per_class,
        "ms_per_image": result.ms_per_image,
        "n_images": result.n_images,
        "imgsz": result.imgsz,
        "data": result.data_yaml,
        "split": eval_set.split,
        "label_hash": result.label_hash,
        # Segmentation students on polygon labels: mask mAP beside box mAP (COCO "segm").
        **(
            {
                "mask_map50": result.mask_map50,
                "mask_map50_95": result.mask_map50_95,
                "mask_precision": result.mask_precision,
                "mask_recall": result.mask_recall,
                "mask_per_class": result.mask_per_class,
            }
            if result.mask_map50_95 is not None
            else {}
        ),
    }


HARD_CASES_SPLIT = "hard_cases"


def hard_case_eval_set(version: ModelVersion) -> EvalSet | None:
    """The ``hard_cases`` split of the dataset ``version`` was evaluated on, when that data.yaml
    declares one (dataset versions do: frames devices sent back, held out in val); None
    otherwise. Pass it to ``promote(extra_eval_sets=...)`` with the candidate, so the gate sees
    whether the new model learned what the old one found hard."""
    import yaml

    from distill.dataset import resolve_data_yaml

    eval_set = version.eval_set
    if eval_set is None:
        return None
    try:
        # The recorded data is the dataset folder (or its data.yaml) the version was scored on.
        document = yaml.safe_load(resolve_data_yaml(eval_set.data).read_text())
    except InputError as exc:
        logger.warning("%s: no data.yaml to look for a hard-case split in (%s)", eval_set.data, exc)
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        logger.warning("%s: cannot read it to look for a hard-case split (%s)", eval_set.data, exc)
        return None
    if not isinstance(document, dict) or not document.get(HARD_CASES_SPLIT):
        return None
    return EvalSet(eval_set.data, HARD_CASES_SPLIT)


def _optional_name(number: int | None) -> str:
    return "none" if number is None else _name(number)


def _per_class(metrics: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """``metrics["per_class"]`` as class name -> that class's metrics ({} when absent)."""
    per_class = metrics.get("per_class")
    if not isinstance(per_class, Mapping):
        return {}
    return {str(name): value for name, value in per_class.items() if isinstance(value, Mapping)}


def _instances(class_metrics: Mapping[str, Any]) -> float | None:
    """A class's ground-truth box count from its metrics, or None when not reported."""
    value = class_metrics.get("instances")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _labels_changed(seen_hash: Any, other_metrics: Mapping[str, Any]) -> bool:
    """Whether two evaluations of one set report different label hashes (unknown: no)."""
    other_hash = other_metrics.get("label_hash")
    return seen_hash is not None and other_hash is not None and seen_hash != other_hash


def _required_score(metrics: Mapping[str, Any], version: str) -> float:
    score = _score(metrics)
    if score is None:
        raise TypeError(
            f"evaluate() returned no numeric 'map50_95' for {version}: {dict(metrics)!r}"
        )
    return score


def _eval_set_from_json(text: str) -> EvalSet:
    fields = json.loads(text)
    return EvalSet(Path(fields["data"]), fields["split"], fields["label_hash"])


def _decision(row: tuple[Any, ...]) -> PromotionDecision:
    (
        decision_id,
        number,
        previous,
        promoted,
        forced,
        reason,
        candidate_score,
        production_score,
        tolerance,
        eval_set,
        reevaluated,
        created_at,
        promptlabel_version,
    ) = row
    parsed = None if eval_set is None else _eval_set_from_json(eval_set)
    return PromotionDecision(
        id=int(decision_id),
        version=_name(int(number)),
        previous_production=None if previous is None else _name(int(previous)),
        promoted=bool(promoted),
        forced=bool(forced),
        reason=reason,
        candidate_map50_95=candidate_score,
        production_map50_95=production_score,
        tolerance=float(tolerance),
        eval_set=parsed,
        production_reevaluated=bool(reevaluated),
        created_at=created_at,
        promptlabel_version=promptlabel_version,
    )


def _artifact_filename(kind: str, suffix: str) -> str:
    """``model.onnx`` for kind onnx, ``model-onnx-fp16.onnx`` for kind onnx-fp16: kinds never
    share a file name (kinds have no dots)."""
    return f"model{suffix}" if kind == suffix.lstrip(".") else f"model-{kind}{suffix}"


def _describe_checkpoint(file: Path) -> dict[str, Any]:
    """Load an Ultralytics .pt (ModelLoadError if it does not) and return its class names."""
    from distill.ultralytics_env import load_yolo

    model = load_yolo(file)
    names = getattr(model, "names", None) or {}
    return {"names": {int(k): str(v) for k, v in dict(names).items()}, "task": model.task}


def _describe_onnx(file: Path) -> dict[str, Any]:
    """Load an .onnx in onnxruntime and return its Ultralytics metadata (ModelLoadError if the
    file does not load or lacks the metadata the device runtime needs)."""
    import onnxruntime as ort

    from distill.model_metadata import REQUIRED_METADATA, check_required_metadata, metadata_values

    try:
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ModelLoadError(f"{file}: onnxruntime cannot load it ({exc})") from None
    metadata = metadata_values(session.get_modelmeta().custom_metadata_map)
    check_required_metadata(metadata, source=str(file))
    return {key: metadata[key] for key in REQUIRED_METADATA}
