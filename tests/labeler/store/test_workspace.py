from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from labeler.core.detections import Detections
from labeler.core.exceptions import StoreError
from labeler.store.workspace import LabelRow, Workspace


def _detections() -> Detections:
    return Detections(
        xyxy=np.array([[1, 2, 30, 40], [5.5, 6.5, 7.5, 8.5]], np.float32),
        class_id=np.array([1, 0]),
        confidence=np.array([0.9, 0.4], np.float32),
        data={"box_score": np.array([0.95, 0.5], np.float32)},
    )


def _verdict_row(key: str, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "cache_key": key,
        "answer": "yes",
        "yes_prob": 0.9,
        "raw": "Yes",
        "error": None,
        "model_id": "openai:m",
        "template_id": "crop-v1",
        "template_hash": "abc",
        "mode": "crop",
        "question": "Is this a dog?",
    }
    row.update(overrides)
    return row


def test_proposals_round_trip_and_survive_reopen(tmp_path: Path) -> None:
    with Workspace(tmp_path / "ws") as workspace:
        workspace.save_proposals("sha-a", "key1", _detections(), ["cat", "dog"])
        workspace.save_proposals("sha-b", "key1", Detections.empty(), ["cat", "dog"])
    with Workspace(tmp_path / "ws") as workspace:
        assert workspace.proposed_images("key1") == {"sha-a", "sha-b"}
        assert workspace.proposed_images("key2") == set()
        loaded = workspace.load_proposals("sha-a", "key1")
        np.testing.assert_allclose(loaded.xyxy, _detections().xyxy)
        assert loaded.class_id.tolist() == [1, 0]
        np.testing.assert_allclose(loaded.confidence, [0.9, 0.4], rtol=1e-6)
        np.testing.assert_allclose(loaded.data["box_score"], [0.95, 0.5], rtol=1e-6)
        assert len(set(loaded.data["proposal_id"].tolist())) == 2
        empty = workspace.load_proposals("sha-b", "key1")
        assert len(empty) == 0 and "proposal_id" in empty.data


def test_a_failed_save_leaves_no_half_written_image(tmp_path: Path) -> None:
    with Workspace(tmp_path) as workspace:
        workspace.save_proposals("sha-a", "k", _detections(), ["cat", "dog"])
        # Saving the same image again violates the unique index: the whole unit rolls back.
        with pytest.raises(sqlite3.IntegrityError):
            workspace.save_proposals("sha-a", "k", _detections(), ["cat", "dog"])
        assert workspace.count_rows("proposals") == 2
        assert workspace.count_rows("proposal_sets") == 1


def test_files_are_rehashed_only_when_changed(tmp_path: Path) -> None:
    with Workspace(tmp_path) as workspace:
        workspace.record_file("/x.jpg", sha256="s1", size_bytes=10, mtime_ns=5)
        assert workspace.known_file("/x.jpg", size_bytes=10, mtime_ns=5).sha256 == "s1"  # type: ignore[union-attr]
        assert workspace.known_file("/x.jpg", size_bytes=11, mtime_ns=5) is None
        assert workspace.known_file("/x.jpg", size_bytes=10, mtime_ns=6) is None
        workspace.record_file_error("/x.jpg", reason="corrupt", detail="bad header")
        record = workspace.known_file("/x.jpg", size_bytes=10, mtime_ns=5)
        assert record is not None and record.error_reason == "corrupt"
        workspace.record_file("/x.jpg", sha256="s2", size_bytes=12, mtime_ns=7)
        record = workspace.known_file("/x.jpg", size_bytes=12, mtime_ns=7)
        assert record is not None and record.sha256 == "s2" and record.error_reason is None


def test_verdicts_cache(tmp_path: Path) -> None:
    with Workspace(tmp_path) as workspace:
        keys = [f"k{i}" for i in range(1200)]  # more than one IN (...) chunk
        workspace.save_verdicts([_verdict_row(k) for k in keys])
        workspace.save_verdicts([_verdict_row("k0", answer="unknown", yes_prob=None, error="500")])
        found = workspace.get_verdicts([*keys, "missing"])
        assert len(found) == 1200 and "missing" not in found
        assert found["k0"].error == "500" and found["k0"].yes_prob is None
        assert found["k1"].yes_prob == pytest.approx(0.9)


def test_runs_and_labels(tmp_path: Path) -> None:
    with Workspace(tmp_path) as workspace:
        workspace.save_proposals("sha-a", "k", _detections(), ["cat", "dog"])
        ids = workspace.load_proposals("sha-a", "k").data["proposal_id"].tolist()
        run_id = workspace.start_run({"x": 1})
        rows = [LabelRow(ids[0], "accepted", "ok", None), LabelRow(ids[1], "rejected", "no", "v")]
        workspace.save_labels(run_id, rows)
        workspace.save_labels(run_id, rows)  # re-routing the same run replaces, never duplicates
        workspace.finish_run(run_id, {"labels": 2})
        assert workspace.count_rows("labels") == 2
        assert workspace.count_rows("runs") == 1


def test_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "workspace.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match=r"workspace\.db: cannot open workspace database"):
        Workspace(tmp_path)
