"""Reviewers' decisions in the workspace: versions, stale clicks, undo, added boxes, claims and
the review queue's order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from labeler.core.detections import Detections
from labeler.core.exceptions import InputError, StaleDecision, StoreError
from labeler.store.decisions import HUMAN_KEY, Action
from labeler.store.workspace import SCHEMA_VERSION, LabelRow, Workspace

NAMES = ("cat", "dog")
KEY = "propose-key"


def _workspace_with_proposals(tmp_path: Path, n: int = 4) -> tuple[Workspace, list[int]]:
    workspace = Workspace(tmp_path / "ws")
    workspace.record_image("img-a", (100, 80))
    xyxy = np.asarray([[10 + i, 10, 40 + i, 50] for i in range(n)], np.float32)
    detections = Detections(xyxy, np.arange(n) % 2, np.linspace(0.9, 0.5, n))
    workspace.save_proposals("img-a", KEY, detections, NAMES)
    ids = workspace.load_proposals("img-a", KEY).data["proposal_id"].tolist()
    return workspace, ids


def test_a_decision_is_versioned_and_kept_with_its_history(tmp_path: Path) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path)
    with workspace:
        first = workspace.decide(ids[0], action="reject", base_version=0, reviewer="ana")
        assert (first.version, first.status, first.reviewer) == (1, "rejected", "ana")
        second = workspace.decide(
            ids[0], action=Action.RELABEL, base_version=1, reviewer="ben", class_id=1
        )
        assert (second.version, second.status, second.class_id) == (2, "accepted", 1)
        assert workspace.human_states()[ids[0]] == second
        assert [s.action for s in workspace.decision_history(ids[0])] == ["reject", "relabel"]
        assert workspace.human_states([ids[1]]) == {}


def test_a_stale_decision_changes_nothing_and_says_what_is_there(tmp_path: Path) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path)
    with workspace, Workspace(tmp_path / "ws") as colleague:  # another connection, as a server
        mine = workspace.decide(ids[0], action="accept", base_version=0, reviewer="ana")
        with pytest.raises(StaleDecision, match="version 1, not 0") as caught:
            colleague.decide(ids[0], action="reject", base_version=0, reviewer="ben")
        assert caught.value.current == mine
        assert workspace.decision_history(ids[0]) == [mine]
        # Made on the version they now see, the colleague's decision goes through.
        theirs = colleague.decide(ids[0], action="reject", base_version=1, reviewer="ben")
        assert workspace.human_states()[ids[0]] == theirs


def test_undo_goes_back_one_decision_at_a_time(tmp_path: Path) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path)
    with workspace:
        workspace.decide(ids[0], action="accept", base_version=0, reviewer="ana")
        workspace.decide(ids[0], action="edit", base_version=1, reviewer="ana", xyxy=[1, 2, 30, 40])
        workspace.decide(ids[0], action="relabel", base_version=2, reviewer="ana", class_id=1)
        undone = workspace.decide(ids[0], action="undo", base_version=3, reviewer="ana")
        assert (undone.status, undone.class_id, undone.xyxy) == ("accepted", None, (1, 2, 30, 40))
        twice = workspace.decide(ids[0], action="undo", base_version=4, reviewer="ana")
        assert (twice.status, twice.class_id, twice.xyxy) == ("accepted", None, None)
        automatic = workspace.decide(ids[0], action="undo", base_version=5, reviewer="ana")
        assert automatic.status is None  # the automatic route decides again
        with pytest.raises(InputError, match="no decision to undo"):
            workspace.decide(ids[0], action="undo", base_version=6, reviewer="ana")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "relabel"}, "needs class_id"),
        ({"action": "edit"}, "needs xyxy"),
        ({"action": "edit", "xyxy": [10, 10, 5, 20]}, "x2 > x1"),
        ({"action": "edit", "xyxy": [0, 0, float("nan"), 5]}, "finite"),
        ({"action": "edit", "xyxy": [0, 0, 5]}, "4 finite numbers"),
        ({"action": "add"}, "add_box"),
        ({"action": "shrug"}, "shrug"),
    ],
)
def test_bad_decisions_are_refused(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path)
    with workspace, pytest.raises((InputError, ValueError), match=message):
        workspace.decide(ids[0], base_version=0, reviewer="ana", **kwargs)  # type: ignore[arg-type]
    with Workspace(tmp_path / "ws") as reopened:
        assert reopened.count_rows("decisions") == 0


def test_an_unknown_proposal_or_image_is_named(tmp_path: Path) -> None:
    workspace, _ = _workspace_with_proposals(tmp_path)
    with workspace:
        with pytest.raises(InputError, match="no proposal 999"):
            workspace.decide(999, action="accept", base_version=0, reviewer="ana")
        with pytest.raises(InputError, match="no image img-z"):
            workspace.add_box(
                "img-z", class_id=0, class_name="cat", xyxy=[0, 0, 5, 5], reviewer="a"
            )


def test_an_added_box_is_a_proposal_of_its_own(tmp_path: Path) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path)
    with workspace:
        added = workspace.add_box(
            "img-a", class_id=1, class_name="dog", xyxy=[5, 5, 25, 30], reviewer="ana"
        )
        assert (added.version, added.action, added.status) == (1, "add", "accepted")
        assert added.proposal_id not in ids
        human = workspace.load_proposals("img-a", HUMAN_KEY)
        assert human.data["proposal_id"].tolist() == [added.proposal_id]
        assert human.xyxy.tolist() == [[5, 5, 25, 30]]
        assert len(workspace.load_proposals("img-a", KEY)) == len(ids)  # the detector's untouched
        second = workspace.add_box(
            "img-a", class_id=0, class_name="cat", xyxy=[50, 5, 70, 30], reviewer="ben"
        )
        assert len(workspace.load_proposals("img-a", HUMAN_KEY)) == 2
        gone = workspace.decide(second.proposal_id, action="undo", base_version=1, reviewer="ben")
        assert gone.status is None


def test_a_claim_keeps_a_box_from_a_second_reviewer_until_it_expires(tmp_path: Path) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path)
    with workspace:
        assert workspace.claim(ids[0], reviewer="ana", ttl_s=60)
        assert not workspace.claim(ids[0], reviewer="ben", ttl_s=60)
        assert workspace.claim(ids[0], reviewer="ana", ttl_s=60)  # one's own claim extends
        assert workspace.claim(ids[1], reviewer="ben", ttl_s=-1)  # already expired
        assert workspace.claim(ids[1], reviewer="ana", ttl_s=60)
        workspace.decide(ids[0], action="accept", base_version=0, reviewer="ana")
        assert workspace.claim(ids[0], reviewer="ben", ttl_s=60)  # a decision ends the claim
        workspace.release_claims("ben")
        assert workspace.claim(ids[0], reviewer="cyd", ttl_s=60)


def _route_all_to_review(
    workspace: Workspace, ids: list[int], yes_probs: list[float | None]
) -> int:
    run_id = workspace.start_run({})
    rows = []
    verdicts = []
    for pid, p in zip(ids, yes_probs, strict=True):
        key = f"verdict-{pid}"
        verdicts.append(
            {
                "cache_key": key, "answer": "unknown" if p is None else "yes", "yes_prob": p,
                "raw": "?", "error": None, "model_id": "m", "template_id": "t",
                "template_hash": "h", "mode": "crop", "question": "q",
            }
        )  # fmt: skip
        rows.append(LabelRow(pid, "needs_review", f"verifier uncertain (p_yes={p})", key))
    workspace.save_verdicts(verdicts)
    workspace.save_labels(run_id, rows)
    return run_id


def test_the_queue_puts_the_most_uncertain_first_and_skips_what_is_taken(tmp_path: Path) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path, n=4)
    with workspace:
        run_id = _route_all_to_review(workspace, ids, [0.35, 0.52, None, 0.62])
        assert workspace.latest_run_id() == run_id
        queue = workspace.review_candidates(run_id=run_id, middle=0.5)
        # No answer first, then P(yes) nearest the band's middle.
        assert [c.proposal_id for c in queue] == [ids[2], ids[1], ids[3], ids[0]]
        assert queue[1].yes_prob == pytest.approx(0.52) and queue[0].yes_prob is None
        dogs = workspace.review_candidates(run_id=run_id, middle=0.5, class_names=["dog"])
        assert [c.class_name for c in dogs] == ["dog", "dog"]
        workspace.claim(ids[2], reviewer="ana", ttl_s=60)
        workspace.decide(ids[1], action="accept", base_version=0, reviewer="ana")
        for_ben = workspace.review_candidates(run_id=run_id, middle=0.5, exclude_claimed_for="ben")
        assert [c.proposal_id for c in for_ben] == [ids[3], ids[0]]
        for_ana = workspace.review_candidates(run_id=run_id, middle=0.5, exclude_claimed_for="ana")
        assert [c.proposal_id for c in for_ana] == [ids[2], ids[3], ids[0]]


def test_a_version_1_workspace_gains_the_decision_tables(tmp_path: Path) -> None:
    workspace, ids = _workspace_with_proposals(tmp_path)
    with workspace:
        workspace._db.execute("DROP TABLE claims")
        workspace._db.execute("DROP TABLE decisions")
        workspace._db.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    with Workspace(tmp_path / "ws") as reopened:
        assert reopened.load_proposals("img-a", KEY).data["proposal_id"].tolist() == ids
        assert reopened.decide(ids[0], action="accept", base_version=0, reviewer="a").version == 1
    newer = SCHEMA_VERSION + 1
    with Workspace(tmp_path / "ws") as again:
        again._db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(newer),))
    with pytest.raises(StoreError, match=f"schema v{newer} is not supported"):
        Workspace(tmp_path / "ws")
