"""Spot checks stored in a workspace built by the real pipeline: seeded draws that grow, a blind
view, versioned answers that also shape the export, and the numbers the report gives."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from labeler.core.exceptions import InputError, StaleDecision
from labeler.pipeline import LabelConfig, run_label
from labeler.review import (
    LabelForStats,
    answer_spot_check,
    draw_spot_checks,
    pending_spot_checks,
    sample_for_spot_check,
    spot_check_report,
)
from labeler.route import RouteThresholds
from labeler.store.spot_checks import SpotCheckAnswer
from labeler.store.workspace import Workspace
from tests.fakes.vlm_server import FakeVLMServer
from tests.labeler.test_pipeline import Exploding, ScriptedDetector, make_config

# make_config's ontology, in class-id order: circles are verified (the fake VLM says yes),
# squares are verified (it says no), triangles are not verified (accepted on the detector alone).
CIRCLE, SQUARE, TRIANGLE = 0, 1, 2


def _labeled(images_dir: Path, out: Path, server: FakeVLMServer) -> LabelConfig:
    """A workspace after one run over the six sample images: per class 6 labels, circles and
    triangles auto-accepted, squares auto-rejected."""
    config: LabelConfig = make_config(images_dir, out, server)
    report = run_label(config, detector=ScriptedDetector())
    assert report["per_class"] == {
        "circle": {"accepted": 6, "rejected": 0, "needs_review": 0},
        "square": {"accepted": 0, "rejected": 6, "needs_review": 0},
        "triangle": {"accepted": 6, "rejected": 0, "needs_review": 0},
    }
    return config


@pytest.fixture
def config(images_dir: Path, tmp_path: Path, server: FakeVLMServer) -> LabelConfig:
    return _labeled(images_dir, tmp_path / "out", server)


def _drawn(workspace: Workspace) -> dict[tuple[str, str], set[int]]:
    """(stratum, class name) → the proposal ids with a check."""
    labels = {label.proposal_id: label for label in workspace.automatic_labels(1)}
    drawn: dict[tuple[str, str], set[int]] = {}
    for pid, check in workspace.spot_checks().items():
        drawn.setdefault((check.stratum, labels[pid].class_name), set()).add(pid)
    return drawn


def _by_class(workspace: Workspace) -> dict[str, list[int]]:
    """Class name → the drawn proposal ids, sorted."""
    found: dict[str, list[int]] = {}
    for (_, class_name), ids in _drawn(workspace).items():
        found[class_name] = sorted(ids)
    return found


def _yolo_classes(out: Path) -> Counter[int]:
    return Counter(
        int(row.split()[0])
        for path in (out / "labels").rglob("*.txt")
        for row in path.read_text().splitlines()
    )


def test_draws_are_seeded_stratified_and_grow_keeping_earlier_picks(
    config: LabelConfig, images_dir: Path, tmp_path: Path, server: FakeVLMServer
) -> None:
    with Workspace(config.workspace) as workspace:
        pending = draw_spot_checks(workspace, per_class=2, seed=7)
        drawn = _drawn(workspace)
        assert {key: len(ids) for key, ids in drawn.items()} == {
            ("accepted", "circle"): 2,
            ("accepted", "triangle"): 2,
            ("rejected", "square"): 2,
        }
        assert {check.proposal_id for check in pending} == set().union(*drawn.values())
        # The stats module's seeded order, per stratum and class.
        for stratum in ("accepted", "rejected"):
            labels = [
                LabelForStats(label.proposal_id, label.class_name, label.yes_prob, stratum)
                for label in workspace.automatic_labels(1)
                if label.status == stratum
            ]
            expected = set(sample_for_spot_check(labels, per_class=2, seed=7))
            assert expected == {pid for (s, _), ids in drawn.items() if s == stratum for pid in ids}
        # Asking again for as many draws nothing new.
        assert draw_spot_checks(workspace, per_class=2, seed=7) == pending
        assert workspace.count_rows("spot_checks") == 6

        grown = draw_spot_checks(workspace, per_class=4, seed=7)
        assert len(grown) == 12
        first = _by_class(workspace)
        assert all(drawn[key] <= set(first[key[1]]) for key in drawn)

    # Another workspace of the same images, the same seed, one draw of 4: the same boxes.
    other = _labeled(images_dir, tmp_path / "other", server)
    with Workspace(other.workspace) as workspace:
        draw_spot_checks(workspace, per_class=4, seed=7)
        assert _by_class(workspace) == first


def test_a_reviewer_sees_checks_blind_and_not_others_claims(config: LabelConfig) -> None:
    with Workspace(config.workspace) as workspace:
        draw_spot_checks(workspace, per_class=2, seed=7)
        seen = pending_spot_checks(workspace, reviewer="ana", limit=50)
        assert len(seen) == 6
        for check in seen:
            shown = check.as_dict()
            assert set(shown) == {"proposal_id", "image_sha256", "class_name", "xyxy", "version"}
            assert shown["version"] == 0 and len(shown["xyxy"]) == 4
            assert json.loads(json.dumps(shown)) == shown
        # The order mixes the strata: accepted and rejected checks are not listed in blocks.
        strata = [workspace.spot_checks()[check.proposal_id].stratum for check in seen]
        assert strata != sorted(strata) and strata != sorted(strata, reverse=True)

        assert workspace.claim(seen[0].proposal_id, reviewer="ben", ttl_s=60)
        for_ana = pending_spot_checks(workspace, reviewer="ana", limit=50)
        assert [c.proposal_id for c in for_ana] == [c.proposal_id for c in seen[1:]]
        assert pending_spot_checks(workspace, reviewer="ben", limit=2) == seen[:2]


def test_answers_are_versioned_and_a_stale_one_changes_nothing(config: LabelConfig) -> None:
    with Workspace(config.workspace) as workspace, Workspace(config.workspace) as colleague:
        draw_spot_checks(workspace, per_class=1, seed=3)
        circle = next(
            c for c in pending_spot_checks(workspace, reviewer="ana") if c.class_name == "circle"
        )
        pid = circle.proposal_id

        mine = answer_spot_check(
            workspace, pid, correct=False, base_version=circle.version, reviewer="ana"
        )
        assert (mine.version, mine.answer, mine.reviewer) == (1, "incorrect", "ana")
        # "Incorrect" on an auto-accepted box: a reject decision, recorded with the answer.
        decisions = workspace.decision_history(pid)
        assert [(d.action, d.status, d.reviewer) for d in decisions] == [
            ("reject", "rejected", "ana")
        ]
        assert pid not in {c.proposal_id for c in pending_spot_checks(workspace, reviewer="x")}

        with pytest.raises(StaleDecision, match="version 1, not 0") as caught:
            answer_spot_check(colleague, pid, correct=True, base_version=0, reviewer="ben")
        assert caught.value.current == mine
        assert isinstance(caught.value.current, SpotCheckAnswer)
        assert workspace.decision_history(pid) == decisions
        assert workspace.spot_checks()[pid].answer == "incorrect"

        # Changed on the version now seen: the answer's decision is undone.
        again = answer_spot_check(colleague, pid, correct=True, base_version=1, reviewer="ben")
        assert (again.version, again.answer, again.reviewer) == (2, "correct", "ben")
        assert [d.action for d in workspace.decision_history(pid)] == ["reject", "undo"]
        assert workspace.human_states()[pid].status is None  # the automatic route decides again


def test_a_box_decided_outside_its_check_refuses_the_whole_answer(config: LabelConfig) -> None:
    with Workspace(config.workspace) as workspace, Workspace(config.workspace) as colleague:
        draw_spot_checks(workspace, per_class=1, seed=3)
        checks = {c.class_name: c for c in pending_spot_checks(workspace, reviewer="ana")}
        circle, square = checks["circle"], checks["square"]
        theirs = colleague.decide(
            circle.proposal_id, action="accept", base_version=0, reviewer="ben"
        )

        with pytest.raises(StaleDecision, match="outside this spot check; the check is withdrawn"):
            answer_spot_check(
                workspace, circle.proposal_id, correct=False, base_version=0, reviewer="ana"
            )
        assert workspace.decision_history(circle.proposal_id) == [theirs]
        unanswered = workspace.spot_checks()[circle.proposal_id]
        assert (unanswered.answer, unanswered.version) == (None, 0)
        # Withdrawn: no longer pending, and a replacement circle is drawn.
        report = spot_check_report(workspace)
        assert report["checks"]["withdrawn"] == 1
        assert report["left_out"] == {"accepted": 1, "rejected": 0}
        replaced = draw_spot_checks(workspace, per_class=1, seed=3)
        circles = [c.proposal_id for c in replaced if c.class_name == "circle"]
        assert len(circles) == 1 and circles[0] != circle.proposal_id

        # An answered check keeps its answer once the box is decided elsewhere.
        answer_spot_check(
            workspace, square.proposal_id, correct=True, base_version=0, reviewer="ana"
        )
        accepted = workspace.human_states()[square.proposal_id]
        assert (accepted.action, accepted.version) == ("accept", 1)
        colleague.decide(square.proposal_id, action="reject", base_version=1, reviewer="ben")
        with pytest.raises(StaleDecision, match="its answer stands as given") as caught:
            answer_spot_check(
                workspace, square.proposal_id, correct=False, base_version=1, reviewer="ana"
            )
        assert caught.value.current == workspace.human_states()[square.proposal_id]
        assert workspace.spot_checks()[square.proposal_id].answer == "correct"


def test_an_answer_and_its_decision_commit_together(config: LabelConfig) -> None:
    with Workspace(config.workspace) as workspace:
        draw_spot_checks(workspace, per_class=1, seed=3)
        circle = next(
            c for c in pending_spot_checks(workspace, reviewer="ana") if c.class_name == "circle"
        )
        # The answer's own write fails after its decision was made: neither stays.
        with sqlite3.connect(workspace.db_path) as db:
            db.execute(
                "CREATE TRIGGER refuse_answers BEFORE UPDATE ON spot_checks "
                "BEGIN SELECT RAISE(ABORT, 'answers refused'); END"
            )
        with pytest.raises(sqlite3.DatabaseError, match="answers refused"):
            answer_spot_check(
                workspace, circle.proposal_id, correct=False, base_version=0, reviewer="ana"
            )
        assert workspace.decision_history(circle.proposal_id) == []
        with sqlite3.connect(workspace.db_path) as db:
            db.execute("DROP TRIGGER refuse_answers")
        answer_spot_check(
            workspace, circle.proposal_id, correct=False, base_version=0, reviewer="ana"
        )
        assert len(workspace.decision_history(circle.proposal_id)) == 1


def test_the_report_on_a_hand_checked_example_and_the_export(config: LabelConfig) -> None:
    with Workspace(config.workspace) as workspace:
        draw_spot_checks(workspace, per_class=2, seed=7)
        answers = {"circle": [True, False], "triangle": [True, True], "square": [True, False]}
        by_class: dict[str, list[int]] = {}
        for check in pending_spot_checks(workspace, reviewer="ana"):
            by_class.setdefault(check.class_name, []).append(check.proposal_id)
        for class_name, pids in by_class.items():
            for pid, correct in zip(sorted(pids), answers[class_name], strict=True):
                answer_spot_check(workspace, pid, correct=correct, base_version=0, reviewer="ana")
        report = spot_check_report(workspace, thresholds=(0.0, 0.5, 0.95))

    assert json.loads(json.dumps(report)) == report
    assert report["run_id"] == 1
    assert report["checks"] == {
        "drawn": 6, "answered": 6, "pending": 0, "withdrawn": 0, "outdated": 0
    }  # fmt: skip
    assert report["left_out"] == {"accepted": 0, "rejected": 0}
    classes = report["classes"]
    # Wilson 95% intervals by hand: 1 of 2 → (0.0945, 0.9055), 2 of 2 → (0.3424, 1.0),
    # 3 of 4 → (0.3006, 0.9544).
    circle = classes["circle"]
    assert (circle["accepted_count"], circle["accepted_checked"], circle["accepted_correct"]) == (
        6, 2, 1,
    )  # fmt: skip
    assert circle["precision"] == 0.5
    assert circle["precision_interval"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    assert circle["checks_to_target"] == 4  # the 4 circles still unchecked: then it is exact
    triangle = classes["triangle"]
    assert (triangle["precision"], triangle["accepted_count"]) == (1.0, 6)
    assert triangle["precision_interval"] == pytest.approx([0.3424, 1.0], abs=1e-4)
    square = classes["square"]
    assert (square["rejected_count"], square["rejected_checked"], square["accepted_count"]) == (
        6, 2, 0,
    )  # fmt: skip
    assert square["rejected_share_correct"] == 0.5
    assert square["rejected_interval"] == pytest.approx([0.0945, 0.9055], abs=1e-4)
    # Overall: circles and triangles weigh 6 each, so (6·0.5 + 6·1.0) / 12 = 0.75 on
    # 1 / (0.5²/2 + 0.5²/2) = 4 effective checks.
    overall = report["precision"]
    assert (overall["population"], overall["checked"], overall["correct"]) == (12, 4, 3)
    assert overall["share_correct"] == 0.75 and overall["effective_checks"] == 4.0
    assert overall["interval"] == pytest.approx([0.3006, 0.9544], abs=1e-4)
    assert overall["unchecked_strata"] == []
    rejected = report["rejected_share_correct"]
    assert (rejected["population"], rejected["share_correct"]) == (6, 0.5)
    # The curve covers the verified classes (circles at P(yes) 0.9, squares at 0.1).
    curve = report["threshold_curve"]
    assert set(curve) == {"circle", "square"}
    points = [(p["accepted_count"], p["checked_count"], p["precision"]) for p in curve["circle"]]
    assert [p["threshold"] for p in curve["circle"]] == [0.0, 0.5, 0.95]
    assert points == [(6, 2, 0.5), (6, 2, 0.5), (0, 0, None)]
    assert [(p["accepted_count"], p["precision"]) for p in curve["square"]] == [
        (6, 0.5), (0, None), (0, None),
    ]  # fmt: skip

    # Re-routing: the incorrect circle leaves the export, the correct square joins it; the
    # estimates, made on the automatic labels, do not move.
    rerouted = run_label(config, detector=Exploding())
    assert rerouted["labels_by_decider"]["human"] == {
        "accepted": 1, "rejected": 1, "needs_review": 0
    }  # fmt: skip
    assert _yolo_classes(config.out_dir) == {CIRCLE: 5, SQUARE: 1, TRIANGLE: 6}
    with Workspace(config.workspace) as workspace:
        after = spot_check_report(workspace, thresholds=(0.0, 0.5, 0.95))
    assert after["run_id"] == 2
    assert {**after, "run_id": 1} == report


def test_a_box_decided_in_the_queue_is_not_drawn_nor_counted(config: LabelConfig) -> None:
    with Workspace(config.workspace) as workspace:
        labels = workspace.automatic_labels(1)
        decided_circle = next(lb.proposal_id for lb in labels if lb.class_name == "circle")
        decided_square = next(lb.proposal_id for lb in labels if lb.class_name == "square")
        workspace.decide(decided_circle, action="accept", base_version=0, reviewer="ben")
        workspace.decide(decided_square, action="reject", base_version=0, reviewer="ben")
        # Every eligible box of every class.
        draw_spot_checks(workspace, per_class=6, seed=7)
        drawn = _by_class(workspace)
        assert {name: len(ids) for name, ids in drawn.items()} == {
            "circle": 5, "square": 5, "triangle": 6
        }  # fmt: skip
        assert decided_circle not in drawn["circle"] and decided_square not in drawn["square"]
        with pytest.raises(InputError, match="has no spot check"):
            answer_spot_check(
                workspace, decided_circle, correct=True, base_version=0, reviewer="ana"
            )
        report = spot_check_report(workspace)
        assert report["left_out"] == {"accepted": 1, "rejected": 1}
        assert report["classes"]["circle"]["accepted_count"] == 5
        assert report["rejected_share_correct"]["population"] == 5


def test_a_rerun_that_routes_a_box_otherwise_outdates_its_check(config: LabelConfig) -> None:
    with Workspace(config.workspace) as workspace:
        draw_spot_checks(workspace, per_class=1, seed=3, strata=("accepted",))
        circle = next(
            c for c in pending_spot_checks(workspace, reviewer="ana") if c.class_name == "circle"
        )
    # Nothing is accepted on the verifier's word now: circles (P(yes) 0.9) go to review.
    run_label(
        replace(config, thresholds=RouteThresholds(accept=1.0, reject=0.3)), detector=Exploding()
    )
    with Workspace(config.workspace) as workspace:
        with pytest.raises(InputError, match="outdated"):
            answer_spot_check(
                workspace, circle.proposal_id, correct=True, base_version=0, reviewer="ana"
            )
        assert [c.class_name for c in pending_spot_checks(workspace, reviewer="ana")] == [
            "triangle"
        ]
        report = spot_check_report(workspace)
        assert report["checks"] == {
            "drawn": 2, "answered": 0, "pending": 1, "withdrawn": 0, "outdated": 1
        }  # fmt: skip
        assert "circle" not in report["classes"]


def test_wrong_requests_name_what_is_wrong(tmp_path: Path, config: LabelConfig) -> None:
    with Workspace(tmp_path / "empty") as empty:
        with pytest.raises(InputError, match="run a label job first"):
            draw_spot_checks(empty, per_class=2, seed=1)
        report = spot_check_report(empty)
        assert report["run_id"] is None and report["classes"] == {}
        assert report["precision"]["share_correct"] is None
    with Workspace(config.workspace) as workspace:
        with pytest.raises(InputError, match="per_class"):
            draw_spot_checks(workspace, per_class=0, seed=1)
        with pytest.raises(InputError, match="seed"):
            draw_spot_checks(workspace, per_class=1, seed=-1)
        with pytest.raises(InputError, match="strata"):
            draw_spot_checks(workspace, per_class=1, seed=1, strata=("needs_review",))
        with pytest.raises(InputError, match="reviewer"):
            pending_spot_checks(workspace, reviewer="")
        pid = draw_spot_checks(workspace, per_class=1, seed=1)[0].proposal_id
        with pytest.raises(InputError, match="reviewer"):
            answer_spot_check(workspace, pid, correct=True, base_version=0, reviewer="")
        assert workspace.spot_checks()[pid].version == 0
