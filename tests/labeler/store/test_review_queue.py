"""The review queue table (schema v3): the queue read from its indexes hands out exactly what the
queue's definition says, in its order, under every filter; triggers keep it current through
decisions, undos and verdicts asked again; a new run refills it; a v2 workspace gains it on
opening, its decisions kept."""

from __future__ import annotations

import math
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from labeler.core.detections import Detections
from labeler.route import RouteThresholds
from labeler.store import decisions as decisions_module
from labeler.store.decisions import REVIEW_QUEUE_SCHEMA, ReviewCandidate
from labeler.store.workspace import SCHEMA_VERSION, LabelRow, Workspace
from tests.labeler.store.review_workspace import KEY, NAMES, generated_workspace, route_run

NOW = time.time()


def expected_queue(
    workspace: Workspace,
    *,
    run_id: int,
    middle: float,
    class_names: tuple[str, ...] = (),
    reason_prefixes: tuple[str, ...] = (),
    exclude_claimed_for: str | None = None,
    limit: int,
) -> list[int]:
    """The queue's definition, in Python over the raw rows: the run's needs_review boxes whose
    latest decision (if any) left no status, without another reviewer's live claim; no P(yes)
    first, then |P(yes) - middle|, then score, then id."""
    db = workspace._db
    latest: dict[int, Any] = {}
    for pid, version, status in db.execute("SELECT proposal_id, version, status FROM decisions"):
        if pid not in latest or version > latest[pid][0]:
            latest[pid] = (version, status)
    claims = {
        pid: (reviewer, expires)
        for pid, reviewer, expires in db.execute("SELECT * FROM claims").fetchall()
    }
    rows = db.execute(
        "SELECT l.proposal_id, l.status, l.reason, l.verdict_key, p.class_name, p.score "
        "FROM labels l JOIN proposals p ON p.id = l.proposal_id WHERE l.run_id = ?",
        (run_id,),
    ).fetchall()
    verdicts = dict(db.execute("SELECT cache_key, yes_prob FROM verdicts").fetchall())
    keys = []
    for pid, status, reason, verdict_key, class_name, score in rows:
        if status != "needs_review" or latest.get(pid, (0, None))[1] is not None:
            continue
        if class_names and class_name not in class_names:
            continue
        if reason_prefixes and not any(reason.startswith(p) for p in reason_prefixes):
            continue
        claim = claims.get(pid)
        if (
            exclude_claimed_for is not None
            and claim is not None
            and claim[0] != exclude_claimed_for
            and claim[1] > NOW
        ):
            continue
        yes_prob = verdicts.get(verdict_key)
        key = (0, 0.0) if yes_prob is None else (1, abs(yes_prob - middle))
        keys.append((*key, score, pid))
    return [key[-1] for key in sorted(keys)[:limit]]


def by_definition(workspace: Workspace, **query: Any) -> list[tuple[Any, ...]]:
    """The rows of the queue's one-query definition (over the labels), for comparison."""
    filters = decisions_module._QueueFilters(
        class_names=tuple(query.get("class_names", ())),
        reason_prefixes=tuple(query.get("reason_prefixes", ())),
        exclude_claimed_for=query.get("exclude_claimed_for"),
        now=NOW,
    )
    return decisions_module._candidates_by_sql(
        workspace._db, query["run_id"], filters, middle=query["middle"], limit=query["limit"]
    )


def as_row(candidate: ReviewCandidate) -> tuple[Any, ...]:
    c = candidate
    return (
        c.proposal_id, c.image_sha256, c.class_id, c.class_name, *c.xyxy, c.score, c.yes_prob,
        c.reason, c.version,
    )  # fmt: skip


QUERIES = [
    {},
    {"class_names": ("dog",)},
    {"class_names": ("cat", "bird")},
    {"reason_prefixes": ("verifier uncertain",)},
    {"reason_prefixes": ("verifier error", "verifier answer")},
    {"reason_prefixes": ("detector score",)},
    {"exclude_claimed_for": "ana"},
    {"exclude_claimed_for": "ben", "class_names": ("cat",)},
    {"exclude_claimed_for": "cyd", "reason_prefixes": ("verifier",)},
]


@pytest.mark.parametrize("query", QUERIES)
@pytest.mark.parametrize("middle", [0.5, 0.45, 0.3, 0.0, 1.0])
def test_the_queue_matches_its_definition(
    tmp_path: Path, query: dict[str, Any], middle: float
) -> None:
    generated = generated_workspace(tmp_path / "ws")
    with Workspace(generated.directory) as workspace:
        run_id = generated.latest_run
        everything = expected_queue(workspace, run_id=run_id, middle=middle, limit=10_000, **query)
        assert len(everything) > 0 or query.get("class_names")
        for limit in [0, 1, 2, 3, 5, 8, 13, 40, len(everything), len(everything) + 5]:
            asked = {"run_id": run_id, "middle": middle, "limit": limit, **query}
            found = workspace.review_candidates(now=NOW, **asked)
            assert [c.proposal_id for c in found] == everything[:limit], (limit, asked)
            # Every field as the definition's query gives it, not only the order.
            assert [as_row(c) for c in found] == by_definition(workspace, **asked)


def test_the_queue_of_an_earlier_run_is_computed_from_its_labels(tmp_path: Path) -> None:
    generated = generated_workspace(tmp_path / "ws")
    with Workspace(generated.directory) as workspace:
        earlier = generated.latest_run - 1
        assert workspace.count_rows("review_queue") > 0
        found = workspace.review_candidates(run_id=earlier, middle=0.5, limit=50, now=NOW)
        assert [c.proposal_id for c in found] == expected_queue(
            workspace, run_id=earlier, middle=0.5, limit=50
        )


def test_many_boxes_at_one_distance_come_by_score_then_id(tmp_path: Path) -> None:
    """P(yes) 0.4 and 0.6 lie at one distance from 0.5: the two sides interleave by score."""
    with Workspace(tmp_path / "ws") as workspace:
        workspace.record_image("img", (100, 80))
        n = 12
        xyxy = np.asarray([[i, 0, i + 20, 20] for i in range(n)], np.float32)
        scores = np.asarray([0.9, 0.8, 0.7, 0.6, 0.5, 0.4] * 2)
        workspace.save_proposals("img", KEY, Detections(xyxy, np.zeros(n, int), scores), NAMES)
        ids = workspace.load_proposals("img", KEY).data["proposal_id"].tolist()
        workspace.save_verdicts(
            [_verdict(f"verdict-{pid}", (0.4, 0.6)[i % 2]) for i, pid in enumerate(ids)]
        )
        run_id = route_run(workspace, ids, RouteThresholds())
        found = workspace.review_candidates(run_id=run_id, middle=0.5, limit=n)
        order = sorted(range(n), key=lambda i: (float(np.float32(scores[i])), ids[i]))
        assert [c.proposal_id for c in found] == [ids[i] for i in order]
        for limit in range(1, n + 1):
            found = workspace.review_candidates(run_id=run_id, middle=0.5, limit=limit)
            assert [c.proposal_id for c in found] == [ids[i] for i in order[:limit]]


def test_p_yes_a_rounding_apart_is_ordered_as_the_definition(tmp_path: Path) -> None:
    """Two different P(yes) whose distances from the middle round to the same number: score
    decides between them, which no index scan knows; the queue still gives the definition's
    order (it computes that part in full)."""
    middle = 0.5
    low = 0.1
    while abs(low - middle) != abs(math.nextafter(low, 1.0) - middle):
        low = math.nextafter(low, 1.0)
    higher = math.nextafter(low, 1.0)
    with Workspace(tmp_path / "ws") as workspace:
        workspace.record_image("img", (100, 80))
        # Downwards from the middle the index meets `higher` first; the lower score is `low`'s.
        probs = [higher, low, higher, low, 0.35]
        scores = np.asarray([0.9, 0.5, 0.8, 0.6, 0.7])
        n = len(probs)
        xyxy = np.asarray([[i, 0, i + 20, 20] for i in range(n)], np.float32)
        workspace.save_proposals("img", KEY, Detections(xyxy, np.zeros(n, int), scores), NAMES)
        ids = workspace.load_proposals("img", KEY).data["proposal_id"].tolist()
        workspace.save_verdicts(
            [_verdict(f"verdict-{pid}", p) for pid, p in zip(ids, probs, strict=True)]
        )
        run_id = route_run(workspace, ids, RouteThresholds(accept=0.99, reject=0.01))
        for limit in range(1, n + 1):
            found = workspace.review_candidates(run_id=run_id, middle=middle, limit=limit)
            assert [c.proposal_id for c in found] == expected_queue(
                workspace, run_id=run_id, middle=middle, limit=limit
            )
        assert [c.proposal_id for c in workspace.review_candidates(
            run_id=run_id, middle=middle, limit=3
        )] == [ids[4], ids[1], ids[3]]  # fmt: skip


def _verdict(key: str, yes_prob: float | None) -> dict[str, object]:
    return {
        "cache_key": key, "answer": "yes", "yes_prob": yes_prob, "raw": "Yes", "error": None,
        "model_id": "m", "template_id": "t", "template_hash": "h", "mode": "crop",
        "question": "Is this a cat?",
    }  # fmt: skip


def _queue_table(workspace: Workspace) -> dict[int, tuple[Any, ...]]:
    rows = workspace._db.execute(
        "SELECT proposal_id, yes_prob, score, class_name, reason, verdict_key FROM review_queue"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def _queue_by_definition(workspace: Workspace, run_id: int) -> dict[int, tuple[Any, ...]]:
    ids = expected_queue(workspace, run_id=run_id, middle=0.5, limit=1_000_000)
    rows = workspace._db.execute(
        "SELECT l.proposal_id, v.yes_prob, p.score, p.class_name, l.reason, l.verdict_key "
        "FROM labels l JOIN proposals p ON p.id = l.proposal_id "
        "LEFT JOIN verdicts v ON v.cache_key = l.verdict_key WHERE l.run_id = ?",
        (run_id,),
    ).fetchall()
    return {row[0]: row[1:] for row in rows if row[0] in set(ids)}


def test_decisions_undos_and_verdicts_keep_the_queue_table_current(tmp_path: Path) -> None:
    generated = generated_workspace(tmp_path / "ws")
    with Workspace(generated.directory) as workspace:
        run_id = generated.latest_run
        assert _queue_table(workspace) == _queue_by_definition(workspace, run_id)
        first = workspace.review_candidates(run_id=run_id, middle=0.5, limit=1)[0]
        workspace.decide(
            first.proposal_id, action="accept", base_version=first.version, reviewer="a"
        )
        assert first.proposal_id not in _queue_table(workspace)
        # Undone back to the automatic route: in the queue again, as it was.
        workspace.decide(
            first.proposal_id, action="undo", base_version=first.version + 1, reviewer="a"
        )
        assert _queue_table(workspace) == _queue_by_definition(workspace, run_id)
        (again,) = workspace.review_candidates(run_id=run_id, middle=0.5, limit=1)
        assert again == ReviewCandidate(**{**first.__dict__, "version": first.version + 2})
        # A verdict asked again (a failed request answered on a later run) moves its box.
        key = _queue_table(workspace)[first.proposal_id][4]
        if key is not None:
            workspace.save_verdicts([_verdict(key, 0.51)])
            assert _queue_table(workspace)[first.proposal_id][0] == 0.51
            assert _queue_table(workspace) == _queue_by_definition(workspace, run_id)
        # Decisions on boxes the route did not send to review leave the table alone.
        before = _queue_table(workspace)
        accepted = workspace._db.execute(
            "SELECT proposal_id FROM labels WHERE run_id=? AND status='accepted' LIMIT 1",
            (run_id,),
        ).fetchone()[0]
        version = max((s.version for s in workspace.decision_history(accepted)), default=0)
        workspace.decide(accepted, action="reject", base_version=version, reviewer="a")
        workspace.decide(accepted, action="undo", base_version=version + 1, reviewer="a")
        assert _queue_table(workspace) == before


def test_a_new_run_refills_the_queue_and_an_older_one_leaves_it(tmp_path: Path) -> None:
    generated = generated_workspace(tmp_path / "ws")
    with Workspace(generated.directory) as workspace:
        latest = generated.latest_run
        newer = route_run(workspace, generated.proposal_ids, RouteThresholds(accept=0.9))
        assert workspace.latest_run_id() == newer
        assert _queue_table(workspace) == _queue_by_definition(workspace, newer)
        # Labels saved again for an older run (not the latest): the queue stays the latest's.
        rows = [
            LabelRow(pid, status, reason, key)
            for pid, status, reason, key in workspace._db.execute(
                "SELECT proposal_id, status, reason, verdict_key FROM labels WHERE run_id=?",
                (latest,),
            ).fetchall()
        ]
        workspace.save_labels(latest, rows)
        assert _queue_table(workspace) == _queue_by_definition(workspace, newer)
        found = workspace.review_candidates(run_id=newer, middle=0.5, limit=20, now=NOW)
        assert [c.proposal_id for c in found] == expected_queue(
            workspace, run_id=newer, middle=0.5, limit=20
        )


def as_version_2(directory: Path) -> None:
    """Make a v3 workspace what schema v2 left: no queue table, triggers or label counts."""
    db = sqlite3.connect(directory / "workspace.db")
    with db:
        for statement in REVIEW_QUEUE_SCHEMA:
            words = statement.split()
            if words[0] == "CREATE" and words[1] in {"TABLE", "TRIGGER", "INDEX"}:
                db.execute(f"DROP {words[1]} IF EXISTS {words[5]}")
        db.execute("DELETE FROM meta WHERE key = 'review_queue_run'")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    db.close()
    assert not names & {"review_queue", "run_label_counts", "review_queue_on_decision"}


def test_a_version_2_workspace_gains_the_queue_table_and_keeps_its_decisions(
    tmp_path: Path,
) -> None:
    generated = generated_workspace(tmp_path / "ws")
    with Workspace(generated.directory) as workspace:
        history = {pid: workspace.decision_history(pid) for pid in generated.proposal_ids}
        states = workspace.human_states()
        queue = workspace.review_candidates(
            run_id=generated.latest_run, middle=0.5, limit=1000, now=NOW
        )
        counts = workspace.label_counts(generated.latest_run, generated.image_sha256s)
        assert states and queue
    as_version_2(generated.directory)
    with Workspace(generated.directory) as migrated:
        version = migrated._db.execute(
            "SELECT value FROM meta WHERE key='schema_version'"
        ).fetchone()[0]
        assert int(version) == SCHEMA_VERSION >= 3
        assert migrated.human_states() == states
        assert {pid: migrated.decision_history(pid) for pid in history} == history
        assert _queue_table(migrated) == _queue_by_definition(migrated, generated.latest_run)
        assert (
            migrated.review_candidates(run_id=generated.latest_run, middle=0.5, limit=1000, now=NOW)
            == queue
        )
        assert migrated.label_counts(generated.latest_run, generated.image_sha256s) == counts
        # The migrated file goes on as a new one does.
        first = queue[0]
        migrated.decide(
            first.proposal_id, action="reject", base_version=first.version, reviewer="c"
        )
        assert first.proposal_id not in _queue_table(migrated)


def test_a_version_2_workspace_without_labels_migrates_to_an_empty_queue(tmp_path: Path) -> None:
    with Workspace(tmp_path / "ws") as workspace:
        workspace.record_image("img", (100, 80))
    as_version_2(tmp_path / "ws")
    with Workspace(tmp_path / "ws") as migrated:
        assert migrated.count_rows("review_queue") == 0 and migrated.latest_run_id() is None


@pytest.mark.parametrize("share", [1.0, 0.75, 0.25, 0.0])
def test_label_counts_match_the_labels_on_any_set_of_images(tmp_path: Path, share: float) -> None:
    generated = generated_workspace(tmp_path / "ws")
    images = generated.image_sha256s[: round(len(generated.image_sha256s) * share)]
    with Workspace(generated.directory) as workspace:
        expected: dict[tuple[int, str, str], int] = {}
        for class_id, class_name, status, sha in workspace._db.execute(
            "SELECT p.class_id, p.class_name, l.status, p.image_sha256 FROM labels l "
            "JOIN proposals p ON p.id = l.proposal_id WHERE l.run_id = ?",
            (generated.latest_run,),
        ):
            if sha in images:
                key = (class_id, class_name, status)
                expected[key] = expected.get(key, 0) + 1
        # An image outside the workspace counts nothing.
        assert workspace.label_counts(generated.latest_run, [*images, "img-zz"]) == expected
        # Without the run's stored counts (a run labeled before schema v3): counted in full.
        workspace._db.execute("DELETE FROM run_label_counts")
        assert workspace.label_counts(generated.latest_run, images) == expected
