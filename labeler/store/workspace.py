"""The workspace: a SQLite database of images, proposals, verdicts and routed labels.

Every unit of work (an image's proposals, a box's verdict) is committed on its own, so a run killed
at any point resumes without repeating finished work. Images are keyed by content hash; a file whose
size and mtime are unchanged is not hashed again.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from labeler.core.detections import Detections
from labeler.store.decisions import (
    DECISION_SCHEMA,
    REVIEW_QUEUE_MIGRATION,
    REVIEW_QUEUE_SCHEMA,
    HumanDecisions,
    refill_review_queue,
)
from labeler.store.spot_checks import SpotChecks
from labeler.store.sqlite import SqliteFile

__all__ = ["FileRecord", "LabelRow", "StoredVerdict", "Workspace"]

# v2: reviewers' decisions, claims and spot checks (labeler.store.decisions, .spot_checks);
# v1 files gain the tables.
# v3: the review queue table, kept by triggers, and each run's label counts (labeler.store.
# decisions); v2 files gain both, filled for their latest run.
# v4: the masks table (labeler.segment), created for v3 files by the schema itself.
# v5: the student_boxes table (what a deployed student predicted on hard cases), likewise.
SCHEMA_VERSION = 5
_MIGRATIONS: dict[int, tuple[str, ...]] = {1: (), 2: REVIEW_QUEUE_MIGRATION, 3: (), 4: ()}
DB_NAME = "workspace.db"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    error_reason TEXT,
    error_detail TEXT
)""",
    """CREATE TABLE IF NOT EXISTS images (
    sha256 TEXT PRIMARY KEY,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS proposal_sets (
    image_sha256 TEXT NOT NULL,
    propose_key TEXT NOT NULL,
    n_boxes INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (image_sha256, propose_key)
)""",
    """CREATE TABLE IF NOT EXISTS proposals (
    id INTEGER PRIMARY KEY,
    image_sha256 TEXT NOT NULL,
    propose_key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    class_id INTEGER NOT NULL,
    class_name TEXT NOT NULL,
    x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
    score REAL NOT NULL,
    box_score REAL NOT NULL,
    UNIQUE (image_sha256, propose_key, idx)
)""",
    # Which tile of a tiled run found a proposal (labeler.propose.tiling; tile_index -1: the
    # whole image). A table of its own, so untiled workspaces and older readers are unchanged.
    """CREATE TABLE IF NOT EXISTS proposal_tiles (
    proposal_id INTEGER PRIMARY KEY REFERENCES proposals(id),
    tile_index INTEGER NOT NULL,
    x1 INTEGER NOT NULL, y1 INTEGER NOT NULL, x2 INTEGER NOT NULL, y2 INTEGER NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS verdicts (
    cache_key TEXT PRIMARY KEY,
    answer TEXT NOT NULL,
    yes_prob REAL,
    raw TEXT NOT NULL,
    error TEXT,
    model_id TEXT NOT NULL,
    template_id TEXT NOT NULL,
    template_hash TEXT NOT NULL,
    mode TEXT NOT NULL,
    question TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    config TEXT NOT NULL,
    report TEXT
)""",
    """CREATE TABLE IF NOT EXISTS labels (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    proposal_id INTEGER NOT NULL REFERENCES proposals(id),
    status TEXT NOT NULL,
    reason TEXT NOT NULL,
    verdict_key TEXT,
    PRIMARY KEY (run_id, proposal_id)
)""",
    # One mask per image, box (rounded xyxy) and mask key (segmenter spec and options), as RLE.
    """CREATE TABLE IF NOT EXISTS masks (
    image_sha256 TEXT NOT NULL,
    box TEXT NOT NULL,
    mask_key TEXT NOT NULL,
    rle TEXT NOT NULL,
    iou REAL NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (image_sha256, box, mask_key)
)""",
    # What the deployed student predicted on an image (a hard case), as JSON
    # [{"class": name, "xyxy": [...]}, ...]: routing sends the proposals it disagrees on to review.
    """CREATE TABLE IF NOT EXISTS student_boxes (
    image_sha256 TEXT PRIMARY KEY,
    boxes TEXT NOT NULL,
    source TEXT NOT NULL,
    created_at TEXT NOT NULL
)""",
    *DECISION_SCHEMA,
    *REVIEW_QUEUE_SCHEMA,
)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class FileRecord:
    path: str
    sha256: str
    error_reason: str | None
    error_detail: str | None


@dataclass(frozen=True)
class StoredVerdict:
    cache_key: str
    answer: str
    yes_prob: float | None
    raw: str
    error: str | None


@dataclass(frozen=True)
class LabelRow:
    proposal_id: int
    status: str
    reason: str
    verdict_key: str | None


class Workspace(HumanDecisions, SpotChecks, SqliteFile):
    """A workspace folder holding ``workspace.db``; use as a context manager."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        super().__init__(
            self.directory / DB_NAME,
            schema=_SCHEMA,
            schema_version=SCHEMA_VERSION,
            what="workspace database",
            advice="use a new --workspace",
            migrations=_MIGRATIONS,
        )

    # -- files and images -------------------------------------------------------------------------

    def known_file(self, path: str, *, size_bytes: int, mtime_ns: int) -> FileRecord | None:
        """The stored record of ``path`` if its size and mtime are unchanged, else None."""
        row = self._db.execute(
            "SELECT sha256, error_reason, error_detail FROM files "
            "WHERE path=? AND size_bytes=? AND mtime_ns=?",
            (path, size_bytes, mtime_ns),
        ).fetchone()
        return None if row is None else FileRecord(path, row[0], row[1], row[2])

    def record_file(
        self,
        path: str,
        *,
        sha256: str,
        size_bytes: int,
        mtime_ns: int,
        error_reason: str | None = None,
        error_detail: str | None = None,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET "
                "sha256=excluded.sha256, size_bytes=excluded.size_bytes, "
                "mtime_ns=excluded.mtime_ns, error_reason=excluded.error_reason, "
                "error_detail=excluded.error_detail",
                (path, sha256, size_bytes, mtime_ns, error_reason, error_detail),
            )

    def file_paths(self, sha256: str) -> list[str]:
        """The files recorded with these bytes (as scanned: resolved paths), in path order."""
        rows = self._db.execute(
            "SELECT path FROM files WHERE sha256=? ORDER BY path", (sha256,)
        ).fetchall()
        return [row[0] for row in rows]

    def forget_file(self, path: str) -> None:
        """Drop what is known of ``path``: the next scan reads and hashes it again."""
        with self._transaction() as db:
            db.execute("DELETE FROM files WHERE path=?", (path,))

    def record_file_error(self, path: str, *, reason: str, detail: str) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE files SET error_reason=?, error_detail=? WHERE path=?",
                (reason, detail, path),
            )

    def record_image(self, sha256: str, image_wh: tuple[int, int]) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO images VALUES (?, ?, ?)", (sha256, image_wh[0], image_wh[1])
            )

    def image_sizes(self, sha256s: Iterable[str]) -> dict[str, tuple[int, int]]:
        wanted = set(sha256s)
        if len(wanted) > 500:  # many: one pass over the table beats a lookup each
            rows = self._db.execute("SELECT sha256, width, height FROM images").fetchall()
            return {sha: (w, h) for sha, w, h in rows if sha in wanted}
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT sha256, width, height FROM images WHERE sha256 IN ({marks})", list(wanted)
        ).fetchall()
        return {sha: (w, h) for sha, w, h in rows}

    # -- proposals --------------------------------------------------------------------------------

    def proposed_images(self, propose_key: str) -> set[str]:
        rows = self._db.execute(
            "SELECT image_sha256 FROM proposal_sets WHERE propose_key=?", (propose_key,)
        ).fetchall()
        return {row[0] for row in rows}

    def save_proposals(
        self,
        image_sha256: str,
        propose_key: str,
        detections: Detections,
        class_names: Sequence[str],
    ) -> None:
        """Store one image's proposals and mark the image done, atomically."""
        box_scores = detections.data.get("box_score", detections.confidence)
        rows = [
            (
                image_sha256,
                propose_key,
                i,
                int(detections.class_id[i]),
                class_names[int(detections.class_id[i])],
                *(float(v) for v in detections.xyxy[i]),
                float(detections.confidence[i]),
                float(box_scores[i]),
            )
            for i in range(len(detections))
        ]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO proposals (image_sha256, propose_key, idx, class_id, "
                "class_name, x1, y1, x2, y2, score, box_score) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            if "tile_index" in detections.data:
                tiles = detections.data["tile_xyxy"]
                db.executemany(
                    "INSERT INTO proposal_tiles SELECT id, ?, ?, ?, ?, ? FROM proposals "
                    "WHERE image_sha256=? AND propose_key=? AND idx=?",
                    [
                        (int(index), *(int(v) for v in tiles[i]), image_sha256, propose_key, i)
                        for i, index in enumerate(detections.data["tile_index"])
                    ],
                )
            db.execute(
                "INSERT OR REPLACE INTO proposal_sets VALUES (?, ?, ?, ?)",
                (image_sha256, propose_key, len(rows), _now()),
            )

    def load_proposals(self, image_sha256: str, propose_key: str) -> Detections:
        """The stored proposals of one image; ``data['proposal_id']`` holds their row ids."""
        rows = self._db.execute(
            "SELECT id, class_id, x1, y1, x2, y2, score, box_score FROM proposals "
            "WHERE image_sha256=? AND propose_key=? ORDER BY idx",
            (image_sha256, propose_key),
        ).fetchall()
        if not rows:
            empty = Detections.empty()
            empty.data = {
                "proposal_id": np.zeros(0, np.int64),
                "box_score": np.zeros(0, np.float32),
            }
            return empty
        table = np.asarray(rows, dtype=np.float64)
        return Detections(
            xyxy=table[:, 2:6].astype(np.float32),
            class_id=table[:, 1].astype(np.int64),
            confidence=table[:, 6].astype(np.float32),
            data={
                "proposal_id": table[:, 0].astype(np.int64),
                "box_score": table[:, 7].astype(np.float32),
            },
        )

    def proposal_tiles(self, proposal_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """``{proposal_id: {"index": i, "xyxy": [x1, y1, x2, y2]}}`` for proposals of a tiled run
        (index -1: found on the whole image); proposals of untiled runs are absent."""
        wanted = [int(i) for i in proposal_ids]
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(
            f"SELECT proposal_id, tile_index, x1, y1, x2, y2 FROM proposal_tiles "
            f"WHERE proposal_id IN ({marks})",
            wanted,
        ).fetchall()
        return {row[0]: {"index": row[1], "xyxy": list(row[2:])} for row in rows}

    # -- verdicts (the verifier cache) ------------------------------------------------------------

    def get_verdicts(self, cache_keys: Iterable[str]) -> dict[str, StoredVerdict]:
        keys = list(dict.fromkeys(cache_keys))
        found: dict[str, StoredVerdict] = {}
        # SQLite limits bound parameters per statement; 500 stays well below every build's limit.
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._db.execute(
                f"SELECT cache_key, answer, yes_prob, raw, error FROM verdicts "
                f"WHERE cache_key IN ({marks})",
                chunk,
            ):
                found[row[0]] = StoredVerdict(*row)
        return found

    def save_verdicts(self, rows: Sequence[dict[str, Any]]) -> None:
        """Store verdicts; each row has cache_key, answer, yes_prob, raw, error, model_id,
        template_id, template_hash, mode and question."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO verdicts VALUES (:cache_key, :answer, :yes_prob, :raw, "
                ":error, :model_id, :template_id, :template_hash, :mode, :question, :created_at)",
                [{**row, "created_at": _now()} for row in rows],
            )

    # -- masks (the segmenter cache) --------------------------------------------------------------

    def get_masks(self, image_sha256: str, mask_key: str) -> dict[str, dict[str, Any]]:
        """Stored masks of one image under ``mask_key``: box text -> RLE dict."""
        return {
            box: json.loads(rle)
            for box, rle in self._db.execute(
                "SELECT box, rle FROM masks WHERE image_sha256=? AND mask_key=?",
                (image_sha256, mask_key),
            )
        }

    def save_masks(
        self, image_sha256: str, mask_key: str, rows: Sequence[tuple[str, dict[str, Any], float]]
    ) -> None:
        """Store (box text, RLE dict, predicted IoU) rows of one image."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO masks VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (image_sha256, box, mask_key, json.dumps(rle), float(iou), _now())
                    for box, rle, iou in rows
                ],
            )

    # -- the deployed student's predictions ------------------------------------------------------

    def save_student_boxes(
        self, boxes: Mapping[str, Sequence[Mapping[str, Any]]], *, source: str
    ) -> None:
        """Store (replacing) the student's boxes per image SHA-256: ``{"class", "xyxy"}`` each."""
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO student_boxes VALUES (?, ?, ?, ?)",
                [
                    (sha, json.dumps([{"class": str(b["class"]), "xyxy": [float(v) for v in
                                       b["xyxy"]]} for b in rows]), source, _now())
                    for sha, rows in boxes.items()
                ],
            )  # fmt: skip

    def student_boxes(self) -> dict[str, list[tuple[str, list[float]]]]:
        """Every stored image's student boxes as (class name, xyxy)."""
        return {
            sha: [(box["class"], box["xyxy"]) for box in json.loads(text)]
            for sha, text in self._db.execute("SELECT image_sha256, boxes FROM student_boxes")
        }

    # -- runs and routed labels -------------------------------------------------------------------

    def start_run(self, config: dict[str, Any]) -> int:
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (started_at, config) VALUES (?, ?)",
                (_now(), json.dumps(config, sort_keys=True, default=str)),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    def save_labels(self, run_id: int, rows: Sequence[LabelRow]) -> None:
        """Store a run's routed labels (replacing any it had); the review queue then holds the
        latest run's undecided ``needs_review`` boxes."""
        with self._transaction() as db:
            db.execute("DELETE FROM labels WHERE run_id=?", (run_id,))
            db.executemany(
                "INSERT INTO labels VALUES (?, ?, ?, ?, ?)",
                [(run_id, r.proposal_id, r.status, r.reason, r.verdict_key) for r in rows],
            )
            refill_review_queue(db, run_id)

    def run_config(self, run_id: int) -> dict[str, Any] | None:
        """What ``start_run`` recorded for run ``run_id`` (None: no such run)."""
        row = self._db.execute("SELECT config FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            return None
        config: dict[str, Any] = json.loads(row[0])
        return config

    def finish_run(self, run_id: int, report: dict[str, Any]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET finished_at=?, report=? WHERE id=?",
                (_now(), json.dumps(report, sort_keys=True, default=str), run_id),
            )

    def count_rows(self, table: str) -> int:
        """Row count of a workspace table (for reports and tests)."""
        if table not in {
            "files",
            "images",
            "proposals",
            "proposal_sets",
            "verdicts",
            "masks",
            "runs",
            "labels",
            "decisions",
            "claims",
            "spot_checks",
            "review_queue",
            "run_label_counts",
        }:
            raise ValueError(f"unknown table {table!r}")
        row = self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
        return int(row[0])
